"""Kubernetes resource quantities → the KFP PipelineSpec ResourceSpec proto."""

from __future__ import annotations

import re

from kfp.pipeline_spec import pipeline_spec_pb2

from configs.schema import ResourceSpec

_MEM_UNITS = {
    "": 1e-9, "K": 1e-6, "M": 1e-3, "G": 1.0, "T": 1e3,
    "Ki": 1024 / 1e9, "Mi": 1024**2 / 1e9, "Gi": 1024**3 / 1e9, "Ti": 1024**4 / 1e9,
}


def cpu_cores(q: str) -> float:
    """'500m' → 0.5, '4' → 4.0."""
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


def memory_gb(q: str) -> float:
    """Kubernetes memory quantity → decimal gigabytes, the unit of ResourceSpec.memory_limit."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]i?)?", q)
    if not m:
        raise ValueError(f"not a memory quantity: {q!r}")
    return float(m.group(1)) * _MEM_UNITS[m.group(2) or ""]


def to_resource_spec_proto(
    spec: ResourceSpec,
) -> pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec:
    rs = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec()
    if spec.cpu:
        rs.cpu_limit = rs.cpu_request = cpu_cores(spec.cpu)
    if spec.memory:
        rs.memory_limit = rs.memory_request = round(memory_gb(spec.memory), 6)
    if spec.gpu:
        rs.accelerator.type = spec.gpu_type
        rs.accelerator.count = spec.gpu
    return rs
