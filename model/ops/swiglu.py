"""swiglu: the SwiGLU gate silu(g) ⊙ u of the dense MLP, shared and routed experts.

The custom op (model/ops/cc/swiglu.cc) computes the gate in one pass forward and both input
gradients in one pass backward (fp32 arithmetic, one rounding per output) where the pure path runs
Swish + Mul forward and five elementwise ops backward. On a GPU its CUDA kernel
(model/ops/cuda/elementwise.cu.cc) runs only where model/ops' GPU policy picks it; otherwise, and
inside XLA, the reference below runs (XLA fuses it there anyway).
"""
from __future__ import annotations

import tensorflow as tf

from model import ops


def swiglu(g, u):
    """g, u (...) of one shape and dtype -> silu(g) * u (...); differentiable in both."""
    if ops.active("swiglu"):
        return ops.library().seekline_swiglu(g, u)
    return swiglu_reference(g, u)


def swiglu_reference(g, u):
    return tf.nn.silu(g) * u
