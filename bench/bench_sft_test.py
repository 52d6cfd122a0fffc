"""Keeps bench/bench_sft.py runnable without .venv-ref: its data helpers against hand-made cases
and the loss's own target rule, and its seekline side (--quick: SFT padded / packed and online
distillation on a 2-layer `tiny` model, one pass each).

    .venv/bin/python -m pytest bench/bench_sft_test.py -q        # ~30-60 s on 2 cores
"""
import json

import bench_sft as bs
import numpy as np
import pytest
from bench_train_test import restore_determinism  # noqa: F401  (fixture)


def test_examples_are_deterministic_prompt_then_answer():
    ex = bs.make_examples(40, 128, 1000, min_len=16, seed=3)
    again = bs.make_examples(40, 128, 1000, min_len=16, seed=3)
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(ex, again, strict=True))
    assert not np.array_equal(ex[0][0][:16], bs.make_examples(40, 128, 1000, min_len=16, seed=4)[0][0][:16])
    lengths = [len(ids) for ids, _ in ex]
    assert min(lengths) >= 16 and max(lengths) <= 128 and len(set(lengths)) > 10
    for ids, mask in ex:
        assert ids.min() >= 1 and ids.max() < 1000          # never the pad id
        p = int(np.argmax(mask))                             # first assistant token
        assert 1 <= p < len(ids) and not mask[:p].any() and mask[p:].all()


def test_row_counts_hand_case():
    rows = {"segment_ids": np.array([[1, 1, 1, 2, 2, 0], [0, 0, 0, 0, 0, 0]]),
            "loss_mask": np.array([[0, 1, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0]])}
    c = bs.row_counts(rows)
    # targets: positions 1, 2 (example 1) and 4 (example 2); 3 is the first token of example 2
    assert c == {"rows": 1, "row_slots": 2, "tokens": 5, "targets": 3, "padding_share": pytest.approx(7 / 12)}


def test_layouts_hold_the_same_examples_and_targets_match_the_loss():
    import tensorflow as tf

    from model.losses import shift_targets
    ex = bs.make_examples(10, 64, 300, min_len=8, seed=1)
    rows = {lay: bs.layout_rows(ex, 64, 4, packing=(lay == "packed")) for lay in bs.LAYOUTS}
    for lay, r in rows.items():
        assert r["input_ids"].shape[0] % 4 == 0
        got = sorted(tuple(ids[seg == s]) for ids, seg in zip(r["input_ids"], r["segment_ids"], strict=True)
                     for s in np.unique(seg[seg != 0]))
        assert got == sorted(tuple(ids) for ids, _ in ex), lay
        _, valid = shift_targets(tf.constant(r["input_ids"]), tf.constant(r["loss_mask"]), 1,
                                 tf.constant(r["segment_ids"]))
        assert bs.row_counts(r)["targets"] == int(tf.reduce_sum(valid)), lay
    assert bs.row_counts(rows["padded"])["rows"] == 10
    assert bs.row_counts(rows["packed"])["rows"] < 10
    assert bs.row_counts(rows["packed"])["tokens"] == sum(len(ids) for ids, _ in ex)


def test_epoch_summary_and_ratios():
    epochs = [[{"step_s": 1.0, "cpu_s": 2.0}, {"step_s": 1.0, "cpu_s": 2.0}],
              [{"step_s": 2.0, "cpu_s": 3.0}, {"step_s": 2.0, "cpu_s": 3.0}],
              [{"step_s": 3.0, "cpu_s": 4.0}, {"step_s": 3.0, "cpu_s": 4.0}]]
    s = bs.epoch_summary(epochs, {"rows": 8, "tokens": 400, "targets": 100})
    assert s["median_s"] == 4.0 and s["min_s"] == 2.0 and s["spread"] == 3.0 and s["steps_per_epoch"] == 2
    assert s["tokens_per_s"] == 100.0 and s["tokens_per_s_best"] == 200.0 and s["tokens_per_cpu_s"] == 400 / 6
    assert s["rows_per_s"] == 2.0 and s["targets_per_s"] == 25.0
    r = bs.ratios(s, dict(s, tokens_per_s=50.0, tokens_per_s_best=400.0, tokens_per_cpu_s=400 / 3))
    assert r == {"ratio": 2.0, "ratio_best": 0.5, "ratio_cpu_time": pytest.approx(0.5)}


def test_quick_seekline_side(tmp_path, restore_determinism):  # noqa: F811
    out = tmp_path / "sft.json"
    bs.main(["--quick", "--skip-reference", "--out", str(out)])
    r = json.loads(out.read_text())["sft"]
    assert set(r["seekline"]) == {"sft_padded", "sft_packed", "distill"} and "transformers" not in r
    for w, s in r["seekline"].items():
        assert s["all_finite"] and s["traces_after_all_steps"] == 1, w       # no retrace across steps
        layout = r["layouts"][bs.layout_of(w)]
        assert s["tokens_per_s"] == pytest.approx(layout["tokens"] / s["median_s"])
        # the engine's own real-token count over one pass equals the rows'
        assert r["engine_token_count_check"][w]["engine"] == layout["tokens"], w
    assert r["seekline"]["sft_packed"]["steps_per_epoch"] < r["seekline"]["sft_padded"]["steps_per_epoch"]
    assert r["layouts"]["packed"]["targets"] == r["layouts"]["padded"]["targets"] > 0
    assert r["packed_over_padded"]["seekline"]["ratio"] > 0


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
