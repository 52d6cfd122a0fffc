"""TFX wrapper of the tokenizer phase (imports TFX; the logic is in tokenizer.py)."""

from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types.artifact import Artifact
from tfx.types.standard_artifacts import Examples

from components.common.fileio import atomic_write_text
from components.tokenizer.tokenizer import train_from_examples
from configs.schema import TokenizerConfig


class TokenizerArtifact(Artifact):
    """A folder with tokenizer.json (HF tokenizers) and tokenizer_meta.json."""

    # Also its import path ("<module>.<Class>") in KFP v2 containers: see components/__init__.py.
    TYPE_NAME = "components.Tokenizer"


@component
def TrainTokenizer(  # noqa: N802 (TFX component factories are classes by convention)
    examples: InputArtifact[Examples],
    tokenizer: OutputArtifact[TokenizerArtifact],
    config_json: Parameter[str],
) -> None:
    """Trains the byte-level BPE on the train split of the (deduplicated) text examples."""
    cfg = TokenizerConfig.model_validate_json(config_json)
    m = train_from_examples(examples.uri, tokenizer.uri, cfg)
    tokenizer.set_int_custom_property("vocab_size", m["vocab_size"])
    atomic_write_text(f"{tokenizer.uri}/config.json", config_json)
