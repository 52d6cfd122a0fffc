"""`seekline diagnose`: the pattern table against docs/troubleshooting.md, sample log lines,
every user error seekline can raise, and the command end to end."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from pipelines import cli
from pipelines.diagnose import PATTERNS, diagnose_file, diagnose_lines, doc_rows, match_line

REPO = Path(__file__).resolve().parent.parent
CATCH_ALL = "any other `seekline: error: …` line"
# The exception types the CLI prints as one `seekline: error:` line (UserError and subclasses,
# the model core's own ones; pipelines/cli.main).
USER_ERRORS = {"UserError", "ConfigError", "InputDataError", "DeployError", "CheckpointError",
               "GenerationError", "TeacherError", "TrainingError", "OpsUnavailableError"}

# One or more real-format log lines per pattern: seekline's own messages as the code formats them,
# and the third-party lines as TF, Kubernetes, Beam, make print them.
SAMPLES = {
    "`error: python3.10 not found` from `make setup`": [
        "error: python3.10 not found (TFX 1.16 needs Python 3.10; pyenv install 3.10)"],
    "TF prints `Unable to register cuDNN factory …`": [
        "E external/local_xla/xla/stream_executor/cuda/cuda_dnn.cc:9261] Unable to register cuDNN factory: "
        "Attempting to register factory for plugin cuDNN when one has already been registered"],
    "FutureWarnings (`google.api_core … non-supported Python version`) on the console": [
        "/x/site-packages/google/api_core/_python_version_support.py:266: FutureWarning: You are using a "
        "non-supported Python version (3.10.13)."],
    "`make bench` fails in `setup-ref`": ["error: python3.11 not found (needed for the transformers reference venv)"],
    "`seekline: error: SEEKLINE_OPS=on but the custom ops cannot be used: …`": [
        "seekline: error: SEEKLINE_OPS=on but the custom ops cannot be used: /x/model/ops/_build/libseekline_ops.so "
        "is stale (sources changed since it was built). Run `make ops` (needs g++), or set SEEKLINE_OPS=auto to "
        "fall back to pure TF."],
    "`seekline custom ops not used (pure-TF fallback): …` warning": [
        "WARNING:model.ops:seekline custom ops not used (pure-TF fallback): /x/model/ops/_build/libseekline_ops.so "
        "is missing. Build them with `make ops`."],
    "`error: custom ops not built: …` from `make ops`": [
        "error: custom ops not built: no C++ compiler found (install g++ or set CXX); the pure-TF fallback stays "
        "in use"],
    "`ResourceExhaustedError: OOM when allocating tensor …` / `Killed` (exit 137)": [
        "tensorflow.python.framework.errors_impl.ResourceExhaustedError: {{function_node __wrapped__MatMul}} "
        "OOM when allocating tensor with shape[16,256,4096] and type float on /job:localhost/replica:0/task:0/"
        "device:GPU:0 by allocator GPU_0_bfc",
        "Killed",
        "    Last State:     Terminated  Reason: OOMKilled  Exit Code: 137"],
    "`N non-finite steps in a row … loss/gradients are NaN/Inf`": [
        "seekline: error: 5 non-finite steps in a row (last at step 41): loss/gradients are NaN/Inf; lower "
        "trainer.lr or check the data (/out/pretrain)"],
    "a TFJob stays Pending: `0/N nodes are available: … Insufficient nvidia.com/gpu`": [
        "  Warning  FailedScheduling  12s  default-scheduler  0/4 nodes are available: 4 Insufficient "
        "nvidia.com/gpu. preemption: 0/4 nodes are available"],
    "`seekline: error: TFJob … failed` / `did not start within …`": [
        "seekline: error: TFJob seekline-pretrain-abc failed: worker-1 exited with code 1 (Error)",
        "seekline: error: TFJob seekline-pretrain-abc did not start within 600s: Insufficient cpu"],
    "`seekline: error: … trainer.workers > 1 …` (a multi-node step cannot launch its TFJob)": [
        "seekline: error: trainer.workers > 1 needs a Kubeflow pipeline compiled with the TFJob launch context "
        "($SEEKLINE_TFJOB is not set in this step); the local runner trains in one process: set trainer.workers=1, "
        "or run `seekline train` in each worker yourself",
        "seekline: error: pretrain.trainer.workers > 1: the TFJob's output outputs/x is neither an object-store URI "
        "(gs://, s3://) nor under a PVC mount of resources.components.pretrain.pvc_mounts: the worker pods cannot "
        "see it (set kubeflow.pipeline_root to shared storage)"],
    "`ImagePullBackOff` / `ErrImagePull` on a pipeline or TFJob pod": [
        "  Warning  Failed  3s  kubelet  Failed to pull image \"ghcr.io/x/seekline:v9\": not found",
        "seekline-pretrain-worker-0   0/1     ImagePullBackOff   0          2m"],
    "`could not select device driver \"\" with capabilities: [[gpu]]` / `Could not load dynamic library "
    "'libcudart`": [
        "docker: Error response from daemon: could not select device driver \"\" with capabilities: [[gpu]].",
        "W tensorflow/core/common_runtime/gpu/gpu_device.cc:2256] Cannot dlopen some GPU libraries."],
    "Beam: `Error received from SDK harness` / `BrokenProcessPool` / a worker `Traceback`": [
        "RuntimeError: Pipeline job-001 failed in state FAILED: Error received from SDK harness for "
        "instruction 12: Traceback (most recent call last):",
        "concurrent.futures.process.BrokenProcessPool: A process in the process pool was terminated abruptly"],
    "`sandbox: neither bubblewrap nor unprivileged user namespaces work here`": [
        "WARNING:sandbox.isolation:sandbox: neither bubblewrap nor unprivileged user namespaces work here; "
        "running code with rlimits only: NO network or filesystem isolation",
        "RuntimeError: sandbox setup failed (userns+netns): mount: permission denied"],
    "teacher `HTTP 429` / `rate_limited` in the trajectory report": [
        "seekline: error: teacher gpt-x at https://api.x.com/v1: HTTP 429: Too Many Requests (rate_limited; "
        "7 attempts)"],
    "teacher `HTTP 401` / `the environment variable … (the API key) is not set`": [
        "seekline: error: teacher gpt-x at https://api.x.com/v1: the environment variable OPENAI_API_KEY "
        "(the API key) is not set",
        "seekline: error: teacher at https://api.x.com/v1: HTTP 401: invalid key (check the API key in "
        "OPENAI_API_KEY) (client_error; 1 attempt)"],
    "`agent teacher …: success rate … is below agent.min_success_rate`": [
        "seekline: error: agent teacher grpo: success rate 0.00 (0/8) is below agent.min_success_rate=0.5; "
        "see /o/agent_quality.json"],
    "`seekline: error: cannot reach Kubeflow Pipelines at …`": [
        "seekline: error: cannot reach Kubeflow Pipelines at http://kfp:8080: [Errno 111] Connection refused",
        "seekline: error: KFP_HOST is not set: export KFP_HOST=http://<kfp-api-host>:<port> (or pass --host)"],
    "Kubeflow Pipelines answered `401` / `403` (`Unauthorized`, `Forbidden`)": [
        "seekline: error: Kubeflow Pipelines refused to upload the pipeline: 403 Forbidden access denied",
        "HTTP response headers: ... (401) Reason: Unauthorized"],
    "`seekline: error: cron '…' has 5 fields; KFP needs 6`": [
        "seekline: error: cron '0 3 * * *' has 5 fields; KFP needs 6 (seconds first)"],
    "`seekline: error: FILE: not a KFP PipelineSpec (missing …)` from `deploy --package`": [
        "seekline: error: build/x.yaml: not a KFP PipelineSpec (missing pipelineInfo)"],
    "`seekline compile` prints `warning: kubeflow.pipeline_root is a placeholder (gs://YOUR-BUCKET/…)`": [
        "warning: kubeflow.pipeline_root is a placeholder (gs://YOUR-BUCKET/seekline); set it, e.g. --set "
        "kubeflow.pipeline_root=..."],
    "`seekline compile` prints `warning: validate.frozen_dir resolves to minio://…`": [
        "warning: validate.frozen_dir resolves to minio://mlpipeline/frozen"],
    "`seekline compile` / `doctor` warns `X asks for N GPU(s) but runs IMAGE, which looks CPU-only`": [
        "warning: sft asks for 8 GPU(s) but runs ghcr.io/seekline/seekline:latest, which looks CPU-only (no gpu/cuda"],
    "`seekline compile` prints `warning: export.push_dir resolves to minio://…`": [
        "warning: export.push_dir resolves to minio://mlpipeline/serving/seekline-tiny, which tf.io.gfile cannot"],
    "`seekline: error: corpus directory not found: …`": ["seekline: error: corpus directory not found: /data/x"],
    "`seekline: error: corpus DIR: none of its N files match include=[…]; it has 120 .jsonl, …`": [
        "seekline: error: corpus /d: none of its 120 files match include=['*.py']; it has 120 .jsonl"],
    "`seekline: error: corpus …: all N files checked are binary …`": [
        "seekline: error: corpus /d: all 3 files checked are binary (a NUL byte in the first 8 KiB)"],
    "`seekline: error: FILE:LINE: malformed JSON … (ingest.strict)` / `invalid UTF-8 … "
    "(ingest.on_invalid_utf8=fail)` / `not a readable Parquet file`": [
        "seekline: error: /d/a.parquet: not a readable Parquet file (Parquet magic bytes not found)",
        "seekline: error: /d/a.jsonl:3: malformed JSON (ingest.strict)"],
    "`seekline: error: data validation found N anomalies … delete … frozen`": [
        "seekline: error: data validation found 2 anomalies in the train split; delete outputs/tiny/pipeline/frozen"],
    "`seekline runs` shows ABANDONED": ["  20261130-101010  ABANDONED  3m"],
    "`seekline: error: no runs of pipeline 'X' in …; pipelines with runs there: …`": [
        "seekline: error: no runs of pipeline 'x' in outputs/tiny; pipelines with runs there: seekline"],
    "`--set …: expected a number, got a boolean`": [
        "seekline: error: --set ingest.max_files=yes: expected a number, got a boolean"],
    "`not valid YAML: line N, column C: duplicate key 'x'` / `the config file is empty` / `not UTF-8 text`": [
        "seekline: error: my.yaml: not valid YAML: line 4, column 1: duplicate key 'ingest'"],
    "`seekline: error: unknown preset …` / `config file not found` / `override …`": [
        "seekline: error: unknown preset 'nosuch'; available: cluster, small, tiny"],
    "`seekline: error: …: not an HF-layout model folder …` / `no tokenizer.json` / `no model.safetensors`": [
        "seekline: error: /m: not an HF-layout model folder (no config.json)"],
    "`seekline: error: …: tensor '…' …` / `no tensor` / `is cut off` / `FP8 scale`": [
        "seekline: error: /m/model.safetensors: tensor 'lm_head.weight' is cut off: 10 of 4096 bytes"],
    "`seekline: error: teacher … vocab_size … != student …` / tokenizers differ": [
        "seekline: error: teacher vocab_size 4096 != student vocab_size 8192: distillation compares "
        "distributions over the same vocabulary"],
    "`seekline: error: … exceed(s) the model's context …`": [
        "seekline: error: grpo.max_prompt_tokens (900) + max_completion_tokens (300) exceed the model's context "
        "(1024 tokens)"],
    "`seekline: error: FILE:LINE: …` (a bad line in a JSONL file)": [
        "seekline: error: tasks.jsonl:12: field 'task_id': duplicate 'a' (first on line 3)"],
    "`seekline: error: FILE: no such file` / `not found` / `does not exist` / `cannot read`": [
        "seekline: error: samples.jsonl: no such file"],
    "`seekline: error: FILE: missing field …` / `field '…' must be …`": [
        "seekline: error: problems.jsonl: missing field 'prompt' (have: task_id)"],
    "`seekline: error: no model to fine-tune / optimise (set ….init …)`": [
        "seekline: error: sft: no model to fine-tune (set sft.init or run after pretraining)"],
    "`seekline: error: KEY: must be …, got …` (an invalid setting)": [
        "seekline: error: SandboxPool.workers: must be >= 1, got 0"],
    "`seekline: error: teacher … (server_error; N attempts)` / `timeout` / `connection`": [
        "seekline: error: teacher at http://t:8000/v1: HTTP 503: busy (server_error; 7 attempts)",
        "seekline: error: teacher at http://t:8000/v1: cannot connect (refused) (connection; 1 attempt)"],
    "`seekline: error: … tokenizer … / chat template …`": [
        "seekline: error: /m/tokenizer.json: cannot load the tokenizer (EOF while parsing)"],
    "`seekline: error: … (data from another pack config?)` / rows or checkpoints do not match": [
        "seekline: error: /d/Split-train: rows have 512 tokens but the run expects seq_len 256 (data from another "
        "pack config?)"],
    "`seekline: error: … empty split` / `no documents` / `fewer than …` (not enough data)": [
        "seekline: error: ingest produced an empty eval split (3 documents kept of 3 read, eval_percent=5); add "
        "files or change ingest.eval_percent / ingest.filters"],
    CATCH_ALL: ["seekline: error: something new"],
    "a component failed, the console shows only one line": [
        "ERROR:absl:Execution 42 failed."],
}


def test_every_doc_row_has_a_pattern_and_every_pattern_a_doc_row():
    doc = doc_rows()
    symptoms = [p.symptom for p in PATTERNS]
    assert len(symptoms) == len(set(symptoms)), "a symptom appears twice in PATTERNS"
    assert [s for s in doc if s not in symptoms] == [], "docs/troubleshooting.md rows without a pattern"
    assert [s for s in symptoms if s not in doc] == [], "patterns without a docs/troubleshooting.md row"
    for s in symptoms:
        cause, fix = doc[s]
        assert cause and fix, s
    # The doc table parses into as many rows as it has table lines (no row lost to a stray `|`).
    lines = [x for x in (REPO / "docs/troubleshooting.md").read_text().splitlines()
             if x.startswith("| ") and not x.startswith(("| symptom", "| ---"))]
    assert len(doc) == len(lines)


def test_rows_without_a_log_signature_are_only_the_two_known_ones():
    # A row may lack a regex only when nothing in a log shows it; keep that list short and explicit.
    assert sorted(p.symptom for p in PATTERNS if p.regex is None) == [
        "`make` reinstalls on every call", "a second `make run` re-ran ingest"]


@pytest.mark.parametrize("symptom", [p.symptom for p in PATTERNS if p.regex])
def test_each_pattern_matches_its_sample_lines_first(symptom):
    assert symptom in SAMPLES, f"no sample log line for {symptom!r}"
    for line in SAMPLES[symptom]:
        got = match_line(line)
        assert got is not None and got.symptom == symptom, (line, got and got.symptom)


@pytest.mark.parametrize("line", [
    "INFO:absl:Component ingest is finished.",
    "step 40 loss 5.21 lr 3e-4 tokens/s 12000",
    "the nan_count metric is 0",
    "Successfully installed tfx-1.16.0",
])
def test_ordinary_log_lines_match_nothing(line):
    assert match_line(line) is None


def raise_sites() -> list[tuple[str, str]]:
    """(file:line, message with every {} as X) of every user error raised in the project's code."""
    out = []
    for f in sorted(REPO.rglob("*.py")):
        rel = f.relative_to(REPO).as_posix()
        if rel.startswith((".", "tests/", "outputs/", "build/")) or rel.endswith("_test.py") or "/." in rel:
            continue
        for n in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if not (isinstance(n, ast.Raise) and isinstance(n.exc, ast.Call) and n.exc.args):
                continue
            fn = n.exc.func
            if getattr(fn, "id", getattr(fn, "attr", None)) not in USER_ERRORS:
                continue
            a = n.exc.args[0]
            if isinstance(a, ast.Constant) and isinstance(a.value, str):
                msg = a.value
            elif isinstance(a, ast.JoinedStr):
                msg = "".join(v.value if isinstance(v, ast.Constant) else "X" for v in a.values)
            else:
                msg = "X"  # a message built elsewhere (a variable): only the catch-all can know it
            out.append((f"{rel}:{n.lineno}", msg))
    return out


def test_every_user_error_seekline_raises_is_diagnosed():
    sites = raise_sites()
    assert len(sites) > 300  # the scan found the code (395 raise sites when this was written)
    generic = []
    for where, msg in sites:
        line = "seekline: error: " + msg
        p = match_line(line)
        assert p is not None, (where, line)
        if p.symptom == CATCH_ALL:
            generic.append((where, msg))
    # Every message with its own wording lands on a row with a specific cause and fix. Only the
    # ones whose text is all a variable (`{e}`, `{path}: {e}`: a library's message passed on)
    # may fall to the catch-all. A new family of errors fails here: add a row and a pattern.
    dynamic = [(w, m) for w, m in generic if re.fullmatch(r"(.*: )?X", m)]
    assert [g for g in generic if g not in dynamic] == []
    assert len(dynamic) <= 0.05 * len(sites), dynamic


def test_real_cli_error_is_diagnosed(tmp_path, capsys):
    # An actual one-line error from the CLI (not a hand-written copy) goes through diagnose.
    assert cli.main(["runs", "-c", "no-such-preset"]) == 2
    err = capsys.readouterr().err
    log = tmp_path / "console.log"
    log.write_text("starting\n" + err)
    (m,) = diagnose_file(str(log))
    assert m.line_no == 2 and m.symptom == "`seekline: error: unknown preset …` / `config file not found` / `override …`"


def test_diagnose_command_prints_line_numbers_cause_and_fix(tmp_path, capsys):
    log = tmp_path / "run.log"
    log.write_text("\n".join([
        "INFO:absl:Running pipeline",
        SAMPLES["a TFJob stays Pending: `0/N nodes are available: … Insufficient nvidia.com/gpu`"][0],
        "INFO:absl:step 3",
        SAMPLES["`N non-finite steps in a row … loss/gradients are NaN/Inf`"][0],
    ]) + "\n")
    assert cli.main(["diagnose", str(log)]) == 1
    out = capsys.readouterr().out
    doc = doc_rows()
    nan = "`N non-finite steps in a row … loss/gradients are NaN/Inf`"
    assert "line 2:" in out and "line 4:" in out
    assert doc[nan][1] in out  # the fix, verbatim from the doc
    assert cli.main(["diagnose", "--json", str(log)]) == 1
    got = json.loads(capsys.readouterr().out)
    assert [m["line"] for m in got] == [2, 4] and got[1]["fix"] == doc[nan][1]


def test_clean_log_exits_0_and_missing_log_is_a_one_line_error(tmp_path, capsys):
    log = tmp_path / "ok.log"
    log.write_text("all good\n")
    assert cli.main(["diagnose", str(log)]) == 0
    assert "no known failure pattern" in capsys.readouterr().out
    assert cli.main(["diagnose", str(tmp_path / "nope.log")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"seekline: error: {tmp_path / 'nope.log'}: no such log file"]


def test_many_matches_of_one_symptom_are_grouped(tmp_path):
    lines = ["Killed"] * 5
    ms = diagnose_lines(lines)
    assert [m.line_no for m in ms] == [1, 2, 3, 4, 5]
    from pipelines.diagnose import render
    text = render(ms, "x.log")
    assert text.count("\n  line ") == 3 and "(+2 more)" in text
