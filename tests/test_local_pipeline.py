"""End to end: the real DAG on LocalDagRunner + SQLite MLMD, driven through the CLI.

Runs on a small slice of the running interpreter's standard library, copied into a temporary
corpus so the test can change it.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import tensorflow_data_validation as tfdv

from components.ingest.ingest import list_corpus_files
from configs.schema import IngestConfig, load_config
from pipelines.cli import main
from pipelines.runs import list_runs

pytestmark = pytest.mark.slow
COMPONENTS = ["ingest", "tokenizer", "pack", "statistics", "schema", "validate", "pretrain", "context_extension",
              "sft", "grpo", "agent_trajectories", "distill", "agent_distill", "evaluate", "export"]
# Training here only proves the DAG wiring (the learning checks are tests/test_learning_checks.py):
# a few steps of each phase, with a smaller model.
TRAIN_FAST = (
    "pretrain.trainer.steps=4", "pretrain.trainer.micro_batch_size=2", "pretrain.trainer.warmup_steps=1",
    "pretrain.trainer.eval_batches=1", "pretrain.trainer.checkpoint_every=2",
    "context_extension.trainer.steps=2", "context_extension.trainer.micro_batch_size=1",
    "context_extension.trainer.warmup_steps=1", "context_extension.trainer.eval_batches=1",
    "context_extension.factor=2", "context_extension.passkey.samples=2",
    "context_extension.passkey.multiples=[1, 2]",
    "sft.trainer.steps=2", "sft.trainer.micro_batch_size=2", "sft.trainer.warmup_steps=1",
    "sft.trainer.eval_batches=1", "sft.corpus_instructions=40",
    "grpo.trainer.steps=2", "grpo.trainer.micro_batch_size=4", "grpo.prompts_per_step=2", "grpo.num_generations=2",
    "grpo.max_completion_tokens=8", "grpo.num_eval_tasks=2", "grpo.eval_samples_per_task=1",
    "grpo.rollout_jit_compile=false",
    "distill.trainer.steps=2", "distill.trainer.micro_batch_size=2", "distill.trainer.warmup_steps=1",
    "distill.trainer.eval_batches=1",
    "agent.coding=1", "agent.arithmetic=2", "agent.max_steps=1", "agent.max_tokens=16",
    "agent.distill.trainer.steps=2", "agent.distill.trainer.micro_batch_size=2",
    "agent.distill.trainer.warmup_steps=1", "agent.distill.trainer.eval_batches=1",
    "export.max_new_tokens_cap=16",
    "evaluate.max_problems=2", "evaluate.n_samples=2", "evaluate.k=[1, 2]", "evaluate.max_new_tokens=32",
)
PACKED_FEATURES = {"input_ids", "segment_ids", "positions", "num_tokens", "num_segments", "segment_lengths", "sources"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    corpus = root / "corpus"
    for f in list_corpus_files(IngestConfig(max_files=30)):  # a slice of the real stdlib
        dst = corpus / f.relpath
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f.uri, dst)
    return root


def overrides(root, *extra):
    args = []
    for kv in (
        f"pipeline.output_dir={root / 'out'}",
        f"ingest.corpus=['{root / 'corpus'}']",
        "ingest.eval_percent=20",
        "ingest.max_files=null",
        *TRAIN_FAST,
        *extra,
    ):
        args += ["--set", kv]
    return args


def runs(root):
    return list_runs(root / "out" / "metadata.sqlite", "seekline-tiny")


def test_first_run_executes_every_component(workdir, capsys):
    assert main(["run", *overrides(workdir)]) == 0
    [run] = runs(workdir)
    assert [e.component for e in run.executions] == COMPONENTS
    assert {e.state for e in run.executions} == {"COMPLETE"}
    out = workdir / "out"
    # the resolved config is saved next to the run's outputs, and reloads to the same tree
    saved = out / "runs" / run.run_id.replace(":", "-") / "config.yaml"
    assert load_config(str(saved)) == load_config("tiny", overrides(workdir)[1::2])
    schema = tfdv.load_schema_text(str(next(out.glob("pipeline/schema/schema/*/schema.pbtxt"))))
    assert {f.name for f in schema.feature} == PACKED_FEATURES
    # the schema inferred on the first run is frozen for the next spans
    assert tfdv.load_schema_text(str(out / "pipeline" / "frozen" / "schema.pbtxt")) == schema
    assert next(out.glob("pipeline/validate/anomalies/*/anomalies.txt")).read_text() == "no anomalies\n"
    assert next(out.glob("pipeline/validate/anomalies/*/statistics.html")).stat().st_size > 1000
    # TFDV's statistics of the packed rows agree with the pack report (two computations)
    report = json.loads(next(out.glob("pipeline/pack/packed/*/data_report.json")).read_text())
    for split in ("train", "eval"):
        stats = tfdv.load_stats_binary(str(next(out.glob(f"pipeline/statistics/statistics/*/Split-{split}/FeatureStats.pb"))))
        ds = stats.datasets[0]
        assert ds.num_examples == report["rows"][split]
        num_tokens = next(f for f in ds.features if f.path.step == ["num_tokens"])
        assert round(num_tokens.num_stats.mean * ds.num_examples) == report["tokens_written"][split]
    assert report["ingest"]["stages"][0] == ["files listed", 30]
    assert next(out.glob("pipeline/pack/packed/*/data_report.png")).stat().st_size > 0
    tok_meta = json.loads(next(out.glob("pipeline/tokenizer/tokenizer/*/tokenizer_meta.json")).read_text())
    assert tok_meta["eos_id"] == 2 and tok_meta["roundtrip_checked_documents"] == report["ingest"]["documents"]["train"]
    # the training phases: a Model artifact each (checkpoints, HF export, report, curves)
    pt = next(out.glob("pipeline/pretrain/model/*"))
    pt_report = json.loads((pt / "report.json").read_text())
    assert pt_report["steps"] == 4 and pt_report["eval_loss"] > 0 and pt_report["eval_unigram_entropy"] > 0
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in (pt / "final").iterdir()}
    assert (pt / "loss_curve.png").stat().st_size > 0 and (pt / "checkpoints" / "checkpoint").exists()
    ce = next(out.glob("pipeline/context_extension/model/*"))
    ce_report = json.loads((ce / "report.json").read_text())
    assert ce_report["extended_context"] == 2 * ce_report["original_context"]
    assert set(ce_report["before"]) == set(ce_report["after"]) == {"1x", "2x"}
    assert json.loads((ce / "final" / "config.json").read_text())["rope_scaling"]["factor"] == 2.0
    assert (ce / "passkey.png").stat().st_size > 0
    # post-training: SFT of the extended model on assistant-only rows, GRPO of the SFT model, the student
    # distilled from the GRPO model on the SFT rows
    sft = next(out.glob("pipeline/sft/model/*"))
    sft_report = json.loads((sft / "report.json").read_text())
    assert sft_report["steps"] == 2 and sft_report["data"]["train"]["assistant_tokens"] > 0
    assert sft_report["init"].startswith(str(ce)) and "eval_loss" in sft_report["before"]
    assert json.loads((sft / "final" / "seekline_phase.json").read_text())["chat_template"] == "seekline"
    # GRPO of the SFT model: rollouts, rewards, the exported policy
    gr = next(out.glob("pipeline/grpo/model/*"))
    gr_report = json.loads((gr / "report.json").read_text())
    assert gr_report["steps"] == 2 and gr_report["init"] == str(sft / "final")
    assert "eval_reward_mean" in gr_report and "eval_reward_mean" in gr_report["before"]
    assert (gr / "reward_curve.png").stat().st_size > 0 and list((gr / "rollouts").glob("step_*.jsonl"))
    assert json.loads((gr / "final" / "seekline_phase.json").read_text())["chat_template"] == "seekline"
    st = next(out.glob("pipeline/distill/model/*"))
    st_report = json.loads((st / "report.json").read_text())
    assert st_report["steps"] == 2 and st_report["teacher"] == str(gr / "final")
    assert st_report["data"] == str(sft / "data") and st_report["eval_kl_to_teacher"] >= 0
    student = json.loads((st / "final" / "config.json").read_text())
    assert student["num_hidden_layers"] < json.loads((sft / "final" / "config.json").read_text())["num_hidden_layers"]
    # agent distillation: the GRPO model in process writes trajectories (3 tasks, 1 reply each; a
    # 2-step model writes no valid step, so every one fails and all are kept: tiny's
    # require_success=false), the distilled student continues on them with SAD + process supervision
    at = next(out.glob("pipeline/agent_trajectories/trajectories/*"))
    at_report = json.loads((at / "report.json").read_text())
    assert at_report["teacher"] == "local:" + str(gr / "final") and at_report["tasks"] == 3
    assert at_report["tools"] == ["python", "retrieve", "finish"]          # retrieval over the ingested corpus
    assert at_report["quality"]["trajectories"] == 3 and (at / "agent_quality.png").stat().st_size > 0
    assert len((at / "trajectories.jsonl").read_text().splitlines()) == 3
    ag = next(out.glob("pipeline/agent_distill/model/*"))
    ag_report = json.loads((ag / "report.json").read_text())
    assert ag_report["loss"] == "agent" and ag_report["steps"] == 2 and ag_report["data"] == str(at / "data")
    assert ag_report["teacher"] == str(gr / "final") and ag_report["student_parameters"] == st_report["student_parameters"]
    assert json.loads((ag / "config.json").read_text())["student_init"] == str(st / "final")
    # evaluation: the agent student against its teacher on 2 HumanEval problems, 2 samples each, and a blessing
    ev = next(out.glob("pipeline/evaluate/evaluation/*"))
    summary = json.loads((ev / "summary.json").read_text())
    assert summary["candidate"]["model"] == str(ag / "final") and summary["teacher"]["model"] == str(gr / "final")
    assert summary["problems"] == ["HumanEval/0", "HumanEval/1"]
    assert summary["candidate"]["samples"] == summary["teacher"]["samples"] == 4
    assert {"pass@1", "pass@2"} <= set(summary["candidate"]) and summary["candidate"]["prompt_mode"] == "chat"
    assert len((ev / "candidate" / "results.jsonl").read_text().splitlines()) == 4
    assert (ev / "report.png").stat().st_size > 0 and (ev / "report.html").stat().st_size > 0
    blessing = next(out.glob("pipeline/evaluate/blessing/*"))
    marker = "BLESSED" if summary["blessing"]["blessed"] else "NOT_BLESSED"
    assert sorted(p.name for p in blessing.iterdir() if p.name.isupper()) == [marker]
    assert json.loads((blessing / "summary.json").read_text()) == summary
    # the properties TFX's LatestBlessedModelStrategy matches on, as TFX's Evaluator writes them
    import ml_metadata as mlmd
    from ml_metadata.proto import metadata_store_pb2

    conn = metadata_store_pb2.ConnectionConfig()
    conn.sqlite.filename_uri = str(out / "metadata.sqlite")
    store = mlmd.MetadataStore(conn)
    [b] = store.get_artifacts_by_type("ModelBlessing")
    [student_model] = [a for a in store.get_artifacts_by_type("Model") if a.uri == str(ag)]
    assert b.custom_properties["blessed"].int_value == int(summary["blessing"]["blessed"])
    assert b.custom_properties["current_model_id"].int_value == student_model.id
    assert b.custom_properties["current_model"].string_value == str(ag)
    # blessed (tiny's floor is 0), so the export ran: SavedModel + HF files + manifest, published
    # into TF Serving's version layout beside the pipeline
    assert summary["blessing"]["blessed"], summary["blessing"]
    ex = next(out.glob("pipeline/export/pushed_model/*"))
    manifest = json.loads((ex / "manifest.json").read_text())
    version = str(manifest["version"])
    assert manifest["model"]["uri"] == str(ag) and manifest["blessing"]["blessed"] is True
    assert manifest["evaluation"]["candidate"] == {k: v for k, v in summary["candidate"].items() if k.startswith("pass@")}
    assert manifest["pushed_to"] == str(out / "serving" / "seekline-tiny" / version)
    assert (ex / "saved_model" / version / "saved_model.pb").exists() and (ex / "hf" / "model.safetensors").exists()
    assert sorted(p.name for p in (out / "serving" / "seekline-tiny").iterdir()) == [version]
    import tensorflow as tf
    sig = tf.saved_model.load(manifest["pushed_to"]).signatures["generate"]
    res = sig(input_ids=tf.constant([[5, 6, 7]]), attention_mask=tf.constant([[1, 1, 1]]),
              max_new_tokens=tf.constant(4), temperature=tf.constant(0.0), top_p=tf.constant(1.0), seed=tf.constant(0))
    assert res["sequences"].shape == (1, 16)


def test_second_run_is_served_from_cache(workdir, capsys):
    assert main(["run", *overrides(workdir)]) == 0
    first, second = runs(workdir)
    assert {e.state for e in second.executions} == {"CACHED"}
    assert second.state == "CACHED"
    capsys.readouterr()
    assert main(["runs", *overrides(workdir)]) == 0
    table = capsys.readouterr().out
    assert first.run_id[:16] in table and second.run_id[:16] in table and "CACHED" in table


def test_an_unblessed_model_is_not_exported(workdir):
    """A floor no model reaches: evaluate re-runs and refuses the blessing; the export's Cond is
    false, so nothing new is exported or published."""
    out = workdir / "out"
    before = sorted(p.name for p in (out / "serving" / "seekline-tiny").iterdir())
    assert main(["run", *overrides(workdir, "evaluate.blessing.min_pass_at_1=1.0")]) == 0
    last = runs(workdir)[-1]
    states = {e.component: e.state for e in last.executions}
    assert states["evaluate"] == "COMPLETE" and states.get("export") != "COMPLETE", states
    newest = max(out.glob("pipeline/evaluate/blessing/*"), key=lambda p: int(p.name))
    assert (newest / "NOT_BLESSED").exists()
    assert sorted(p.name for p in (out / "serving" / "seekline-tiny").iterdir()) == before
    assert len(list(out.glob("pipeline/export/pushed_model/*"))) == 1


def test_no_worse_than_baseline_resolves_the_latest_blessed_model(workdir):
    """With the baseline rule on, the resolver hands evaluate the latest blessed model of this
    pipeline (the first run's student, blessed under the tiny thresholds); only evaluate re-runs."""
    assert main(["run", *overrides(workdir, "evaluate.blessing.require_no_worse_than_baseline=true")]) == 0
    last = runs(workdir)[-1]
    states = {e.component: e.state for e in last.executions}
    assert states["evaluate"] == "COMPLETE" and states["distill"] == "CACHED", states
    out = workdir / "out"
    first = sorted(out.glob("pipeline/evaluate/blessing/*"), key=lambda p: int(p.name))
    summary = json.loads((first[-1] / "summary.json").read_text())
    assert json.loads((first[0] / "summary.json").read_text())["blessing"]["blessed"]
    rules = {r["rule"]: r for r in summary["blessing"]["rules"]}
    assert "no_worse_than_baseline" in rules, rules
    # the baseline is the blessed student of the first run: the same (cached) model as the candidate
    assert summary["baseline"]["model"] == summary["candidate"]["model"], summary.get("baseline")
    assert rules["no_worse_than_baseline"]["passed"] and summary["blessing"]["blessed"]


# What the data-side tests check ends at validate (and the frozen schema / drift baseline that
# validate alone reads and writes); the training phases after it only re-prove the wiring that
# test_first_run_executes_every_component already proves. Pretraining stays (it is not optional
# in the DAG); the optional post-validate phases are left out of these runs.
DATA_ONLY = ("context_extension.enabled=false", "sft.enabled=false", "evaluate.enabled=false")


def test_changed_corpus_reruns_ingest(workdir):
    victim = next((workdir / "corpus").rglob("*.py"))
    victim.write_text(victim.read_text() + "\n# edited\n")
    assert main(["run", *overrides(workdir, *DATA_ONLY)]) == 0
    last = runs(workdir)[-1]
    assert last.executions[0].component == "ingest" and last.executions[0].state == "COMPLETE"
    # the new span is validated against the schema frozen by the first run (and passes)
    assert {e.component: e.state for e in last.executions}["validate"] == "COMPLETE"
    origins = sorted(
        (workdir / "out" / "pipeline" / "schema" / "schema").glob("*/schema_origin.txt"),
        key=lambda p: int(p.parent.name),
    )
    assert origins[-1].read_text().startswith("frozen schema ")


def _eval_bound_file(i: int) -> bytes:
    """A file whose content hash routes it to the eval split (eval_percent=20)."""
    n = 0
    while True:
        data = f"VALUE_{i} = {n}  # a constant that only the eval split has\n".encode()
        if int(hashlib.sha256(data).hexdigest()[:8], 16) % 100 < 20:
            return data
        n += 1


def test_anomalies_fail_the_run_with_a_readable_report(workdir, capsys):
    # A second corpus entry whose documents all land in eval: its `source` value is absent
    # from the schema inferred on train, which TFDV reports as an anomaly.
    extra = workdir / "extra"
    extra.mkdir()
    for i in range(3):
        (extra / f"x{i}.py").write_bytes(_eval_bound_file(i))
    corpus = f"ingest.corpus=['{workdir / 'corpus'}', '{extra}']"
    assert main(["run", *overrides(workdir, corpus)]) == 2
    err = capsys.readouterr().err
    assert "seekline: error: data validation found" in err and "eval/source" in err
    assert runs(workdir)[-1].state == "FAILED"


def test_a_drifted_span_fails_against_the_previous_span(workdir, capsys):
    # Same corpus entry (so the same `sources` value), but now hundreds of one-line functions:
    # rows hold many ~20-token pieces instead of a few long ones — segment_lengths drifts.
    corpus = workdir / "corpus"
    shutil.rmtree(corpus)
    corpus.mkdir()
    for i in range(400):
        (corpus / f"f{i}.py").write_text(f"def function_{i}(value):\n    return value * {i} + {i * 7}\n")
    baseline = workdir / "out" / "pipeline" / "frozen" / "baseline" / "FeatureStats.pb"
    before = baseline.read_bytes()
    assert main(["run", *overrides(workdir)]) == 2
    err = capsys.readouterr().err
    assert "seekline: error: data validation found" in err and "train/segment_lengths" in err
    assert "Jensen-Shannon" in err.replace("jensen_shannon", "Jensen-Shannon")
    assert baseline.read_bytes() == before  # a failed span never becomes the baseline


def test_deleting_the_frozen_folder_accepts_the_new_data(workdir):
    # The documented remedy for a deliberate change: the schema/validate steps must not hand back
    # the old frozen schema from the cache.
    frozen = workdir / "out" / "pipeline" / "frozen"
    shutil.rmtree(frozen)
    # (the corpus is now undocumented one-liners: no SFT instructions can be made from it)
    assert main(["run", *overrides(workdir, *DATA_ONLY)]) == 0
    assert (frozen / "schema.pbtxt").is_file() and (frozen / "baseline" / "FeatureStats.pb").is_file()
    last = runs(workdir)[-1]
    assert last.state != "FAILED"
    validate = next(e for e in last.executions if e.component == "validate")
    assert validate.state == "COMPLETE"


def _cli(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (["run", "--set", "ingest.corpus=['/no/such/dir']"], "corpus directory not found: /no/such/dir"),
        (["run", "-c", "huge"], "unknown preset 'huge'"),
        (["run", "--set", "ingest.eval_percent=abc"], "ingest.eval_percent"),
        (["compile", "--set", "ingest.bogus=1"], "unknown key 'ingest.bogus'"),
        (["deploy", "--host", ""], "KFP_HOST is not set"),
    ],
)
def test_user_errors_are_one_line_without_traceback(args, message):
    proc = _cli(*args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("seekline: error:")]
    assert len(lines) == 1 and message in lines[0], proc.stderr[-2000:]


def test_unreadable_corpus_file_is_named(tmp_path):
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "ok.py").write_text("x = 1\n")
    os.symlink(tmp_path / "missing.py", corpus / "broken.py")
    proc = _cli("run", "--set", f"ingest.corpus=['{corpus}']", "--set", f"pipeline.output_dir={tmp_path}/o")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"cannot read corpus file {corpus}/broken.py" in proc.stderr


@pytest.mark.parametrize("command", ["run", "compile", "deploy", "schedule", "runs"])
def test_every_command_has_help(command):
    proc = _cli(command, "--help")
    assert proc.returncode == 0 and "--config" in proc.stdout and "--set" in proc.stdout
