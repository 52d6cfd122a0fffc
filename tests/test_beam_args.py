"""Beam at scale: pipeline.beam (runner + extra_args) becomes the run's beam_pipeline_args and
reaches the Beam components (ingest, pack, TFDV statistics) unchanged — in the local TFX
pipeline's IR, in the compiled Kubeflow PipelineSpec, and in the Beam pipeline the component's
executor builds. Expected values are written out by hand here, not taken from pipeline_args()."""

import pytest
from apache_beam.options.pipeline_options import (
    GoogleCloudOptions,
    PipelineOptions,
    StandardOptions,
)
from tfx.dsl.compiler import compiler
from tfx.dsl.components.base.base_beam_executor import BaseBeamExecutor
from tfx.proto.orchestration import executable_spec_pb2, pipeline_pb2

from common.errors import ConfigError
from components.ingest.component import Ingest
from components.pack.component import PackSequences
from configs.schema import load_config
from pipelines.kubeflow import build_pipeline_spec, executor_label
from pipelines.pipeline import create_pipeline

BEAM_COMPONENTS = ("ingest", "pack", "statistics")

FLINK = [
    "pipeline.beam.runner=FlinkRunner",
    "pipeline.beam.extra_args=[--flink_master=flink-jobmanager:8081, --environment_type=EXTERNAL,"
    " --environment_config=localhost:50000, --parallelism=16]",
]
FLINK_ARGS = [
    "--runner=FlinkRunner",
    "--flink_master=flink-jobmanager:8081",
    "--environment_type=EXTERNAL",
    "--environment_config=localhost:50000",
    "--parallelism=16",
]
DATAFLOW = [
    "pipeline.beam.runner=DataflowRunner",
    "pipeline.beam.extra_args=[--project=acme-ml, --region=us-central1,"
    " --temp_location=gs://acme-seekline/beam-tmp, --sdk_container_image=r.example/seekline:1,"
    " --max_num_workers=40, --experiments=use_runner_v2]",
]
DATAFLOW_ARGS = [
    "--runner=DataflowRunner",
    "--project=acme-ml",
    "--region=us-central1",
    "--temp_location=gs://acme-seekline/beam-tmp",
    "--sdk_container_image=r.example/seekline:1",
    "--max_num_workers=40",
    "--experiments=use_runner_v2",
]


def local_beam_args(cfg, tmp_path) -> dict[str, list[str]]:
    """Each Beam node's beam_pipeline_args in the IR the local runner executes."""
    ir = compiler.Compiler().compile(create_pipeline(cfg, pipeline_root=str(tmp_path / "root")))
    deployment = pipeline_pb2.IntermediateDeploymentConfig()
    ir.deployment_config.Unpack(deployment)
    out = {}
    for node_id, spec in deployment.executor_specs.items():
        if spec.Is(executable_spec_pb2.BeamExecutableSpec.DESCRIPTOR):
            beam = executable_spec_pb2.BeamExecutableSpec()
            spec.Unpack(beam)
            out[node_id] = list(beam.beam_pipeline_args)
    return out


@pytest.mark.parametrize(("overrides", "expected"), [(FLINK, FLINK_ARGS), (DATAFLOW, DATAFLOW_ARGS)])
def test_local_pipeline_hands_the_args_to_every_beam_component(overrides, expected, tmp_path):
    cfg = load_config("tiny", overrides)
    assert create_pipeline(cfg, pipeline_root=str(tmp_path)).beam_pipeline_args == expected
    assert local_beam_args(cfg, tmp_path) == {c: expected for c in BEAM_COMPONENTS}


def test_compiled_kubeflow_spec_passes_the_args_to_ingest_and_pack_unchanged():
    cfg = load_config("cluster", DATAFLOW)
    executors = build_pipeline_spec(cfg)["deploymentSpec"]["executors"]
    for cid in BEAM_COMPONENTS:
        args = executors[executor_label(cid)]["container"]["args"]
        # TFX's container entrypoint takes the Beam flags after its own named arguments.
        assert args[-len(DATAFLOW_ARGS):] == DATAFLOW_ARGS, cid
        assert sum(a.startswith("--runner=") for a in args) == 1


@pytest.mark.parametrize("component", [Ingest, PackSequences])
def test_the_component_executor_builds_its_beam_pipeline_from_the_args(component):
    # What TFX does inside the step: the executor class the component registers, given the
    # run's beam_pipeline_args, makes the beam.Pipeline handed to BeamComponentParameter.
    executor_cls = component.EXECUTOR_SPEC.executor_class
    assert issubclass(executor_cls, BaseBeamExecutor)
    # Flink, not Dataflow: DataflowRunner's options probe GCP credentials (minutes offline).
    executor = executor_cls(BaseBeamExecutor.Context(beam_pipeline_args=FLINK_ARGS))
    options = executor._make_beam_pipeline()._options
    assert options.view_as(StandardOptions).runner == "FlinkRunner"
    parsed = options.get_all_options(retain_unknown_options=True)
    assert (parsed["flink_master"], parsed["parallelism"]) == ("flink-jobmanager:8081", 16)
    assert (parsed["environment_type"], parsed["environment_config"]) == ("EXTERNAL", "localhost:50000")


def test_every_dataflow_arg_is_a_flag_beam_parses():
    cfg = load_config("tiny", DATAFLOW)
    options = PipelineOptions(cfg.pipeline.beam.pipeline_args())
    gcp = options.view_as(GoogleCloudOptions)
    assert (gcp.project, gcp.region, gcp.temp_location) == ("acme-ml", "us-central1", "gs://acme-seekline/beam-tmp")
    assert options.get_all_options()["max_num_workers"] == 40


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["pipeline.beam.runner=SparkRuner"], "pipeline.beam.runner"),
        (["pipeline.beam.extra_args=[project=x]"], "is not a Beam flag"),
        (["pipeline.beam.extra_args=[--runner=DataflowRunner]"], "pipeline.beam.runner"),
        (["pipeline.beam.runner=DataflowRunner", "pipeline.beam.extra_args=[--project=p]"],
         "--region=..., --temp_location=..."),
    ],
)
def test_bad_beam_settings_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", overrides)
