"""Ingest phase: corpus files → TFRecord examples (``ingest.run_ingest``; TFX wrapper in
``component.py``)."""
