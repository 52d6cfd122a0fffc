"""CUDA kernels of seekline's custom ops (built by model/ops/build.py when nvcc is found)."""
