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


def executor_input(spec, task: str, out_dir, inputs: dict | None = None) -> dict:
    """What the KFP v2 launcher passes for a task; ``inputs``: {name: (uri, metadata)} of its
    upstream artifacts."""
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
    artifacts = {}
    for name, (uri, metadata) in (inputs or {}).items():
        art = component.input_definitions.artifacts[name]
        artifacts[name] = {
            "artifacts": [
                {
                    "name": f"projects/p/locations/l/metadataStores/default/artifacts/{name}-in",
                    "uri": str(uri),
                    "type": {"instanceSchema": art.artifact_type.instance_schema},
                    "metadata": metadata,
                }
            ]
        }
    return {
        "inputs": {"parameterValues": params, "artifacts": artifacts},
        "outputs": {"artifacts": outputs, "outputFile": str(out_dir / "executor_output.json")},
    }


def run_task(spec, task: str, out, inputs=None, cwd=None):
    container = spec.deployment_spec["executors"][f"{task}_executor"]["container"]
    payload = json.dumps(executor_input(spec, task, out, inputs))
    argv = [a if a != "{{$}}" else payload for a in container["args"]]
    command = list(container["command"])
    assert command[0] == "python"
    env = dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(command + argv, env=env, capture_output=True, text=True, timeout=300, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return container


def test_compiled_ingest_and_tokenizer_run_in_a_subprocess(tmp_path):
    cfg = load_config(
        "tiny",
        ["ingest.max_files=20", "ingest.eval_percent=30", "ingest.num_shards=1", "tokenizer.vocab_size=500"],
    )
    spec, _ = load_pipeline_spec(compile_pipeline(cfg, tmp_path / "pipeline.yaml"))
    out = tmp_path / "task"
    container = run_task(spec, "ingest", out, cwd=tmp_path)
    # the run's beam_pipeline_args reach the Beam component's container
    assert "--direct_running_mode=multi_processing" in container["args"]

    examples = out / "examples"
    counts = {}
    for split in ("train", "eval"):
        shards = tf.io.gfile.glob(str(examples / f"Split-{split}" / "*.gz"))
        counts[split] = sum(1 for _ in tf.data.TFRecordDataset(shards, compression_type="GZIP"))
    report = json.loads((examples / "ingest_report.json").read_text())
    assert report["documents"] == counts and counts["eval"] > 0
    assert dict(report["stages"])["files listed"] == 20
    # The executor reports the output artifact (with its split names) back to KFP.
    output = json.loads((out / "executor_output.json").read_text())
    art = output["artifacts"]["examples"]["artifacts"][0]
    assert json.loads(art["metadata"]["split_names"]) == ["train", "eval"]
    assert art["metadata"]["train_documents"] == counts["train"]

    # The tokenizer step consumes that artifact, as the KFP launcher would hand it over.
    tok_out = tmp_path / "tok_task"
    run_task(spec, "tokenizer", tok_out, {"examples": (examples, art["metadata"])}, cwd=tmp_path)
    meta = json.loads((tok_out / "tokenizer" / "tokenizer_meta.json").read_text())
    assert meta["vocab_size"] == 500 and meta["trained_on"]["documents"] == counts["train"]
    output = json.loads((tok_out / "executor_output.json").read_text())
    assert output["artifacts"]["tokenizer"]["artifacts"][0]["metadata"]["vocab_size"] == 500
