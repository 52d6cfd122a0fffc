"""The typed config: presets load, and every kind of bad input names its key and source."""

import pytest
import yaml
from pydantic import ValidationError

from components.common.errors import ConfigError
from configs.schema import (
    COMPONENT_IDS,
    DEFAULT_PRESET,
    SeeklineConfig,
    load_config,
    preset_names,
    save_config,
)


@pytest.mark.parametrize("name", ["tiny", "small", "cluster"])
def test_presets_load(name):
    cfg = load_config(name)
    assert isinstance(cfg, SeeklineConfig)
    assert cfg.pipeline.name.startswith("seekline")


def test_default_preset_is_tiny_and_listed():
    assert DEFAULT_PRESET == "tiny"
    assert {"tiny", "small", "cluster"} <= set(preset_names())


def test_overrides_are_typed_from_yaml():
    cfg = load_config("tiny", ["ingest.max_files=7", "pipeline.enable_cache=false", "ingest.include=['*.txt']"])
    assert cfg.ingest.max_files == 7
    assert cfg.pipeline.enable_cache is False
    assert cfg.ingest.include == ["*.txt"]


def test_config_is_read_only():
    cfg = load_config("tiny")
    with pytest.raises(ValidationError, match="frozen"):
        cfg.ingest.max_files = 3  # type: ignore[misc]


def test_unknown_key_in_file_names_key_and_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("ingest:\n  max_filez: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(p))
    assert str(p) in str(e.value) and "ingest.max_filez" in str(e.value)


def test_wrong_type_names_key(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("ingest:\n  eval_percent: lots\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: ingest.eval_percent: .*integer.*'lots'"):
        load_config(str(p))


def test_invalid_value_from_override_names_the_override():
    with pytest.raises(ConfigError, match=r"--set ingest.eval_percent=90: ingest.eval_percent"):
        load_config("tiny", ["ingest.eval_percent=90"])


def test_unknown_override_key():
    with pytest.raises(ConfigError, match=r"--set pipeline.nmae=x: unknown key 'pipeline.nmae'"):
        load_config("tiny", ["pipeline.nmae=x"])


@pytest.mark.parametrize("bad", ["novalue", "=3", "a..b=1"])
def test_malformed_override(bad):
    with pytest.raises(ConfigError, match="override"):
        load_config("tiny", [bad])


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown preset 'tinyy'; available: .*tiny"):
        load_config("tinyy")


def test_missing_config_file():
    with pytest.raises(ConfigError, match="config file not found: /nope/x.yaml"):
        load_config("/nope/x.yaml")


def test_invalid_yaml(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("ingest: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(str(p))


def test_kubernetes_quantities_and_names_are_checked():
    with pytest.raises(ConfigError, match="resources.default.memory"):
        load_config("tiny", ["resources.default.memory=lots"])
    with pytest.raises(ConfigError, match="resources.default.cpu"):
        load_config("tiny", ["resources.default.cpu=2 cores"])
    with pytest.raises(ConfigError, match="pipeline.name"):
        load_config("tiny", ["pipeline.name=Not_A_DNS_Name"])
    with pytest.raises(ConfigError, match="unknown component 'trainer'"):
        load_config("tiny", ["resources.components.trainer.gpu=1"])


@pytest.mark.parametrize(
    "cron,ok", [("0 0 3 * * *", True), ("0 */5 * * * 1-5", True), ("0 3 * * *", False), ("0 0 3 * * * *", False)]
)
def test_cron_has_six_fields(cron, ok):
    if ok:
        assert load_config("tiny", [f"kubeflow.cron='{cron}'"]).kubeflow.cron == cron
    else:
        with pytest.raises(ConfigError, match="6, seconds first"):
            load_config("tiny", [f"kubeflow.cron='{cron}'"])


def test_component_resources_override_the_default():
    cfg = load_config("cluster", ["resources.components.ingest.gpu=2"])
    ingest = cfg.resources.for_component("ingest")
    assert (ingest.cpu, ingest.memory, ingest.gpu) == ("16", "64Gi", 2)
    assert ingest.node_selector == {"seekline.dev/pool": "cpu"}  # inherited from default
    schema = cfg.resources.for_component("schema")
    assert (schema.cpu, schema.gpu) == ("4", 0)
    assert set(COMPONENT_IDS) >= {"ingest", "schema"}


def test_saved_config_reloads_identically(tmp_path):
    cfg = load_config("tiny", ["ingest.max_files=9"])
    out = tmp_path / "run" / "config.yaml"
    save_config(cfg, out)
    again = load_config(str(out))
    assert again == cfg
    assert yaml.safe_load(out.read_text())["validate"]["fail_on_anomalies"] is True


def test_data_sections_validate_their_invariants():
    with pytest.raises(ConfigError, match=r"num_perm \(100\) must be a multiple of dedup.bands \(16\)"):
        load_config("tiny", ["ingest.dedup.num_perm=100"])
    with pytest.raises(ConfigError, match="special tokens must be distinct; repeated: \\['<\\|eos\\|>'\\]"):
        load_config("tiny", ["tokenizer.special_tokens=['<|eos|>']"])
    with pytest.raises(ConfigError, match=r"validate.drift: .*threshold for 'num_tokens' must be in \(0, 1\]"):
        load_config("tiny", ["validate.drift={num_tokens: 3}"])
    cfg = load_config("tiny", ["ingest.format=jsonl", "ingest.text_field=body", "pack.seq_len=64"])
    assert (cfg.ingest.format, cfg.ingest.text_field, cfg.pack.seq_len) == ("jsonl", "body", 64)


def test_every_component_id_is_known_to_resources():
    assert COMPONENT_IDS == ("ingest", "tokenizer", "pack", "statistics", "schema", "validate", "pretrain",
                             "context_extension", "sft", "grpo", "distill", "agent_trajectories", "agent_distill",
                             "evaluate", "export")
    cfg = load_config("cluster")
    assert cfg.resources.for_component("pack").cpu == "16"


def test_cross_field_checks_name_the_section():
    with pytest.raises(ConfigError, match=r"ingest.filters: .*min_chars \(500\) > max_chars \(100\)"):
        load_config("tiny", ["ingest.filters.min_chars=500", "ingest.filters.max_chars=100"])
    with pytest.raises(ConfigError, match=r"tolerations.0: .*Exists must not have a value"):
        load_config("tiny", ["resources.default.tolerations=[{key: a, operator: Exists, value: b}]"])


def test_evaluate_section_checks_k_and_switches_the_component_off():
    with pytest.raises(ConfigError, match=r"evaluate: .*k values must be in \[1, n_samples=2\]"):
        load_config("tiny", ["evaluate.k=[1, 5]"])
    with pytest.raises(ConfigError, match="evaluate.prompt_mode"):
        load_config("tiny", ["evaluate.prompt_mode=fim"])
    cfg = load_config("cluster")
    assert cfg.evaluate.blessing.require_no_worse_than_baseline is True
    assert cfg.resources.for_component("evaluate").gpu == 1
    assert "evaluate" in cfg.enabled_components()
    assert "evaluate" not in load_config("tiny", ["evaluate.enabled=false"]).enabled_components()
