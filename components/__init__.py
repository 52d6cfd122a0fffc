"""One package per pipeline phase: plain functions plus a thin TFX component wrapper.

The plain functions (e.g. ``components.ingest.ingest``) never import TFX, so tests and other
tools call them directly; only ``component.py`` modules import TFX.
"""
