import json
import os
import stat

import pytest

from common import fileio
from common.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text, make_temp_dir

# umask -> (file mode, folder mode) a plain open() / mkdir() gives: 0666 / 0777 less the umask
MODES = {0o022: (0o644, 0o755), 0o027: (0o640, 0o750), 0o077: (0o600, 0o700)}


@pytest.fixture(params=sorted(MODES))
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_files_follow_the_umask(tmp_path, umask):
    want = MODES[umask][0]
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    atomic_write_text(tmp_path / "sub" / "tokenizer.json", "{}")
    atomic_write_json(tmp_path / "report.json", {"a": 1})
    assert _mode(tmp_path / "b.bin") == want
    assert _mode(tmp_path / "sub" / "tokenizer.json") == want
    assert _mode(tmp_path / "report.json") == want
    assert _mode(tmp_path / "sub") == MODES[umask][1]  # created parents too
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert json.loads((tmp_path / "report.json").read_text()) == {"a": 1}
    assert sorted(os.listdir(tmp_path)) == ["b.bin", "report.json", "sub"]  # no temp files left


def test_replacing_a_private_file_gives_umask_mode(tmp_path, umask):
    p = tmp_path / "schema.pbtxt"
    p.write_text("old")
    os.chmod(p, 0o600)
    atomic_write_text(p, "new")
    assert p.read_text() == "new" and _mode(p) == MODES[umask][0]


def test_temp_dir_follows_the_umask(tmp_path, umask):
    d = make_temp_dir(tmp_path, prefix="ckpt.tmp-")
    assert os.path.isdir(d) and os.listdir(d) == []
    assert os.path.dirname(d) == str(tmp_path) and os.path.basename(d).startswith("ckpt.tmp-")
    assert _mode(d) == MODES[umask][1]
    assert make_temp_dir(tmp_path, prefix="ckpt.tmp-") != d


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    p = tmp_path / "config.yaml"
    p.write_text("old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(fileio.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(p, "new")
    assert p.read_text() == "old" and os.listdir(tmp_path) == ["config.yaml"]


def test_name_clashes_are_retried(tmp_path, monkeypatch):
    """An existing sibling with the drawn name is never overwritten: the next name is tried."""
    names = iter(["aaaa", "bbbb", "cccc", "dddd"])
    monkeypatch.setattr(fileio.secrets, "token_hex", lambda n: next(names))
    (tmp_path / ".x.json.aaaa.tmp").write_text("someone else's")
    atomic_write_text(tmp_path / "x.json", "mine")
    assert (tmp_path / ".x.json.aaaa.tmp").read_text() == "someone else's"
    assert (tmp_path / "x.json").read_text() == "mine"
    (tmp_path / "d-cccc").mkdir()
    (tmp_path / "d-cccc" / "keep").write_text("k")
    assert make_temp_dir(tmp_path, "d-") == str(tmp_path / "d-dddd")
    assert (tmp_path / "d-cccc" / "keep").read_text() == "k"
    assert sorted(os.listdir(tmp_path)) == [".x.json.aaaa.tmp", "d-cccc", "d-dddd", "x.json"]
