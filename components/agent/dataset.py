"""Agent trajectories → token rows for structured agent distillation and process-step supervision.

One trajectory record (the shared JSONL contract, docs/agent.md) becomes one row of `seq_len`
tokens: the task prompt (`prompt_fn(record)`, default the task's "prompt" and a newline; no loss),
then the trajectory text. Character spans map to tokens through the HF tokenizer's offsets: a
token counts in a mask when its character range overlaps a span of that kind (a token straddling
a span edge counts; zero-width tokens never do). Features (all int64, `seq_len` long, padded):

  input_ids, segment_ids (1 on tokens, 0 on padding), positions (0, 1, …; 0 on padding)
  reason_mask        tokens overlapping a REASON span (with format_targets, the default, also the
                     "Thought:" label before it: with_format_targets)
  action_mask        tokens overlapping an ACT span (with format_targets also "Action:" before it
                     and the "\nObservation:" after it, which ends the teacher's turn)
  loss_mask          reason_mask OR action_mask — what plain SFT / distillation trains on
  Observation tokens get no loss: a token overlapping an OBSERVATION span is 0 in every mask,
  whatever else it overlaps (the loop wrote it, not the teacher).
Process supervision (components/agent/process.py; left out when process_supervision is False):
  tool_name_mask         tokens overlapping the "name" value (inside the quotes) of an Action
                         whose tool is in the registry
  tool_name_ids          the registry index (position in `tool_names`) of that tool on those
                         tokens, -1 elsewhere — what a tool-selection accuracy is scored against
  mask_valid_json_tokens tokens overlapping the "arguments" object text of an Action whose JSON
                         parses, names a registry tool and has an object as arguments
  gold_json_text_ids     input_ids on those tokens, -1 elsewhere (the JSON-validity CE's labels)
  integration_mask       tokens overlapping an integration span: a later Thought / the final
                         answer reusing new content of an Observation (rule: process.py)
  tool_result_fields     1 + the 0-based index of the Observation that token reuses, 0 elsewhere
Feature names and fill values are training/agent_losses.py's (the losses read them).

Rows longer than `seq_len` are cut at seq_len tokens (counted as truncated); a row left with no
loss target is dropped (counted). Records whose text / spans are unusable are skipped with a
reason. `build_agent_dataset_files` writes the split folders training/data.py opens (GZIP
TFRecord shards, Split-train / Split-eval, config.json with seq_len), plus report.json.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from common.errors import ConfigError, InputDataError
from components.agent.process import DEFAULT_TOOLS, extract_process_spans
from components.agent.segment import ACT, LABELS, REASON, segment, validate_spans
from training import agent_losses as al

BASE_FEATURES = ("input_ids", "segment_ids", "positions", "loss_mask")
MAX_REASONS = 50  # skipped-record reasons kept in the report


def default_prompt(record: dict) -> str:
    """The context before the trajectory: the task's prompt and a newline ("" without one)."""
    task = record.get("task")
    prompt = task.get("prompt") if isinstance(task, dict) else None
    return f"{prompt.rstrip()}\n" if isinstance(prompt, str) and prompt.strip() else ""


def with_format_targets(spans: Sequence, n_chars: int) -> list[list]:
    """spans plus the characters no span covers (the labels "Thought:", "Action:", the line breaks
    and "Observation:"), each gap given to the step it delimits, so a student learns to write the
    format and to end its turn, not only the contents:
      a gap followed by a REASON or ACT span goes to that span ("Thought: ", "\\nAction: ");
      a gap followed by an OBSERVATION span, or at the end, goes to the span before it when that
      is REASON or ACT ("\\nObservation: " after an Action: writing it is how a turn ends — the
      agent loop stops the teacher there), else to nothing (the line break after an Observation).
    Observation contents stay without a target."""
    spans = sorted((list(sp) for sp in spans), key=lambda sp: sp[0])
    out, pos, prev = list(spans), 0, None
    for i in range(len(spans) + 1):
        start = spans[i][0] if i < len(spans) else n_chars
        nxt = spans[i][2] if i < len(spans) else None
        if start > pos:
            owner = nxt if nxt in (REASON, ACT) else (prev if prev in (REASON, ACT) else None)
            if owner is not None:
                out.append([pos, start, owner])
        if i < len(spans):
            pos, prev = max(pos, spans[i][1]), spans[i][2]
    return sorted(out, key=lambda sp: sp[0])


def _char_values(n: int, spans: Iterable[tuple[int, int, int]]) -> np.ndarray:
    """(n,) int64: each span's value on its characters, 0 elsewhere (later spans overwrite)."""
    v = np.zeros(n, np.int64)
    for a, b, val in spans:
        v[a:b] = val
    return v


def token_values(char_vals: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(N,) the value of the first marked character inside each token's [start, end); 0 when the
    token covers none (or is zero-width). offsets (N, 2) character offsets."""
    marked = np.flatnonzero(char_vals)                                      # (M,) sorted positions
    if marked.size == 0 or offsets.size == 0:
        return np.zeros(len(offsets), np.int64)
    starts, ends = offsets[:, 0], offsets[:, 1]
    j = np.searchsorted(marked, starts)                                     # first marked >= start
    hit = (j < marked.size) & (marked[np.minimum(j, marked.size - 1)] < ends)
    return np.where(hit, char_vals[marked[np.minimum(j, marked.size - 1)]], 0)


def _encode(tokenizer, text: str) -> tuple[np.ndarray, np.ndarray]:
    enc = tokenizer.encode(text, add_special_tokens=False)
    ids = np.asarray(enc.ids, np.int64)                                     # (N,)
    offsets = np.asarray(enc.offsets, np.int64).reshape(-1, 2)              # (N, 2) characters
    return ids, offsets


class _Report:
    def __init__(self):
        self.c = {"records": 0, "rows": 0, "skipped": 0, "truncated": 0, "no_targets": 0, "tokens": 0,
                  "reason_tokens": 0, "action_tokens": 0, "tool_name_tokens": 0, "json_tokens": 0,
                  "integration_tokens": 0, "actions": 0, "invalid_json_actions": 0, "unknown_tool_actions": 0}
        self.reasons: list[str] = []

    def skip(self, why: str) -> None:
        self.c["skipped"] += 1
        if len(self.reasons) < MAX_REASONS:
            self.reasons.append(why)

    def to_dict(self) -> dict:
        return {**self.c, "skipped_reasons": list(self.reasons)}


def _row(record: dict, tokenizer, seq_len: int, pad_id: int, process_supervision: bool,
         segmenter: Callable | None, tool_names: Sequence[str], prompt_fn: Callable, rep: _Report,
         format_targets: bool = True) -> dict | None:
    where = f"record {record.get('id', '?')}"
    text = record.get("text")
    if not isinstance(text, str) or not text:
        rep.skip(f"{where}: no 'text' string")
        return None
    spans = record.get("spans")
    if spans is None:
        if segmenter is None:
            rep.skip(f"{where}: no 'spans' and no segmenter to compute them")
            return None
        spans = [list(s) for s in segmenter(text)]
    bad = validate_spans(spans, len(text))
    if bad:
        rep.skip(f"{where}: {bad}")
        return None
    prefix = prompt_fn(record)
    off = len(prefix)
    ids, offsets = _encode(tokenizer, prefix + text)
    n_chars = off + len(text)
    targets = with_format_targets(spans, len(text)) if format_targets else spans
    kind = {lab: _char_values(n_chars, [(off + a, off + b, 1) for a, b, la in targets if la == lab]) for lab in LABELS}
    tok = {lab: token_values(v, offsets) > 0 for lab, v in kind.items()}
    keep = ~tok["OBSERVATION"]                                              # (N,) teacher-written tokens
    feats = {al.REASON_MASK: tok["REASON"] & keep, al.ACTION_MASK: tok["ACT"] & keep}
    if process_supervision:
        ps = extract_process_spans(text, tool_names, spans=spans)
        name_idx = token_values(_char_values(n_chars, [(off + a, off + b, i + 1) for a, b, i in ps.tool_names]),
                                offsets) * keep                             # 1 + registry index
        json_m = (token_values(_char_values(n_chars, [(off + a, off + b, 1) for a, b in ps.arguments]), offsets) > 0) & keep
        obs_idx = token_values(_char_values(n_chars, [(off + a, off + b, k + 1) for a, b, k in ps.integration]),
                               offsets) * keep                              # 1 + observation index
        feats.update({al.TOOL_NAME_MASK: name_idx > 0, al.TOOL_NAME_IDS: name_idx - 1,
                      al.JSON_MASK: json_m, al.GOLD_JSON_IDS: np.where(json_m, ids, -1),
                      al.INTEGRATION_MASK: obs_idx > 0, al.TOOL_RESULT_FIELDS: obs_idx})
        rep.c["actions"] += ps.actions
        rep.c["invalid_json_actions"] += ps.invalid_json
        rep.c["unknown_tool_actions"] += ps.unknown_tools
    if len(ids) > seq_len:
        rep.c["truncated"] += 1
    n = min(len(ids), seq_len)
    loss = (feats[al.REASON_MASK] | feats[al.ACTION_MASK])[:n]
    if not loss[1:].any():                                                  # token 0 is never a target
        rep.c["no_targets"] += 1
        return None
    row = {"input_ids": np.full(seq_len, pad_id, np.int64), "segment_ids": np.zeros(seq_len, np.int64),
           "positions": np.zeros(seq_len, np.int64), "loss_mask": np.zeros(seq_len, np.int64)}
    row["input_ids"][:n] = ids[:n]
    row["segment_ids"][:n] = 1
    row["positions"][:n] = np.arange(n)
    row["loss_mask"][:n] = loss
    for k, v in feats.items():
        out = np.full(seq_len, al.FEATURE_FILL[k], np.int64)
        out[:n] = np.asarray(v, np.int64)[:n]
        row[k] = out
    rep.c["rows"] += 1
    rep.c["tokens"] += n
    for k, name in ((al.REASON_MASK, "reason_tokens"), (al.ACTION_MASK, "action_tokens"),
                    (al.TOOL_NAME_MASK, "tool_name_tokens"), (al.JSON_MASK, "json_tokens"),
                    (al.INTEGRATION_MASK, "integration_tokens")):
        if k in row:
            rep.c[name] += int(row[k].sum())
    return row


def build_agent_dataset(records: Iterable[dict], tokenizer, *, seq_len: int, process_supervision: bool = True,
                        segmenter: Callable[[str], Sequence] | None = None, tool_names: Sequence[str] = DEFAULT_TOOLS,
                        pad_id: int = 0, prompt_fn: Callable[[dict], str] = default_prompt,
                        format_targets: bool = True) -> tuple[list[dict], dict]:
    """(rows, report): one row {feature: (seq_len,) int64} per usable trajectory record, in order.
    format_targets: the label / line-break characters between spans are targets of the step they
    delimit (with_format_targets); off = the masks are exactly the spans' tokens.

    tokenizer: a `tokenizers.Tokenizer` (offsets are taken from its encoding). Records use their
    "spans" when present, else `segmenter(text)`; a record with neither is skipped (counted)."""
    if seq_len < 2:
        raise ConfigError(f"agent dataset seq_len: must be at least 2, got {seq_len}")
    rep = _Report()
    rows = []
    for rec in records:
        rep.c["records"] += 1
        if not isinstance(rec, dict):
            rep.skip(f"record #{rep.c['records']}: not a JSON object")
            continue
        row = _row(rec, tokenizer, seq_len, pad_id, process_supervision, segmenter, tool_names, prompt_fn, rep,
                   format_targets)
        if row is not None:
            rows.append(row)
    return rows, rep.to_dict()


# ------------------------------------------------------------------ files (CLI)
def read_jsonl(path: str) -> tuple[list[dict], list[str]]:
    """(records, "FILE:LINE: reason" for every line that is not a JSON object); blank lines skipped."""
    from components.evaluate.jsonl import iter_json_lines

    records, bad = [], []
    for n, rec, err in iter_json_lines(path):
        if err:
            bad.append(f"{path}:{n}: {err}")
        elif not isinstance(rec, dict):
            bad.append(f"{path}:{n}: not a JSON object")
        else:
            rec.setdefault("id", f"{os.path.basename(path)}:{n}")
            records.append(rec)
    return records, bad


def _task_key(rec: dict) -> str:
    return str(rec.get("task_id", rec.get("id")))


def _is_eval(rec: dict, eval_fraction: float, seed: int) -> bool:
    key = f"{seed}:{_task_key(rec)}"  # all samples of a task share a split (no leakage)
    return int(hashlib.sha256(key.encode()).hexdigest()[:15], 16) / 16**15 < eval_fraction


def _example_bytes(row: dict) -> bytes:
    from tensorflow.core.example import example_pb2, feature_pb2

    feats = {k: feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=v.tolist())) for k, v in row.items()}
    return example_pb2.Example(features=feature_pb2.Features(feature=feats)).SerializeToString(deterministic=True)


def _pad_id(tokenizer_path: str, tok) -> int:
    import tensorflow as tf

    from components.tokenizer.tokenizer import META_FILE, load_meta

    folder = os.path.dirname(tokenizer_path) if tokenizer_path.endswith(".json") else tokenizer_path
    if tf.io.gfile.exists(os.path.join(folder, META_FILE)):
        return int(load_meta(folder)["pad_id"])
    for t in ("<|endoftext|>", "<|pad|>"):                  # padding is masked by segment_ids == 0
        if tok.token_to_id(t) is not None:
            return int(tok.token_to_id(t))
    return 0


def build_agent_dataset_files(in_jsonl: str, out_dir: str, *, tokenizer_path: str, seq_len: int,
                              process_supervision: bool = True, segmenter: Callable[[str], Sequence] | None = segment,
                              tool_names: Sequence[str] = DEFAULT_TOOLS, eval_fraction: float = 0.1, seed: int = 0,
                              require_success: bool = False, prompt_fn: Callable[[dict], str] = default_prompt,
                              rows_per_shard: int = 20_000, format_targets: bool = True) -> dict:
    """Trajectory JSONL → `out_dir` (Split-train, Split-eval, config.json, report.json); returns the
    report. Records without "spans" (the agent loop writes none) are segmented with `segmenter`
    (default components/agent/segment.segment). Splits by a hash of (seed, task_id) so all samples of a task land together; with
    eval_fraction > 0 and at least two tasks each split gets one. `require_success` keeps only
    records whose "success" is true. A local `out_dir` is staged and renamed into place whole."""
    from components.common import shards as sh
    from components.tokenizer.tokenizer import load

    if not 0.0 <= eval_fraction < 1.0:
        raise ConfigError(f"agent dataset eval_fraction: must be in [0, 1), got {eval_fraction}")
    tok = load(tokenizer_path)
    pad_id = _pad_id(tokenizer_path, tok)
    records, malformed = read_jsonl(in_jsonl)
    n_failed = 0
    if require_success:
        n_failed = sum(1 for r in records if r.get("success") is not True)
        records = [r for r in records if r.get("success") is True]
    is_eval = [_is_eval(r, eval_fraction, seed) for r in records]
    tasks = {_task_key(r) for r in records}
    if eval_fraction > 0 and len(tasks) >= 2 and (all(is_eval) or not any(is_eval)):
        # one split would be empty: move the (lexicographically) first task across
        to_eval = not any(is_eval)
        is_eval = [to_eval if _task_key(r) == min(tasks) else not to_eval for r in records]
    report: dict = {"seq_len": seq_len, "process_supervision": process_supervision, "tool_names": list(tool_names),
                    "malformed": {"count": len(malformed), "first": malformed[:MAX_REASONS]},
                    "not_successful_dropped": n_failed}
    rows_by_split = {}
    for split, want in (("train", False), ("eval", True)):
        rows, rep = build_agent_dataset([r for r, e in zip(records, is_eval, strict=True) if e == want], tok,
                                        seq_len=seq_len, process_supervision=process_supervision,
                                        segmenter=segmenter, tool_names=tool_names, pad_id=pad_id, prompt_fn=prompt_fn,
                                        format_targets=format_targets)
        report[split] = rep
        if not rows:
            first = (rep["skipped_reasons"] or malformed or ["no records"])[0]
            raise InputDataError(f"{in_jsonl}: agent {split} split has no rows ({rep['records']} records, "
                                 f"{rep['skipped']} skipped, {rep['no_targets']} without targets; first: {first})")
        rows_by_split[split] = rows
    rng = np.random.default_rng(seed)
    order = {"train": rng.permutation(len(rows_by_split["train"])), "eval": np.arange(len(rows_by_split["eval"]))}
    features = list(BASE_FEATURES) + list(al.SPAN_FEATURES) + (list(al.PROCESS_FEATURES) if process_supervision else [])
    config = {"seq_len": seq_len, "pad_id": pad_id, "process_supervision": process_supervision,
              "format_targets": format_targets,
              "tool_names": list(tool_names), "features": features, "seed": seed, "eval_fraction": eval_fraction,
              "tokenizer_path": tokenizer_path}

    def write(staging):
        for split, rows in rows_by_split.items():
            n_shards = max(1, -(-len(rows) // rows_per_shard))
            names = []
            for s in range(n_shards):
                name = sh.shard_name(s, n_shards)
                part = order[split][s * rows_per_shard:(s + 1) * rows_per_shard]
                sh.write_shard(os.path.join(staging, f"Split-{split}", name), (_example_bytes(rows[i]) for i in part))
                names.append(name)
            report[split]["shards"] = names
    sh.write_split_folder(out_dir, rows_by_split, write, report, config)
    return report


