"""Chat templates: a Conversation → rendered text → token ids + a loss mask on the assistant's tokens.

A template lays a conversation out as pieces (text, is_target, is_control). The text is encoded
once with the HF ``tokenizers`` tokenizer (special tokens recognised), and the mask marks every
token whose character offsets lie inside a target piece: the assistant's content, its tool
calls and its end-of-turn token (TRL's labels != -100). A token that straddles the edge of a
target span is an error (control tokens make the edges clean; plain text at an edge could merge
with its neighbour). Control tokens a template inserts are checked against the encoding: a
message whose text itself contains one (e.g. a literal "<|im_end|>") would otherwise inject a turn
boundary, so it is rejected with its source.

``seekline`` — built on the tokenizer's own special tokens (configs/schema.py
DEFAULT_SPECIAL_TOKENS; BOS/EOS from tokenizer_meta.json)::

    <|bos|><|system|>{system}<|end_of_turn|>            (only when the conversation has one)
    <|user|>{user}<|end_of_turn|>
    <|assistant|>{content}<|tool_call|>{"name": "f", "arguments": {...}}<|/tool_call|><|end_of_turn|>
    <|tool|>{tool result}<|end_of_turn|>
    <|assistant|>{content}<|end_of_turn|>

  No text is added around the content (no newlines), so every turn edge is a special token.
  Targets: what follows <|assistant|> up to and including its <|end_of_turn|>. Reasoning is
  plain assistant content ("<think>…</think>answer"; <think> and </think> encode to their
  special ids). Tool results are matched to calls by order (the tool message's name is not
  rendered). Generation prompt: the history then <|assistant|>; stop ids: <|end_of_turn|>, EOS.

``chatml`` — Qwen2.5's template (its tokenizer_config.json chat_template, without a tools list)::

    <|im_start|>system\\n{system or "You are Qwen, created by Alibaba Cloud. You are a helpful
    assistant."}<|im_end|>\\n<|im_start|>user\\n{user}<|im_end|>\\n<|im_start|>assistant\\n{content}
    \\n<tool_call>\\n{"name": "f", "arguments": {...}}\\n</tool_call><|im_end|>\\n
    <|im_start|>user\\n<tool_response>\\n{result}\\n</tool_response><|im_end|>\\n   (consecutive tool
    messages share one user turn)

  Targets: what follows "<|im_start|>assistant\\n" up to and including <|im_end|>. Generation
  prompt: the history then "<|im_start|>assistant\\n"; stop ids: <|im_end|> (and <|endoftext|>).
  tests/fixtures/sft/chatml_expected.json holds transformers' rendering of that jinja template.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from common.errors import ConfigError, InputDataError
from components.sft.formats import Conversation, Message

QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
TEMPLATE_NAMES = ("auto", "seekline", "chatml")


@dataclass(frozen=True)
class EncodedExample:
    ids: np.ndarray  # (L,) int32
    loss_mask: np.ndarray  # (L,) int32, 1 on loss targets (assistant tokens)
    text: str


@dataclass(frozen=True)
class _Piece:
    text: str
    target: bool = False
    control: bool = False  # one control token the template inserts (never allowed in content)


class ChatTemplate:
    """Render / encode conversations; subclasses only lay out pieces."""

    name = ""

    def __init__(self, tokenizer: Tokenizer, control_tokens: Sequence[str], stop_tokens: Sequence[str]):
        # A private copy: the project's tokenizers load with encode_special_tokens=True (corpus text
        # is data), but a rendered template must map its control strings to their ids.
        self._tok = Tokenizer.from_str(tokenizer.to_str())
        self._tok.encode_special_tokens = False
        self.control_tokens = tuple(control_tokens)
        self._control_ids = np.array([self._tok.token_to_id(t) for t in self.control_tokens], np.int64)
        self._stop_ids = [self._tok.token_to_id(t) for t in stop_tokens]

    @property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer this template encodes with (special tokens recognised)."""
        return self._tok

    @property
    def stop_ids(self) -> list[int]:
        """Token ids that end an assistant turn at generation time."""
        return list(self._stop_ids)

    def _pieces(self, messages: Sequence[Message], add_generation_prompt: bool) -> list[_Piece]:
        raise NotImplementedError

    def render(self, conv: Conversation) -> str:
        return "".join(p.text for p in self._pieces(conv.messages, False))

    def render_prompt(self, messages: Sequence[Message]) -> str:
        """The messages so far followed by the assistant header (what generation continues)."""
        return "".join(p.text for p in self._pieces(messages, True))

    def encode(self, conv: Conversation) -> EncodedExample:
        return self.encode_batch([conv])[0]

    def encode_batch(self, convs: Sequence[Conversation]) -> list[EncodedExample]:
        """encode() of each conversation, tokenized in one batch call (the tokenizer's threads)."""
        layouts = [self._pieces(c.messages, False) for c in convs]
        texts = ["".join(p.text for p in ps) for ps in layouts]
        encs = self._tok.encode_batch(texts, add_special_tokens=False)
        return [self._finish(c.source, ps, t, e, need_target=True)
                for c, ps, t, e in zip(convs, layouts, texts, encs, strict=True)]

    def encode_prompt(self, messages: Sequence[Message]) -> list[int]:
        pieces = self._pieces(messages, True)
        text = "".join(p.text for p in pieces)
        ex = self._finish("prompt", pieces, text, self._tok.encode(text, add_special_tokens=False), need_target=False)
        return ex.ids.tolist()

    def _finish(self, source: str, pieces: list[_Piece], text: str, enc, need_target: bool) -> EncodedExample:
        ids = np.asarray(enc.ids, np.int64)  # (L,)
        offs = np.asarray(enc.offsets, np.int64).reshape(-1, 2)  # (L, 2) character [start, end)
        in_target = np.zeros(len(text), np.int64)  # (C,) 1 on target characters
        expected_controls = []
        at = 0
        for p in pieces:
            if p.target:
                in_target[at:at + len(p.text)] = 1
            if p.control:
                expected_controls.append(at)
            at += len(p.text)
        # Control ids must sit exactly where the template put control tokens.
        got = offs[np.isin(ids, self._control_ids), 0]
        if got.tolist() != expected_controls:
            extra = sorted(set(got.tolist()) - set(expected_controls))
            if extra:
                tok = text[extra[0]:offs[np.searchsorted(offs[:, 0], extra[0]), 1]]
                raise InputDataError(f"{source}: message text contains the control token {tok!r} "
                                     f"(at character {extra[0]} of the rendered conversation)")
            raise RuntimeError(f"{self.name}: a control token was not encoded as one token")  # init checks this
        csum = np.concatenate([[0], np.cumsum(in_target)])  # (C+1,)
        n_in = csum[offs[:, 1]] - csum[offs[:, 0]]  # (L,) target characters under each token
        width = offs[:, 1] - offs[:, 0]
        straddle = np.flatnonzero((n_in > 0) & (n_in < width))
        if straddle.size:
            i = int(straddle[0])
            raise InputDataError(f"{source}: token {i} {text[offs[i, 0]:offs[i, 1]]!r} straddles the edge of an "
                                 "assistant turn (the text next to the turn header merges with it)")
        mask = ((n_in > 0) & (n_in == width)).astype(np.int32)
        if need_target and not mask.any():
            # The classic silent SFT bug: an all-zero assistant mask trains on nothing.
            raise RuntimeError(f"{source}: the assistant mask came out all zero")
        return EncodedExample(ids.astype(np.int32), mask, text)


def _tool_call_json(name: str, arguments: dict) -> str:
    # The ChatML template writes '{"name": "' + name + '", "arguments": ' + arguments|tojson + '}',
    # and transformers' tojson is json.dumps(ensure_ascii=False) with default separators.
    return '{"name": "' + name + '", "arguments": ' + json.dumps(arguments, ensure_ascii=False) + "}"


class SeeklineTemplate(ChatTemplate):
    name = "seekline"
    ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>", "tool": "<|tool|>"}
    END, CALL, END_CALL = "<|end_of_turn|>", "<|tool_call|>", "<|/tool_call|>"

    def __init__(self, tokenizer: Tokenizer, bos: str, eos: str):
        self.bos = bos
        super().__init__(tokenizer, [bos, *self.ROLE_TOKENS.values(), self.END, self.CALL, self.END_CALL],
                         [self.END, eos])

    @classmethod
    def required_tokens(cls, bos: str, eos: str) -> list[str]:
        return [bos, eos, *cls.ROLE_TOKENS.values(), cls.END, cls.CALL, cls.END_CALL]

    def _pieces(self, messages, add_generation_prompt):
        out = [_Piece(self.bos, control=True)]
        for m in messages:
            out.append(_Piece(self.ROLE_TOKENS[m.role], control=True))
            t = m.role == "assistant"
            if m.content:
                out.append(_Piece(m.content, target=t))
            for c in m.tool_calls:
                out += [_Piece(self.CALL, t, True), _Piece(_tool_call_json(c.name, c.arguments), t),
                        _Piece(self.END_CALL, t, True)]
            out.append(_Piece(self.END, t, True))
        if add_generation_prompt:
            out.append(_Piece(self.ROLE_TOKENS["assistant"], control=True))
        return out


class ChatMLTemplate(ChatTemplate):
    name = "chatml"
    START, END, EOT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"

    def __init__(self, tokenizer: Tokenizer):
        stops = [self.END] + ([self.EOT] if tokenizer.token_to_id(self.EOT) is not None else [])
        super().__init__(tokenizer, [self.START, self.END], stops)

    @classmethod
    def required_tokens(cls) -> list[str]:
        return [cls.START, cls.END]

    def _turn(self, role: str, content: str) -> list[_Piece]:
        return [_Piece(self.START, control=True), _Piece(f"{role}\n{content}"), _Piece(self.END, control=True),
                _Piece("\n")]

    def _pieces(self, messages, add_generation_prompt):
        has_system = bool(messages) and messages[0].role == "system"
        out = self._turn("system", messages[0].content if has_system else QWEN_DEFAULT_SYSTEM)
        for i, m in enumerate(messages):
            if i == 0 and has_system:
                continue
            if m.role in ("user", "system"):
                out += self._turn(m.role, m.content)
            elif m.role == "assistant":
                out += [_Piece(self.START, control=True), _Piece("assistant\n")]
                body = m.content
                for j, c in enumerate(m.tool_calls):
                    sep = "" if (j == 0 and not m.content) else "\n"
                    body += f"{sep}<tool_call>\n{_tool_call_json(c.name, c.arguments)}\n</tool_call>"
                if body:
                    out.append(_Piece(body, target=True))
                out += [_Piece(self.END, True, True), _Piece("\n")]
            else:  # tool results: consecutive ones share one user turn
                if i == 0 or messages[i - 1].role != "tool":
                    out += [_Piece(self.START, control=True), _Piece("user")]
                out.append(_Piece(f"\n<tool_response>\n{m.content}\n</tool_response>"))
                if i == len(messages) - 1 or messages[i + 1].role != "tool":
                    out += [_Piece(self.END, control=True), _Piece("\n")]
        if add_generation_prompt:
            out += [_Piece(self.START, control=True), _Piece("assistant\n")]
        return out


def _added_tokens(tok: Tokenizer) -> set[str]:
    return {t.content for t in tok.get_added_tokens_decoder().values()}


def _load(tokenizer_dir_or_tokenizer) -> tuple[Tokenizer, dict | None, str]:
    if isinstance(tokenizer_dir_or_tokenizer, Tokenizer):
        return tokenizer_dir_or_tokenizer, None, "given"
    import tensorflow as tf

    from components.tokenizer.tokenizer import META_FILE, load, load_meta

    where = os.fspath(tokenizer_dir_or_tokenizer)
    try:
        tok = load(where)
    except (OSError, tf.errors.OpError, ValueError) as e:
        raise ConfigError(f"{where}: cannot load the tokenizer ({e})") from None
    meta = load_meta(where) if tf.io.gfile.exists(os.path.join(where, META_FILE)) else None
    return tok, meta, where


def get_template(name: str, tokenizer_dir_or_tokenizer, meta: dict | None = None) -> ChatTemplate:
    """The named template over a tokenizer (a folder with tokenizer.json [+ tokenizer_meta.json] or a
    ``tokenizers.Tokenizer``). ``auto`` picks chatml when the tokenizer has <|im_start|>/<|im_end|>,
    seekline when it has the seekline role tokens. A template whose tokens the tokenizer lacks is
    a ConfigError naming them."""
    if name not in TEMPLATE_NAMES:
        raise ConfigError(f"unknown chat template {name!r}; choose one of {', '.join(TEMPLATE_NAMES)}")
    tok, file_meta, where = _load(tokenizer_dir_or_tokenizer)
    meta = meta or file_meta
    added = _added_tokens(tok)
    if meta is not None:
        bos, eos = tok.id_to_token(meta["bos_id"]), tok.id_to_token(meta["eos_id"])
    else:  # a bare tokenizer: the project's default names
        from configs.schema import TokenizerConfig

        bos, eos = TokenizerConfig().bos_token, TokenizerConfig().eos_token
    if name == "auto":
        if set(ChatMLTemplate.required_tokens()) <= added:
            name = "chatml"
        elif set(SeeklineTemplate.ROLE_TOKENS.values()) <= added:
            name = "seekline"
        else:
            raise ConfigError(f"tokenizer {where}: chat_template auto found neither the ChatML tokens "
                              "(<|im_start|>, <|im_end|>) nor the seekline role tokens (<|user|>, <|assistant|>, ...)")
    required = ChatMLTemplate.required_tokens() if name == "chatml" else SeeklineTemplate.required_tokens(bos, eos)
    missing = [t for t in required if t not in added]
    if missing:
        raise ConfigError(f"chat template {name!r} does not fit the tokenizer {where}: it lacks the special "
                          f"tokens {', '.join(missing)}")
    return ChatMLTemplate(tok) if name == "chatml" else SeeklineTemplate(tok, bos, eos)
