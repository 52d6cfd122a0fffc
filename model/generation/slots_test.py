"""Slots (continuous batching blocks) against generate(): rows that join a running batch at
different steps, in different slots, with different sampling settings, each produce exactly
what generate() produces for that prompt alone."""
import numpy as np
import pytest
import tensorflow as tf

from model.conftest import load_fixture_model
from model.generation import GenerationConfig, generate, left_pad, prefill
from model.generation.sampling import select_next
from model.generation.slots import TOP_LOGPROBS, insert_rows, select_first, select_next_rows, slot_step


def test_select_next_rows_equals_select_next_per_row():
    rng = np.random.default_rng(0)
    logits = tf.constant(rng.normal(size=(5, 50)).astype(np.float32) * 3)
    temp = [0.0, 0.7, 1.3, 1.0, 0.9]
    top_k = [0, 0, 5, 1, 0]
    top_p = [1.0, 0.9, 1.0, 1.0, 0.5]
    seeds, steps = [3, 4, 5, 6, 7], [0, 2, 9, 1, 4]
    got = select_next_rows(logits, tf.constant(temp), tf.constant(top_k), tf.constant(top_p),
                           tf.constant(seeds), tf.constant(steps)).numpy()
    for i in range(5):
        want = select_next(logits[i:i + 1], temp[i], top_k[i], top_p[i], tf.constant([seeds[i], steps[i]]))
        assert got[i] == int(want.numpy()[0]), i
    assert got[0] == int(np.argmax(logits.numpy()[0]))
    assert got[3] == int(np.argmax(logits.numpy()[3]))   # top-k 1 is greedy


def _run_slots(m, jobs, n_slots, s_max, bucketed=False):
    """Drive the slot functions the way serving/engine.py does. jobs: (arrive_step, prompt, n_new,
    temperature, top_p, seed). Each job is prefilled alone when it arrives, copied into the lowest
    free slot, and decoded with everyone else. -> {job index: generated ids}."""
    cache = m.init_cache(n_slots, s_max, m.compute_dtype)
    key_valid = tf.zeros([n_slots, s_max], tf.int32)
    tok = np.zeros(n_slots, np.int32)
    write = np.zeros(n_slots, np.int32)
    pos = np.zeros(n_slots, np.int32)
    steps = np.zeros(n_slots, np.int32)
    temp = np.zeros(n_slots, np.float32)
    top_p = np.ones(n_slots, np.float32)
    seeds = np.zeros(n_slots, np.int32)
    owner = [None] * n_slots
    out = {}
    step = 0
    pending = sorted(range(len(jobs)), key=lambda j: jobs[j][0])
    while pending or any(o is not None for o in owner):
        for j in [j for j in pending if jobs[j][0] <= step and None in owner]:
            _, prompt, _, t, p, seed = jobs[j]
            slot = owner.index(None)
            ids, mask = left_pad([prompt], 0)
            logits, new_cache, new_kv, next_pos = prefill(m, ids, mask, s_max)
            cache, key_valid = insert_rows(m, cache, key_valid, new_cache, new_kv, [slot])
            first, lp, top_v, top_i = select_first(m, logits, [t], [0], [p], [seed], [0])
            assert top_v.shape == (1, TOP_LOGPROBS) and np.isclose(lp[0], top_v[0][top_i[0] == first[0]]).all()
            owner[slot], out[j] = j, [int(first[0])]
            tok[slot], write[slot], pos[slot], steps[slot] = first[0], len(prompt), next_pos[0], 1
            temp[slot], top_p[slot], seeds[slot] = t, p, seed
            pending.remove(j)
        active = [i for i, o in enumerate(owner) if o is not None]
        for i in active:                                   # retire finished rows at the boundary
            if len(out[owner[i]]) == jobs[owner[i]][2]:
                owner[i] = None
        if any(o is not None for o in owner):
            # bucketed: step only the leading slots that hold every active row (as the engine does)
            r = max(i for i, o in enumerate(owner) if o is not None) + 1 if bucketed else n_slots
            r = 1 if r == 1 else (2 if r == 2 else n_slots)
            nxt, _, _, _, cache, key_valid = slot_step(m, tok[:r], cache, write[:r], pos[:r], key_valid, temp[:r],
                                                       np.zeros(r, np.int32), top_p[:r], seeds[:r], steps[:r],
                                                       rows=None if r == n_slots else r)
            assert cache[0][0].shape[0] == n_slots and key_valid.shape[0] == n_slots
            for i, o in enumerate(owner[:r]):
                if o is not None:
                    out[o].append(int(nxt[i]))
            tok[:r], write[:r], pos[:r], steps[:r] = nxt, write[:r] + 1, pos[:r] + 1, steps[:r] + 1
        step += 1
    return out


@pytest.mark.parametrize("bucketed", [False, True])
def test_rows_joining_a_running_batch_equal_generate_alone(bucketed):
    m = load_fixture_model("dsv3_qlora")
    jobs = [(0, [5, 9, 13, 200, 7, 3], 7, 0.0, 1.0, 0),
            (2, [42, 17], 5, 0.0, 1.0, 0),              # joins mid-run
            (3, [100, 4, 8], 6, 0.9, 0.8, 11),           # sampled, own seed
            (4, [7, 7, 7], 4, 0.0, 1.0, 0)]              # waits for a free slot
    got = _run_slots(m, jobs, n_slots=3, s_max=24, bucketed=bucketed)
    for j, (_, prompt, n, t, p, seed) in enumerate(jobs):
        want = generate(m, [prompt], GenerationConfig(max_new_tokens=n, temperature=t, top_p=p, seed=seed))
        assert got[j] == want.sequences[0], j


def test_insert_rows_copies_only_the_given_slots():
    m = load_fixture_model("qwen2_gqa_tied")
    cache = m.init_cache(3, 8)
    kv = tf.zeros([3, 8], tf.int32)
    new = [tuple(tf.ones_like(t[:1]) for t in layer) for layer in cache]
    cache2, kv2 = insert_rows(m, cache, kv, new, tf.ones([1, 8], tf.int32), [1])
    assert cache2[0][0].numpy()[1].min() == 1 and cache2[0][0].numpy()[[0, 2]].max() == 0
    np.testing.assert_array_equal(kv2.numpy().sum(1), [0, 8, 0])
