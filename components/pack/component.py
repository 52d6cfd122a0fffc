"""TFX wrapper of the pack phase (imports TFX; the logic is in pack.py / packing.py)."""

import apache_beam as beam
from tfx.dsl.component.experimental.annotations import (
    BeamComponentParameter,
    InputArtifact,
    OutputArtifact,
    Parameter,
)
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils
from tfx.types.standard_artifacts import Examples

from components.common.fileio import atomic_write_text
from components.pack.pack import SPLITS, run_pack
from components.tokenizer.component import TokenizerArtifact
from configs.schema import PackConfig


@component(use_beam=True)
def PackSequences(  # noqa: N802
    examples: InputArtifact[Examples],
    tokenizer: InputArtifact[TokenizerArtifact],
    packed: OutputArtifact[Examples],
    config_json: Parameter[str],
    beam_pipeline: BeamComponentParameter[beam.Pipeline] = None,
) -> None:
    """Tokenizes both splits and packs them into fixed-length rows (input_ids, segment_ids,
    positions, …) as ``Examples``; writes the run's data report (JSON + PNG)."""
    cfg = PackConfig.model_validate_json(config_json)
    report = run_pack(examples.uri, tokenizer.uri, packed.uri, cfg, pipeline=beam_pipeline)
    packed.split_names = artifact_utils.encode_split_names(list(SPLITS))
    for split in SPLITS:
        packed.set_int_custom_property(f"{split}_rows", report["rows"][split])
        packed.set_int_custom_property(f"{split}_tokens", report["tokens_written"][split])
    packed.set_int_custom_property("seq_len", cfg.seq_len)
    atomic_write_text(f"{packed.uri}/config.json", config_json)
