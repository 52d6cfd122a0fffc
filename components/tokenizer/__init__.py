"""Tokenizer phase: byte-level BPE trained with HF ``tokenizers`` on the deduplicated train
split (``tokenizer.train_from_examples``; TFX wrapper in ``component.py``)."""
