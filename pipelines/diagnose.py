"""`seekline diagnose LOGFILE`: known failure patterns in a log → cause and fix.

The one table of patterns is PATTERNS below. Each row names a row of docs/troubleshooting.md by
its exact `symptom` cell; the cause and fix printed are read from that doc, so the two cannot
drift (diagnose_test.py also checks that every doc row has a pattern). Patterns are tried in
order and the first match wins per log line, so specific rows come before the families of
`seekline: error:` messages (bad file, bad field, bad config value …) and the catch-all last.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from common.errors import InputDataError, UserError

DOC = Path(__file__).resolve().parent.parent / "docs" / "troubleshooting.md"
MAX_LINE = 4000  # longer log lines (base64 blobs, dumped tensors) are cut before matching


@dataclass(frozen=True)
class Pattern:
    symptom: str          # the symptom cell of docs/troubleshooting.md, verbatim
    regex: str | None     # None: the row has no signature in a log (diagnose cannot see it)


E = r"seekline: error: "  # every user error seekline prints starts with this (pipelines/cli.py)

PATTERNS: tuple[Pattern, ...] = (
    # -- environment / setup --------------------------------------------------------------
    Pattern("`error: python3.10 not found` from `make setup`", r"python3\.10 not found"),
    Pattern("`make` reinstalls on every call", None),
    Pattern("TF prints `Unable to register cuDNN factory …`", r"Unable to register cu(DNN|FFT|BLAS) factory"),
    Pattern("FutureWarnings (`google.api_core … non-supported Python version`) on the console",
            r"FutureWarning.*(non-supported Python version|google\.api_core)|google\.api_core.*FutureWarning"),
    Pattern("`make bench` fails in `setup-ref`", r"python3\.11 not found"),
    Pattern("`seekline: error: SEEKLINE_OPS=on but the custom ops cannot be used: …`",
            r"SEEKLINE_OPS=on but the custom ops cannot be used"),
    Pattern("`seekline custom ops not used (pure-TF fallback): …` warning",
            r"seekline custom ops not used \(pure-TF fallback\)"),
    Pattern("`error: custom ops not built: …` from `make ops`", r"custom ops not built: "),
    # -- resources / training -------------------------------------------------------------
    Pattern("`ResourceExhaustedError: OOM when allocating tensor …` / `Killed` (exit 137)",
            r"ResourceExhausted|OOM when allocating|out of memory|OOMKilled|exit (code|status) 137|"
            r"^Killed$|Out of memory: Killed process"),
    Pattern("`N non-finite steps in a row … loss/gradients are NaN/Inf`",
            r"non-finite steps in a row|loss/gradients are NaN"),
    Pattern("a TFJob stays Pending: `0/N nodes are available: … Insufficient nvidia.com/gpu`",
            r"Insufficient nvidia\.com/gpu"),
    Pattern("`seekline: error: TFJob … failed` / `did not start within …`",
            r"TFJob \S+ .*(failed|did not start|never started|timed out|was deleted)"),
    Pattern("`seekline: error: … trainer.workers > 1 …` (a multi-node step cannot launch its TFJob)",
            r"trainer\.workers (>|is) \S+"),
    Pattern("`ImagePullBackOff` / `ErrImagePull` on a pipeline or TFJob pod",
            r"ImagePullBackOff|ErrImagePull|Failed to pull image"),
    Pattern("`could not select device driver \"\" with capabilities: [[gpu]]` / "
            "`Could not load dynamic library 'libcudart`", r"could not select device driver|"
            r"Could not load dynamic library 'lib(cudart|cudnn|cublas)|Cannot dlopen some GPU libraries"),
    Pattern("Beam: `Error received from SDK harness` / `BrokenProcessPool` / a worker `Traceback`",
            r"Error received from SDK harness|BrokenProcessPool|Python sdk harness failed|"
            r"SDK worker .* (died|failed)|apache_beam.*RuntimeError"),
    Pattern("`sandbox: neither bubblewrap nor unprivileged user namespaces work here`",
            r"neither bubblewrap nor unprivileged user namespaces|sandbox (setup|zygote) failed"),
    Pattern("teacher `HTTP 429` / `rate_limited` in the trajectory report",
            r"HTTP 429|rate_limited|Too Many Requests|RateLimitError"),
    Pattern("teacher `HTTP 401` / `the environment variable … (the API key) is not set`",
            r"teacher .* the environment variable \S+ \(the API key\) is not set|HTTP 40[13]: .*check the API key"),
    Pattern("`seekline: error: teacher … (server_error; N attempts)` / `timeout` / `connection`",
            E + r".*\((server_error|timeout|connection|malformed|invalid_response|client_error|\w+); \w+ attempt\w*\)"),
    Pattern("`agent teacher …: success rate … is below agent.min_success_rate`",
            r"is below agent\.min_success_rate"),
    # -- Kubeflow -------------------------------------------------------------------------
    Pattern("Kubeflow Pipelines answered `401` / `403` (`Unauthorized`, `Forbidden`)",
            r"Kubeflow Pipelines (refused|answered) .*\b40[13]\b|\b40[13]\b.*\b(Unauthorized|Forbidden)\b|"
            r"Kubeflow Pipelines at \S+ answered 40[13]"),
    Pattern("`seekline: error: cannot reach Kubeflow Pipelines at …`",
            r"cannot reach Kubeflow Pipelines at|KFP_HOST is not set|KFP_HOST .* must start with http|"
            r"Kubeflow Pipelines (at \S+ answered|refused to)|was uploaded but has no version"),
    Pattern("`seekline: error: cron '…' has 5 fields; KFP needs 6`", r"cron .* has \d+ fields"),
    Pattern("`seekline: error: FILE: not a KFP PipelineSpec (missing …)` from `deploy --package`",
            r"not a KFP PipelineSpec|not a pipeline package"),
    Pattern("`seekline compile` prints `warning: kubeflow.pipeline_root is a placeholder (gs://YOUR-BUCKET/…)`",
            r"is a placeholder \("),
    Pattern("`seekline compile` prints `warning: validate.frozen_dir resolves to minio://…`",
            r"frozen_dir resolves to (minio|s3)://"),
    Pattern("`seekline compile` / `doctor` warns `X asks for N GPU(s) but runs IMAGE, which looks CPU-only`",
            r"asks for \d+ GPU\(s\) but runs \S+, which looks CPU-only"),
    Pattern("`seekline compile` prints `warning: export.push_dir resolves to minio://…`",
            r"export\.push_dir resolves to (minio|s3)://"),
    # -- data ----------------------------------------------------------------------------
    Pattern("`seekline: error: corpus directory not found: …`", r"corpus directory not found"),
    Pattern("`seekline: error: corpus DIR: none of its N files match include=[…]; it has 120 .jsonl, …`",
            r"none of its \S+ files match include"),
    Pattern("`seekline: error: corpus …: all N files checked are binary …`", r"files checked are binary"),
    Pattern("`seekline: error: FILE:LINE: malformed JSON … (ingest.strict)` / `invalid UTF-8 … "
            "(ingest.on_invalid_utf8=fail)` / `not a readable Parquet file`",
            r"\(ingest\.strict\)|ingest\.on_invalid_utf8=fail|not a readable Parquet file|cannot read ingest shard|"
            r"not an ingest document"),
    Pattern("`seekline: error: data validation found N anomalies … delete … frozen`",
            r"data validation found \d+ anomal"),
    # -- runs / config -------------------------------------------------------------------
    Pattern("`seekline runs` shows ABANDONED", r"(?-i:\bABANDONED\b)"),
    Pattern("`seekline: error: no runs of pipeline 'X' in …; pipelines with runs there: …`",
            r"no runs of pipeline|no ML Metadata store at|no local pipeline runs here yet|has no \S+ step yet|"
            r"no blessed model yet|no finished \S+ execution"),
    Pattern("`--set …: expected a number, got a boolean`", r"expected a number, got a boolean"),
    Pattern("`not valid YAML: line N, column C: duplicate key 'x'` / `the config file is empty` / "
            "`not UTF-8 text`", r"not valid YAML|the config file is empty|save the config as UTF-8|"
            r"top level must be a mapping of sections"),
    Pattern("`seekline: error: unknown preset …` / `config file not found` / `override …`",
            r"unknown preset|config file not found|override .*: (empty key|.* is not a section)|"
            r"\(from (--set|configs/)|unknown key|extra_forbidden"),
    Pattern("a second `make run` re-ran ingest", None),
    # -- families of seekline's own one-line errors (docs/troubleshooting.md#seekline-errors) -
    Pattern("`seekline: error: …: not an HF-layout model folder …` / `no tokenizer.json` / "
            "`no model.safetensors`", E + r".*(not an HF-layout|not a seekline model folder|no tokenizer\.json|"
            r"no model\.safetensors|checkpoint directory not found|no config\.json|not a PEFT adapter folder)"),
    Pattern("`seekline: error: …: tensor '…' …` / `no tensor` / `is cut off` / `FP8 scale`",
            E + r".*(tensor '|no tensor|LoRA tensors|is cut off|FP8 scale|shard '|invalid index json|"
            r"changed since it was opened|unreadable config|config field|unsupported RoPE|rope type|model_type)"),
    Pattern("`seekline: error: teacher … vocab_size … != student …` / tokenizers differ",
            E + r".*((teacher|student).*(vocab_size|tokenizer).*(differ|!=)|differs from the teacher|"
            r"another tokeni[sz]er|teacher_vocab_size|outside the (model's )?vocab|packed with|teacher_temperature|teacher_topk|"
            r"teacher top-k|offline teacher|online teacher)"),
    Pattern("`seekline: error: … tokenizer … / chat template …`",
            E + r".*(tokenizer|chat template|chat_template|control token|straddles the edge|round trip is lossy)"),
    Pattern("`seekline: error: … (data from another pack config?)` / rows or checkpoints do not match",
            E + r".*(pack config|seq_len|rows_sha256|differs from the same row|shards \S+ but|more rows than|"
            r"different model config|already exists and was not written|the batch has no|cannot restore this checkpoint|not finite log-prob|with_mtp|no MTP module|"
            r"adapter|different base model|LoRA|disagrees with)"),
    Pattern("`seekline: error: … exceed(s) the model's context …`",
            E + r".*(exceeds? (the model's|the mod|the row length)|fills the model's context|leaves no room|"
            r"the model's context)"),
    Pattern("`seekline: error: FILE:LINE: …` (a bad line in a JSONL file)",
            E + r"\S+:\d+: |" + E + r".*(unreadable .*line|expected a JSON object|invalid JSON|"
            r"duplicate .*first on line)"),
    Pattern("`seekline: error: FILE: no such file` / `not found` / `does not exist` / `cannot read`",
            E + r".*(no such (\w+ )?(file|folder)|is missing|not found|does not exist|no such \w+ folder|no such config file|cannot read|"
            r"matches no file|is a (directory|folder|file)\b|not writable|not UTF-8 text|no TFRecord shards|"
            r"empty shard|no Split-|not a packed data artifact|must be a folder)"),
    Pattern("`seekline: error: … empty split` / `no documents` / `fewer than …` (not enough data)",
            E + r".*(empty \S+ split|\bis empty\b|the file is empty|no (\S+ )?documents?\b|no held-out|"
            r"no next-token targets|fewer than|only \S+ distinct|asked for, \S+ has|no real train|"
            r"every training task's prompt is longer|no (tasks|prompts|samples|problems|rows|\S+ examples)\b|"
            r"has no rows|no non-blank lines|none of its \S+ non-blank lines|no SFT data files)"),
    Pattern("`seekline: error: FILE: missing field …` / `field '…' must be …`",
            E + r".*(missing field|field '[^']+'|field \S+ (must|is|has)|required config field|"
            r"has no feature|column \S+ is|expected keys|no (problems|samples|documents|rows)\b|has no rows|"
            r"needs string fields)"),
    Pattern("`seekline: error: no model to fine-tune / optimise (set ….init …)`",
            E + r".*(no model to|is not blessed|already context-extended|already has LoRA|has no LoRA|"
            r"no teacher:|needs a teacher|needs both --teacher-url)"),
    Pattern("`seekline: error: KEY: must be …, got …` (an invalid setting)",
            E + r".*(must be|must start|is not one of|needs? |got |unknown |only \d+ is supported|"
            r"not (a )?valid|at least|>= ?\d|> ?\d|setting |--[a-z]|give one|pass one|not both|takes no|"
            r"must differ|must look like|listed twice|has both|mixes|not a multiple|no column|no feature|"
            r"no packed feature|cannot build|programs but)"),
    Pattern("any other `seekline: error: …` line", E),
    Pattern("a component failed, the console shows only one line",
            r"Component \S+ failed|Execution \d+ failed|component .* failed"),
)


@dataclass(frozen=True)
class Match:
    line_no: int
    line: str
    symptom: str
    cause: str
    fix: str

    def as_dict(self) -> dict:
        return {"line": self.line_no, "text": self.line, "symptom": self.symptom, "cause": self.cause,
                "fix": self.fix}


def doc_rows(path: Path = DOC) -> dict[str, tuple[str, str]]:
    """symptom → (cause, fix) from the troubleshooting table (cells split on unescaped `|`)."""
    rows = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("| ") or line.startswith(("| symptom", "| ---")):
            continue
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if len(cells) == 3:
            rows[cells[0]] = (cells[1], cells[2])
    return rows


_COMPILED = [(p, re.compile(p.regex, re.IGNORECASE)) for p in PATTERNS if p.regex]


def match_line(line: str) -> Pattern | None:
    line = line[:MAX_LINE]
    return next((p for p, rx in _COMPILED if rx.search(line)), None)


def diagnose_lines(lines, doc: dict[str, tuple[str, str]] | None = None) -> list[Match]:
    doc = doc if doc is not None else doc_rows()
    out = []
    for i, raw in enumerate(lines, 1):
        line = raw.rstrip("\n")
        p = match_line(line)
        if p is not None:
            cause, fix = doc[p.symptom]
            out.append(Match(i, line.strip()[:300], p.symptom, cause, fix))
    return out


def diagnose_file(path: str) -> list[Match]:
    p = Path(path)
    if not p.is_file():
        raise InputDataError(f"{path}: no such log file")
    if not DOC.is_file():
        raise UserError(f"{DOC}: the troubleshooting table diagnose reads is missing (a source checkout has it)")
    with p.open(encoding="utf-8", errors="replace") as f:
        return diagnose_lines(f)


def render(matches: list[Match], path: str, max_per_symptom: int = 3) -> str:
    """Grouped by symptom in order of first appearance; at most a few line numbers each."""
    if not matches:
        return f"{path}: no known failure pattern (docs/troubleshooting.md lists the known ones)"
    groups: dict[str, list[Match]] = {}
    for m in matches:
        groups.setdefault(m.symptom, []).append(m)
    out = [f"{path}: {len(matches)} line(s) match {len(groups)} known problem(s)"]
    for symptom, ms in groups.items():
        more = f" (+{len(ms) - max_per_symptom} more)" if len(ms) > max_per_symptom else ""
        out.append("")
        out.append(f"{symptom}")
        for m in ms[:max_per_symptom]:
            out.append(f"  line {m.line_no}: {m.line}")
        if more:
            out.append(f"  {more.strip()}")
        out.append(f"  cause: {ms[0].cause}")
        out.append(f"  fix:   {ms[0].fix}")
    return "\n".join(out)
