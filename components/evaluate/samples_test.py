import json

from components.evaluate.samples import Sample, read_samples


def test_good_and_malformed_lines_are_all_kept(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_bytes(
        b"\n".join([
            json.dumps({"task_id": "T/0", "completion": "    return 1\n"}).encode(),
            b"{broken",
            json.dumps({"task_id": "T/0"}).encode(),
            json.dumps({"completion": "x"}).encode(),
            json.dumps({"task_id": "T/9", "completion": "x"}).encode(),
            b"\xff\xfe",
            b"",
            json.dumps({"task_id": 7, "completion": "y"}).encode(),
        ]) + b"\n"
    )
    out = read_samples(path, known_tasks={"T/0", "7"})
    assert out[0] == Sample(1, "T/0", "    return 1\n")
    assert out[1].line == 2 and out[1].task_id is None and "not valid JSON" in out[1].error
    assert out[2].task_id == "T/0" and "'completion' missing" in out[2].error
    assert out[3].task_id is None and "'task_id' missing" in out[3].error
    assert "unknown task_id 'T/9'" in out[4].error
    assert out[5].line == 6 and "not UTF-8" in out[5].error
    assert out[6] == Sample(8, "7", "y")  # blank line 7 skipped; int ids become strings
    assert len(out) == 7
