"""Run one compiled component the way the KFP container does: the command and arguments come
from the compiled PipelineSpec, the `{{$}}` placeholder becomes the ExecutorInput JSON the KFP
launcher would pass, and the process runs in a subprocess with the project installed."""

import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf
from google.protobuf import json_format

from configs.schema import load_config
from pipelines.kubeflow import compile_pipeline, load_pipeline_spec

pytestmark = pytest.mark.slow


def executor_input(spec, task: str, out_dir) -> dict:
    """What the KFP v2 launcher passes for a task with no upstream artifacts."""
    component = spec.components[spec.root.dag.tasks[task].component_ref.name]
    # Schema 2.1 constants are protobuf Values; the launcher passes them as parameterValues.
    params = {
        name: json_format.MessageToDict(p.runtime_value.constant)
        for name, p in spec.root.dag.tasks[task].inputs.parameters.items()
    }
    outputs = {}
    for name, art in component.output_definitions.artifacts.items():
        outputs[name] = {
            "artifacts": [
                {
                    "name": f"projects/p/locations/l/metadataStores/default/artifacts/{task}-{name}",
                    "uri": str(out_dir / name),
                    "type": {"instanceSchema": art.artifact_type.instance_schema},
                    "metadata": {},
                }
            ]
        }
    return {
        "inputs": {"parameterValues": params},
        "outputs": {"artifacts": outputs, "outputFile": str(out_dir / "executor_output.json")},
    }


def test_compiled_ingest_runs_in_a_subprocess(tmp_path):
    cfg = load_config("tiny", ["ingest.max_files=20", "ingest.eval_percent=30", "ingest.num_shards=1"])
    spec, _ = load_pipeline_spec(compile_pipeline(cfg, tmp_path / "pipeline.yaml"))
    container = spec.deployment_spec["executors"]["ingest_executor"]["container"]
    out = tmp_path / "task"
    payload = json.dumps(executor_input(spec, "ingest", out))
    argv = [a if a != "{{$}}" else payload for a in container["args"]]
    command = list(container["command"])
    assert command[0] == "python"
    env = dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(command + argv, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]

    examples = out / "examples"
    counts = {}
    for split in ("train", "eval"):
        shards = tf.io.gfile.glob(str(examples / f"Split-{split}" / "*.gz"))
        counts[split] = sum(1 for _ in tf.data.TFRecordDataset(shards, compression_type="GZIP"))
    assert counts["train"] + counts["eval"] == 20 and counts["eval"] > 0
    report = json.loads((examples / "ingest_report.json").read_text())
    assert report["documents"] == counts
    # The executor reports the output artifact (with its split names) back to KFP.
    output = json.loads((out / "executor_output.json").read_text())
    art = output["artifacts"]["examples"]["artifacts"][0]
    assert json.loads(art["metadata"]["split_names"]) == ["train", "eval"]
    assert art["metadata"]["train_documents"] == counts["train"]
