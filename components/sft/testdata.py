"""Small tokenizers for the SFT tests: the project's own (seekline special tokens, trained with
components/tokenizer) and a ChatML one shaped like Qwen2.5's (byte-level BPE, <|endoftext|>,
<|im_start|>, <|im_end|> special; <tool_call> & co. plain added tokens)."""

from __future__ import annotations

import os

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

TEXTS = [
    "def add(a, b):\n    \"\"\"Return the sum of a and b.\"\"\"\n    return a + b\n",
    "The weather in Oslo is cold today; the weather in Zurich is mild.\n",
    "Write a Python function that reverses a list. Answer: use slicing with a negative step.\n",
    "User asks a question, the assistant answers it, and the tool returns a result.\n",
    "for i in range(10):\n    print(i * i)\n",
] * 4

CHATML_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML_ADDED = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]


def seekline_tokenizer_dir(root: str, vocab_size: int = 400) -> str:
    """A trained project tokenizer saved like the tokenizer phase does (tokenizer.json + meta)."""
    from components.tokenizer import tokenizer as tkz
    from configs.schema import TokenizerConfig

    cfg = TokenizerConfig(vocab_size=vocab_size, min_frequency=1, roundtrip_check_docs=0)
    tok = tkz.train(TEXTS, cfg)
    out = os.path.join(root, "seekline_tok")
    tkz.save(tok, out, tkz.meta(tok, cfg))
    return out


def chatml_tokenizer_dir(root: str, vocab_size: int = 400) -> str:
    """A Qwen-shaped ChatML tokenizer folder (tokenizer.json only, as a hub download has)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=1, special_tokens=CHATML_SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TEXTS, trainer)
    tok.add_tokens(CHATML_ADDED)
    out = os.path.join(root, "chatml_tok")
    os.makedirs(out, exist_ok=True)
    tok.save(os.path.join(out, "tokenizer.json"))
    return out
