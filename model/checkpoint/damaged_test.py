"""Damaged checkpoint files: one-line CheckpointError naming the file (and tensor), CLI exit 2,
and a failed import leaves the previously imported folder as it was.

The damage is done here with struct + json on the fixture bytes (independent of the reader under
test): the expected tensor name comes from that test-side header parse.
"""
import hashlib
import json
import os
import shutil
import struct

import numpy as np
import pytest

from model.checkpoint.hf import import_hf_checkpoint, load_hf_checkpoint
from model.checkpoint.reader import CheckpointReader
from model.conftest import fixture_dir
from model.errors import CheckpointError, ConfigError
from pipelines import cli

# (fixture, damaged file, tensor to damage): fp32 single file, a bf16 shard, FP8 weights
CASES = {
    "fp32": ("qwen2_gqa_tied", "model.safetensors", "model.layers.1.self_attn.o_proj.weight"),
    "bf16-shard": ("dsv3_plain_bf16_sharded", "model-00002-of-00004.safetensors", None),
    "fp8": ("dsv3_fp8", "model.safetensors", "model.layers.0.self_attn.o_proj.weight"),
}
DAMAGE = ["truncated", "random_bytes", "header_length_past_end", "offset_outside_file"]


def _parse(data: bytes):
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    return n, header


def _pack(header: dict, body: bytes) -> bytes:
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    return struct.pack("<Q", len(hb)) + hb + body


def _pick_tensor(header: dict, wanted: str | None) -> str:
    """The wanted tensor, or the middle one in file order; never the last (so a truncation
    or move is visible as that tensor and not just at the end of the file)."""
    by_offset = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    name = wanted or by_offset[len(by_offset) // 2]
    assert name in by_offset[:-1] and header[name]["data_offsets"][1] > header[name]["data_offsets"][0]
    return name


def damage(path: str, kind: str, wanted: str | None) -> str | None:
    """Damage the file in place; return the tensor the error must name (None: no tensor)."""
    data = open(path, "rb").read()
    n, header = _parse(data)
    body = data[8 + n:]
    if kind == "random_bytes":
        out, name = np.random.default_rng(7).bytes(len(data)), None
    elif kind == "header_length_past_end":
        out, name = struct.pack("<Q", len(data)) + data[8:], None
    elif kind == "truncated":  # cut in the middle of the tensor's bytes
        name = _pick_tensor(header, wanted)
        start, end = header[name]["data_offsets"]
        out = data[:8 + n + (start + end) // 2]
    elif kind == "offset_outside_file":  # same size, moved past the end of the file
        name = _pick_tensor(header, wanted)
        start, end = header[name]["data_offsets"]
        header[name]["data_offsets"] = [start + len(body), end + len(body)]
        out = _pack(header, body)
    else:
        raise AssertionError(kind)
    with open(path, "wb") as f:
        f.write(out)
    return name


def _copy(tmp_path, fixture: str) -> str:
    d = tmp_path / f"src-{fixture}"
    shutil.copytree(fixture_dir(fixture), d)
    return str(d)


def _snapshot(folder: str) -> dict:
    """Every file's bytes hash and mode, and every folder's mode: what "unchanged" means."""
    out = {".": os.stat(folder).st_mode}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = os.path.join(root, name)
            rel = os.path.relpath(p, folder)
            out[rel] = os.stat(p).st_mode
            if name in files:
                out[rel] = (out[rel], hashlib.sha256(open(p, "rb").read()).hexdigest())
    return out


@pytest.mark.parametrize("kind", DAMAGE)
@pytest.mark.parametrize("case", list(CASES))
def test_damaged_file_is_a_one_line_error_naming_file_and_tensor(tmp_path, case, kind):
    fixture, fn, wanted = CASES[case]
    d = _copy(tmp_path, fixture)
    bad = os.path.join(d, fn)
    tensor = damage(bad, kind, wanted)
    for load in (CheckpointReader, load_hf_checkpoint):
        with pytest.raises(CheckpointError) as e:
            load(d)
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith(f"{bad}: "), msg
        if tensor:
            assert f"'{tensor}'" in msg, msg
        if kind == "header_length_past_end":
            assert "header length" in msg, msg


@pytest.mark.parametrize("kind", DAMAGE)
@pytest.mark.parametrize("case", list(CASES))
def test_cli_import_of_damaged_file_exits_2_and_keeps_previous_output(tmp_path, capsys, case, kind):
    fixture, fn, wanted = CASES[case]
    out = str(tmp_path / "out" / "native")
    import_hf_checkpoint(fixture_dir(fixture), out)  # the previously written import
    before = _snapshot(out)
    d = _copy(tmp_path, fixture)
    bad = os.path.join(d, fn)
    tensor = damage(bad, kind, wanted)
    capsys.readouterr()

    assert cli.main(["model", "import", d, out]) == cli.EXIT_USER_ERROR == 2

    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("seekline: error: ") and "Traceback" not in err, err
    assert bad in err and (tensor is None or f"'{tensor}'" in err), err
    assert _snapshot(out) == before
    assert os.listdir(tmp_path / "out") == ["native"]  # no staging folder left behind


def test_damaged_index_json_names_the_index(tmp_path, capsys):
    d = _copy(tmp_path, "dsv3_plain_bf16_sharded")
    index = os.path.join(d, "model.safetensors.index.json")
    with open(index, "wb") as f:
        f.write(np.random.default_rng(3).bytes(300))
    with pytest.raises(CheckpointError, match="model.safetensors.index.json: invalid index json"):
        CheckpointReader(d)
    assert cli.main(["model", "import", d, str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and index in err, err
    assert not os.path.exists(tmp_path / "o")


@pytest.mark.parametrize("weight_map", [["a"], {"model.norm.weight": "../elsewhere.safetensors"}])
def test_index_weight_map_must_name_shards_in_the_folder(tmp_path, weight_map):
    d = _copy(tmp_path, "dsv3_plain_bf16_sharded")
    index = os.path.join(d, "model.safetensors.index.json")
    with open(index, "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    with pytest.raises(CheckpointError, match=r"index\.json: invalid index json \(weight_map"):
        CheckpointReader(d)


def test_binary_config_json_is_a_one_line_config_error(tmp_path, capsys):
    d = _copy(tmp_path, "qwen2_gqa_tied")
    cfg = os.path.join(d, "config.json")
    with open(cfg, "wb") as f:
        f.write(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="config.json: invalid JSON: not UTF-8"):
        load_hf_checkpoint(d)
    assert cli.main(["model", "import", d, str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and cfg in err, err


def test_failure_while_writing_an_import_keeps_previous_output(tmp_path, monkeypatch):
    """Damage found only mid-write (here: the second shard's write fails) must not touch the
    previously imported folder either."""
    import model.checkpoint.hf as hf

    out = str(tmp_path / "out" / "native")
    import_hf_checkpoint(fixture_dir("dsv3_fp8"), out)
    before = _snapshot(out)
    real, calls = hf.write_safetensors, []

    def second_fails(path, *a, **k):
        calls.append(path)
        if len(calls) == 2:
            raise CheckpointError(f"{path}: simulated failure")
        return real(path, *a, **k)

    monkeypatch.setattr(hf, "write_safetensors", second_fails)
    with pytest.raises(CheckpointError, match="simulated failure"):
        import_hf_checkpoint(fixture_dir("dsv3_fp8"), out, max_shard_bytes=20_000)
    assert len(calls) == 2
    assert _snapshot(out) == before and os.listdir(tmp_path / "out") == ["native"]
