"""Pack phase: tokenize the text examples with the trained tokenizer and pack them into
fixed-length rows with document boundaries kept (``pack.run_pack``; TFX wrapper in
``component.py``)."""
