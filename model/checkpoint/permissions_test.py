"""Checkpoint and export folders follow the process umask like any folder the user creates
(0755 / 0644 under umask 022), not tempfile.mkdtemp's private 0700."""
import os
import stat

import pytest

from model.checkpoint.hf import import_hf_checkpoint, save_hf_checkpoint
from model.conftest import fixture_dir, load_fixture_model

# umask -> (folder mode, file mode), as mkdir / open would create them
MODES = {0o022: (0o755, 0o644), 0o027: (0o750, 0o640)}


@pytest.fixture(params=sorted(MODES))
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _modes(folder: str) -> dict[str, int]:
    return {name: stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode)
            for name in [".", *os.listdir(folder)]}


def _expected(folder: str, umask: int) -> dict[str, int]:
    d, f = MODES[umask]
    return {name: d if name == "." else f for name in [".", *os.listdir(folder)]}


def test_import_folder_follows_umask(tmp_path, umask):
    out = str(tmp_path / "native")
    import_hf_checkpoint(fixture_dir("dsv3_plain_bf16_sharded"), out, max_shard_bytes=50_000)
    assert len(os.listdir(out)) > 4  # shards + index + config.json + seekline.json
    assert _modes(out) == _expected(out, umask)


def test_export_folder_follows_umask_also_when_replacing(tmp_path, umask):
    out = tmp_path / "exp"
    out.mkdir(mode=0o700)  # a previous, private folder is replaced by a umask-governed one
    save_hf_checkpoint(load_fixture_model("qwen2_gqa_tied"), str(out))
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    assert _modes(str(out)) == _expected(str(out), umask)
