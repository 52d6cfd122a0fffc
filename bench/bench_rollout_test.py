"""Helper arithmetic of bench/bench_rollout.py against hand-made cases, and its seekline side
(--quick --skip-reference: a 2-prompt x 4-completion tiny rollout, both compile modes).

    .venv/bin/python -m pytest bench/bench_rollout_test.py -q      # ~15 s on 2 cores
"""
import json

import bench_rollout as br
import pytest


def test_row_spec_parse():
    s = br.RowSpec.parse("tiny:8x8:32-128:128")
    assert (s.preset, s.prompts, s.group, s.min_len, s.max_len, s.new_tokens) == ("tiny", 8, 8, 32, 128, 128)
    assert s.rows == 64 and s.tokens == 64 * 128
    for bad in ("tiny:8x8:32-128", "tiny:8:32-128:64", "tiny:8x8:128-32:64", "tiny:0x8:1-2:3"):
        with pytest.raises(SystemExit, match="--row"):
            br.RowSpec.parse(bad)


def test_rollout_prompts_repeat_each_prompt_g_times():
    spec = br.RowSpec("tiny", 3, 4, 5, 9, 2)
    p = br.rollout_prompts(spec, vocab_size=50, seed=1)
    assert len(p) == 12
    for i in range(3):
        group = p[4 * i:4 * i + 4]
        assert all(g == group[0] for g in group)                 # G copies of one prompt
        assert 5 <= len(group[0]) <= 9 and min(group[0]) >= 2 and max(group[0]) < 50
    assert p[0] != p[4] and p == br.rollout_prompts(spec, vocab_size=50, seed=1)


def test_count_generated_requires_exact_length():
    assert br.count_generated([[1, 2, 3], [4, 5, 6]], 3) == 6
    with pytest.raises(SystemExit, match=r"\[2, 3\] tokens, expected 3"):
        br.count_generated([[1, 2, 3], [4, 5]], 3)


def test_distinct_in_groups():
    seqs = [[1], [1], [2], [3],          # group 1: 3 distinct of 4
            [5], [5], [5], [5]]          # group 2: 1 of 4
    assert br.distinct_in_groups(seqs, 4) == pytest.approx((3 / 4 + 1 / 4) / 2)


def test_rate_summary_and_ratios():
    recs = [{"generate_s": t, "prefill_s": t / 10, "decode_s": t / 2, "cpu_s": 2 * t} for t in (2.0, 1.0, 4.0)]
    s = br.rate_summary(recs, tokens=100)
    assert s["median_s"] == 2.0 and s["min_s"] == 1.0 and s["spread"] == 4.0
    assert s["tokens_per_s"] == 50.0 and s["tokens_per_s_best"] == 100.0 and s["tokens_per_cpu_s"] == 25.0
    assert s["prefill_s_median_s"] == pytest.approx(0.2)
    t = {"tokens_per_s": 10.0, "tokens_per_s_best": 40.0, "tokens_per_cpu_s": 5.0}
    assert br.ratios(s, t) == {"ratio": 5.0, "ratio_best": 2.5, "ratio_cpu": 5.0}


def test_round_order_rotates_every_side_through_every_slot():
    orders = [br.round_order(r) for r in range(3)]
    assert all(sorted(o) == sorted(br.SIDES) for o in orders)
    assert {o[0] for o in orders} == set(br.SIDES) and br.round_order(3) == orders[0]


def test_quick_seekline_side(tmp_path):
    out = tmp_path / "rollout.json"
    br.main(["--quick", "--skip-reference", "--out", str(out)])
    res = json.loads(out.read_text())
    (row,) = res["rows"]
    assert set(row["sides"]) == {"seekline", "seekline_xla"}
    for s in row["sides"].values():
        assert s["records"][0]["tokens"] == 8 * 16
        assert s["distinct_in_groups"] > 0.25                   # sampled: not one completion 4 times
        assert s["tokens_per_s"] > 0
