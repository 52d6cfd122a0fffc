"""The `seekline` console script as a user runs it (no Makefile: no PYTHONWARNINGS export):
data errors inside Beam steps print one line, a SIGKILLed run shows as ABANDONED and the next
run clears its leftovers, a successful run prints no library warnings."""

import glob
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.cli import main
from pipelines.runs import list_runs

pytestmark = pytest.mark.slow
SEEKLINE = str(Path(sys.executable).parent / "seekline")


def seekline(*args, **kw):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "TF_CPP_MIN_LOG_LEVEL")}
    return subprocess.run([SEEKLINE, *args], capture_output=True, text=True, env=env, timeout=900, **kw)


def published(out: Path) -> list[str]:
    """Split folders and staging folders anywhere under the pipeline root."""
    return glob.glob(f"{out}/pipeline/**/Split-*", recursive=True) + glob.glob(
        f"{out}/pipeline/**/.staging-*", recursive=True
    )


def write_jsonl_corpus(path: Path, n: int = 300, seed: int = 0) -> None:
    """Documents of random made-up words: distinct enough to survive near-dup removal."""
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 8))) for _ in range(5000)]
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "docs.jsonl", "w") as f:
        for _ in range(n):
            text = "\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(15))
            f.write(json.dumps({"text": text}) + "\n")


def _corrupt_parquet(d: Path) -> tuple[str, list[str]]:
    f = d / "part-0.parquet"
    f.write_bytes(b"PAR1" + b"\x13" * 200 + b"PAR1")
    return f"seekline: error: {f}: not a readable Parquet file (", []


def _malformed_jsonl(d: Path) -> tuple[str, list[str]]:
    f = d / "docs.jsonl"
    f.write_text('{"text": "a fine first line of text, long enough"}\n{"text": oops}\n')
    return f"seekline: error: {f}:2: malformed JSON: Expecting value (column 10) (ingest.strict)", ["ingest.strict=true"]


def _invalid_utf8(d: Path) -> tuple[str, list[str]]:
    f = d / "notes.txt"
    f.write_bytes(b"first line\nsecond line caf\xe9\n")
    return (f"seekline: error: {f}: invalid UTF-8 at byte 26 (line 2): 0xe9 (ingest.on_invalid_utf8=fail)",
            ["ingest.on_invalid_utf8=fail"])


@pytest.mark.parametrize("make", [_corrupt_parquet, _malformed_jsonl, _invalid_utf8])
def test_data_errors_in_beam_steps_are_one_line(tmp_path, make):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    expected, sets = make(corpus)
    out = tmp_path / "out"
    (out / "runs" / "earlier").mkdir(parents=True)
    (out / "runs" / "earlier" / "config.yaml").write_text("kept\n")
    args = ["run", "--corpus", str(corpus), "--set", f"pipeline.output_dir={out}"]
    for s in sets:
        args += ["--set", s]
    proc = seekline(*args)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), proc.stderr[-3000:]
    # the worker tracebacks are in the log, not on the console
    assert "Traceback" in (out / "logs" / "run.log").read_text() and "Traceback" not in proc.stdout
    assert published(out) == []
    assert (out / "runs" / "earlier" / "config.yaml").read_text() == "kept\n"
    [run] = list_runs(out / "metadata.sqlite")
    assert run.state == "FAILED"


# The second run checks that a whole successful run is quiet (no warnings on stderr) and cleans
# up the killed run's leftovers; every component still runs (same DAG, same code paths: build,
# train with more than one checkpoint, eval, export), only with fewer optimizer steps and
# generated tokens: tiny's 120 + 40 + 40 + ... steps were spent on learning nothing this test reads.
SHORT_TRAINING = (
    "pretrain.trainer.steps=4", "pretrain.trainer.warmup_steps=1", "pretrain.trainer.checkpoint_every=2",
    "pretrain.trainer.eval_batches=2",
    "context_extension.trainer.steps=2", "context_extension.trainer.warmup_steps=1",
    "context_extension.trainer.checkpoint_every=1", "context_extension.trainer.eval_batches=1",
    "context_extension.passkey.samples=4",
    "sft.trainer.steps=2", "sft.trainer.warmup_steps=1", "sft.trainer.checkpoint_every=1",
    "sft.trainer.eval_batches=2",
    "grpo.trainer.steps=2", "grpo.trainer.checkpoint_every=1",
    "distill.trainer.steps=2", "distill.trainer.warmup_steps=1", "distill.trainer.checkpoint_every=1",
    "distill.trainer.eval_batches=2",
    "agent.distill.trainer.steps=2", "agent.distill.trainer.warmup_steps=1",
    "agent.distill.trainer.checkpoint_every=1",
    "evaluate.max_problems=2", "evaluate.max_new_tokens=32",
)


def test_killed_run_is_abandoned_and_the_next_run_cleans_up_quietly(tmp_path, capsys):
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    write_jsonl_corpus(corpus)
    args = ["run", "--corpus", str(corpus), "--set", f"pipeline.output_dir={out}", "--set", "tokenizer.vocab_size=512"]
    for kv in SHORT_TRAINING:
        args += ["--set", kv]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    proc = subprocess.Popen([SEEKLINE, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        while not glob.glob(f"{out}/pipeline/ingest/examples/*/.staging-*"):
            assert proc.poll() is None and time.monotonic() < deadline, "ingest never started writing"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its Beam workers, mid-write
        proc.wait()
    leftovers = published(out)
    assert leftovers and all(".staging-" in p for p in leftovers)

    [killed] = list_runs(out / "metadata.sqlite")
    assert killed.state == "ABANDONED"
    assert main(["runs", "--set", f"pipeline.output_dir={out}"]) == 0
    assert "ABANDONED" in capsys.readouterr().out

    done = seekline(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr == ""  # no FutureWarning from google-api-core & co, no worker output
    assert not glob.glob(f"{out}/pipeline/**/.staging-*", recursive=True)
    killed_exec = next(e for e in killed.executions if e.component == "ingest").execution_id
    assert not (out / "pipeline" / "ingest" / "examples" / str(killed_exec)).exists()
    states = [r.state for r in list_runs(out / "metadata.sqlite")]
    assert states == ["ABANDONED", "COMPLETE"]

    # A shared output folder: `runs` filters by the pipeline name of its -c config.
    capsys.readouterr()
    assert main(["runs", "-c", "small", "--set", f"pipeline.output_dir={out}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"seekline: error: no runs of pipeline 'seekline-small' in {out}/metadata.sqlite (`runs` shows "
                   "the pipeline.name of -c small); pipelines with runs there: seekline-tiny")
