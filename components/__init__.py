"""One package per pipeline phase: plain functions plus a thin TFX component wrapper.

The plain functions (e.g. ``components.ingest.ingest``) never import TFX, so tests and other
tools call them directly; only ``component.py`` modules import TFX.
"""


def __getattr__(name: str):
    # KFP v2 containers rebuild a custom artifact class from its type name, read as
    # "<module>.<Class>", and TFX restricts that name to one dot: "components.Tokenizer".
    # Resolved lazily so importing ``components`` never imports TFX.
    if name == "Tokenizer":
        from components.tokenizer.component import TokenizerArtifact

        return TokenizerArtifact
    raise AttributeError(f"module 'components' has no attribute {name!r}")
