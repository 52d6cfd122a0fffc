"""Config loading edge cases: file encoding, empty files, duplicate keys, typed --set values."""

import pytest

from components.common.errors import ConfigError
from configs.overrides import annotation_at
from configs.schema import SeeklineConfig, load_config


def _file(tmp_path, data: bytes):
    p = tmp_path / "c.yaml"
    p.write_bytes(data)
    return str(p)


def test_non_utf8_config_is_a_config_error_naming_file_and_line(tmp_path):
    path = _file(tmp_path, b"pipeline:\n  name: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:2: not UTF-8 text \(byte 0xe9") as e:
        load_config(path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("text", [b"", b"# nothing but a comment\n", b"\n\n"])
def test_empty_config_file_is_an_error(tmp_path, text):
    with pytest.raises(ConfigError, match=r"c\.yaml: the config file is empty"):
        load_config(_file(tmp_path, text))


def test_duplicate_keys_are_an_error_naming_both_lines(tmp_path):
    path = _file(tmp_path, b"pipeline:\n  name: a\ningest:\n  max_files: 3\npipeline:\n  name: b\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: not valid YAML: line 5, column 1: duplicate key 'pipeline' "
                       r"\(first set on line 1\)") as e:
        load_config(path)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="duplicate key 'name'"):
        load_config(_file(tmp_path, b"pipeline: {name: a, name: b}\n"))


def test_yaml_syntax_errors_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"c\.yaml: not valid YAML: line \d+, column \d+: ") as e:
        load_config(_file(tmp_path, b"pipeline:\n  name: [a\n"))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("item", [
    "ingest.max_files=true", "ingest.eval_percent=false", "ingest.filters.min_alnum_fraction=true",
    "resources.components.pack.gpu=true", "validate.drift.num_tokens=true",
])
def test_a_boolean_is_not_a_number(item):
    key = item.split("=")[0]
    with pytest.raises(ConfigError, match=rf"--set {item}: {key}: expected a number, got a boolean"):
        load_config("tiny", [item])


def test_a_boolean_for_a_number_in_a_file_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"c\.yaml: ingest\.max_files: expected a number"):
        load_config(_file(tmp_path, b"ingest:\n  max_files: yes\n"))


def test_plain_scalars_fit_string_and_list_fields():
    c = load_config("tiny", [
        "ingest.include=*.jsonl",          # a YAML alias if parsed as YAML
        "ingest.corpus=/data/x",           # one scalar for a list field
        "resources.default.cpu=2",         # YAML int for a str field
        "resources.default.memory=1.50",   # the text typed, not str(1.5)
        "pipeline.name=123",
        "ingest.exclude=",                 # empty = no patterns
    ])
    assert c.ingest.include == ["*.jsonl"]
    assert c.ingest.corpus == ["/data/x"]
    assert c.resources.default.cpu == "2"
    assert c.resources.default.memory == "1.50"
    assert c.pipeline.name == "123"
    assert c.ingest.exclude == []


def test_yaml_values_still_work_and_explicit_yaml_errors_are_reported():
    c = load_config("tiny", ["ingest.include=['*.a', '*.b']", "ingest.max_files=null", "ingest.eval_percent=20"])
    assert c.ingest.include == ["*.a", "*.b"] and c.ingest.max_files is None and c.ingest.eval_percent == 20
    # a '[' means YAML was meant: its error is the answer, not a one-element list of '[oops'
    with pytest.raises(ConfigError, match=r"override 'ingest.corpus=\[oops': value is not valid YAML \(line 1"):
        load_config("tiny", ["ingest.corpus=[oops"])
    # an int field gets no text fallback
    with pytest.raises(ConfigError, match="ingest.eval_percent"):
        load_config("tiny", ["ingest.eval_percent=*x"])


def test_settings_from_cli_options_name_their_option():
    c = load_config("tiny", [], [("ingest.corpus", ["/d"], "--corpus"), ("ingest.include", ["*.txt"], "--include")])
    assert c.ingest.corpus == ["/d"] and c.ingest.include == ["*.txt"]
    with pytest.raises(ConfigError, match=r"^--corpus: ingest.corpus: "):
        load_config("tiny", [], [("ingest.corpus", [], "--corpus")])


def test_annotation_lookup_follows_aliases_and_dicts():
    assert annotation_at(SeeklineConfig, ["validate", "fail_on_anomalies"]) is bool
    assert annotation_at(SeeklineConfig, ["resources", "components", "pack", "gpu"]) is int
    assert annotation_at(SeeklineConfig, ["ingest", "nope"]) is None
