"""Chat messages / completion text -> prompt token ids, and token ids -> text, for one model folder.

The templates are the ones training used (components/sft/chat_template.py; serving may not import
components, so the two layouts are written out again here and tests/test_serving_prompts.py checks
the ids against components' encoder on the same tokenizer):

  seekline  <|bos|>[<|system|>S<|end_of_turn|>]<|user|>U<|end_of_turn|>...<|assistant|>
  chatml    <|im_start|>system\\nS<|im_end|>\\n<|im_start|>user\\nU<|im_end|>\\n...<|im_start|>assistant\\n

The template comes from the folder's seekline_phase.json (`chat_template`, written by SFT / GRPO);
without one (`auto`), chatml when the tokenizer has <|im_start|>/<|im_end|>, seekline when it has the
seekline role tokens, else the chat endpoint joins the contents with blank lines (completion mode).
Content is encoded with special tokens recognised (so "<think>" is its token, as in training), and a
message whose text contains a template control token (a literal "<|user|>", "<|im_end|>") is refused:
it would forge a turn boundary.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

from tokenizers import Tokenizer

from common.errors import UserError
from serving.errors import bad_request

PHASE_FILE = "seekline_phase.json"
META_FILE = "tokenizer_meta.json"
QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
SEEKLINE_ROLES = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>", "tool": "<|tool|>"}
SEEKLINE_END, SEEKLINE_CALL, SEEKLINE_END_CALL = "<|end_of_turn|>", "<|tool_call|>", "<|/tool_call|>"
IM_START, IM_END, IM_EOT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"


@dataclass(frozen=True)
class Message:
    role: str                     # system | user | assistant | tool
    content: str
    tool_calls: tuple = ()        # ((name, arguments dict), ...) of an assistant turn


def _tool_call_json(name: str, arguments: dict) -> str:
    return '{"name": "' + name + '", "arguments": ' + json.dumps(arguments, ensure_ascii=False) + "}"


class PromptFormat:
    """Encoder / decoder of one model folder (tokenizer.json [+ tokenizer_meta.json, seekline_phase.json])."""

    def __init__(self, model_dir: str, eos_ids: Sequence[int] = (), bos_id: int | None = None):
        path = os.path.join(model_dir, "tokenizer.json")
        if not os.path.exists(path):
            raise UserError(f"{model_dir}: no tokenizer.json (serving needs the model's tokenizer beside it)")
        with open(path, encoding="utf-8") as f:
            raw = f.read()
        # Two copies: prompt text for /v1/completions encodes special-token strings as text (as the
        # project's tokenizer does for corpus text); chat templates map control strings to ids.
        self.text_tok = Tokenizer.from_str(raw)
        self.text_tok.encode_special_tokens = True
        self.tok = Tokenizer.from_str(raw)
        self.tok.encode_special_tokens = False
        meta = {}
        if os.path.exists(os.path.join(model_dir, META_FILE)):
            with open(os.path.join(model_dir, META_FILE), encoding="utf-8") as f:
                meta = json.load(f)
        self.bos_id = meta.get("bos_id", bos_id)
        self.eos_ids = tuple(sorted({int(i) for i in eos_ids} | ({int(meta["eos_id"])} if "eos_id" in meta else set())))
        pad = self.tok.token_to_id("<|pad|>")
        self.pad_id = meta.get("pad_id", 0 if pad is None else pad)
        phase = {}
        if os.path.exists(os.path.join(model_dir, PHASE_FILE)):
            with open(os.path.join(model_dir, PHASE_FILE), encoding="utf-8") as f:
                phase = json.load(f)
        self.template = self._pick_template(phase.get("chat_template") or "auto", model_dir)
        if self.template == "seekline":
            bos = self.tok.id_to_token(self.bos_id) if self.bos_id is not None else "<|bos|>"
            self.controls = [bos, *SEEKLINE_ROLES.values(), SEEKLINE_END, SEEKLINE_CALL, SEEKLINE_END_CALL]
            chat_stops = [SEEKLINE_END]
        elif self.template == "chatml":
            self.controls = [IM_START, IM_END]
            chat_stops = [IM_END] + ([IM_EOT] if self.tok.token_to_id(IM_EOT) is not None else [])
        else:
            self.controls, chat_stops = [], []
        self._control_ids = {self.tok.token_to_id(t) for t in self.controls}
        self._special_ids = set(self.tok.get_added_tokens_decoder())
        self.chat_stop_ids = tuple(sorted(set(self.eos_ids) | {self.tok.token_to_id(t) for t in chat_stops}))

    def _pick_template(self, name: str, model_dir: str) -> str | None:
        added = {t.content for t in self.tok.get_added_tokens_decoder().values()}
        if name == "auto":
            if {IM_START, IM_END} <= added:
                return "chatml"
            if set(SEEKLINE_ROLES.values()) <= added:
                return "seekline"
            return None
        if name not in ("seekline", "chatml"):
            raise UserError(f"{os.path.join(model_dir, PHASE_FILE)}: unknown chat_template {name!r} "
                            "(serving knows seekline, chatml, auto)")
        need = {IM_START, IM_END} if name == "chatml" else set(SEEKLINE_ROLES.values()) | {SEEKLINE_END}
        if not need <= added:
            raise UserError(f"{model_dir}: chat template {name!r} needs the special tokens "
                            f"{', '.join(sorted(need - added))}, which the tokenizer lacks")
        return name

    # ------------------------------------------------------------------ encode
    def completion_ids(self, text: str) -> list[int]:
        """BOS (when the tokenizer has one) + the text, special-token strings encoded as text."""
        head = [self.bos_id] if self.bos_id is not None else []
        return head + self.text_tok.encode(text, add_special_tokens=False).ids

    def chat_ids(self, messages: Sequence[Message]) -> list[int]:
        if self.template is None:     # no chat template: the contents as one completion prompt
            return self.completion_ids("\n\n".join(m.content for m in messages))
        pieces = self._seekline(messages) if self.template == "seekline" else self._chatml(messages)
        ids: list[int] = []
        for text, control, where in pieces:
            if control:
                ids.append(self.tok.token_to_id(text))
                continue
            got = self.tok.encode(text, add_special_tokens=False).ids
            forged = [i for i in got if i in self._control_ids]
            if forged:
                raise bad_request(f"{where} contains the chat control token {self.tok.id_to_token(forged[0])!r}; "
                                  "it would forge a turn boundary", param=where)
            ids += got
        return ids

    def _seekline(self, messages):
        out = [(self.controls[0], True, None)]
        for i, m in enumerate(messages):
            out.append((SEEKLINE_ROLES[m.role], True, None))
            if m.content:
                out.append((m.content, False, f"messages[{i}].content"))
            for name, args in m.tool_calls:
                out += [(SEEKLINE_CALL, True, None), (_tool_call_json(name, args), False, f"messages[{i}].tool_calls"),
                        (SEEKLINE_END_CALL, True, None)]
            out.append((SEEKLINE_END, True, None))
        out.append((SEEKLINE_ROLES["assistant"], True, None))
        return out

    def _chatml(self, messages):
        # Text between two control tokens is one piece, as in the rendered string training encoded.
        def turn(role, content, where):
            return [(IM_START, True, None), (f"{role}\n{content}", False, where), (IM_END, True, None),
                    ("\n", False, None)]
        has_system = bool(messages) and messages[0].role == "system"
        out = turn("system", messages[0].content if has_system else QWEN_DEFAULT_SYSTEM,
                   "messages[0].content")
        for i, m in enumerate(messages):
            where = f"messages[{i}].content"
            if i == 0 and has_system:
                continue
            if m.role in ("user", "system"):
                out += turn(m.role, m.content, where)
            elif m.role == "assistant":
                body = m.content
                for j, (name, args) in enumerate(m.tool_calls):
                    sep = "" if (j == 0 and not m.content) else "\n"
                    body += f"{sep}<tool_call>\n{_tool_call_json(name, args)}\n</tool_call>"
                out += [(IM_START, True, None), ("assistant\n" + body, False, where), (IM_END, True, None),
                        ("\n", False, None)]
            else:  # tool results: consecutive ones share one user turn
                text = ("user" if i == 0 or messages[i - 1].role != "tool" else "")
                text += f"\n<tool_response>\n{m.content}\n</tool_response>"
                if i == 0 or messages[i - 1].role != "tool":
                    out.append((IM_START, True, None))
                out.append((text, False, where))
                if i == len(messages) - 1 or messages[i + 1].role != "tool":
                    out += [(IM_END, True, None), ("\n", False, None)]
        out += [(IM_START, True, None), ("assistant\n", False, None)]
        return _merge_text(out)

    # ------------------------------------------------------------------ decode
    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for (byte-level BPE: its vocabulary string maps back to
        bytes through GPT-2's byte alphabet); special tokens: their UTF-8 text."""
        s = self.tok.id_to_token(int(token_id)) or ""
        if int(token_id) in self._special_ids or any(ch not in _BYTE_DECODER for ch in s):
            return s.encode("utf-8")
        return bytes(_BYTE_DECODER[ch] for ch in s)

    def token_text(self, token_id: int) -> str:
        """A token's text for logprobs; a token that is part of a UTF-8 character is written
        'bytes:\\xNN' as OpenAI does (so distinct tokens never share a key)."""
        b = self.token_bytes(token_id)
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{x:02x}" for x in b)


def _byte_alphabet() -> dict[str, int]:
    """GPT-2's bytes_to_unicode, inverted: printable bytes map to themselves, the rest to 256+."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


_BYTE_DECODER = _byte_alphabet()


def _merge_text(pieces):
    """Adjacent text pieces form one encoder call (the tokenizer splits only at special tokens)."""
    out = []
    for text, control, where in pieces:
        if out and not control and not out[-1][1]:
            prev = out[-1]
            out[-1] = (prev[0] + text, False, prev[2] or where)
        else:
            out.append((text, control, where))
    return out
