"""The sampled-action validity term: the reward on hand-written action lines, the Action prompt
cut on a hand-made row, the sampling schedule, the loss against numpy, the direction of one
policy-gradient update, and the batch source on rows the agent dataset builder made (same rows
as the engine's own stream; rollout features whose advantages follow from their decoded rewards)."""
import json

import numpy as np
import pytest
import tensorflow as tf

from common.errors import ConfigError
from training.strategy import make_runtime
from training.testdata import agent_trajectory

RT = make_runtime("one_device", "fp32")

from components.agent.action_reward import action_reward  # noqa: E402  (tests may drive a layer from above)
from model.decoder import build_model  # noqa: E402
from training import agent_validity as av  # noqa: E402
from training.grpo_objective import group_advantages  # noqa: E402
from training.testing_worker import tiny_model_config, trainer_config  # noqa: E402

TOOLS = ("python", "retrieve", "finish")


def reward_fn(text):
    return action_reward(text, TOOLS)


@pytest.mark.parametrize("text,reward", [
    (' {"name": "python", "arguments": {"code": "print(1)"}}\n', 1.0),
    (' {"name": "finish", "arguments": {"answer": "16"}}', 1.0),                 # no line break: ran to the end
    (' {"name": "finish", "arguments": {"answer": "16"}} trailing', 1.0),        # the loop reads the object only
    (' {"name": "search", "arguments": {"q": "x"}}\n', 0.0),                     # not a registry tool
    (' {"name": "finish", "arguments": "16"}\n', 0.0),                           # arguments not an object
    (' {"name": "finish", "arguments": "{\\"answer\\": 1}"}\n', 0.0),            # a JSON string holding one
    (' {"name": "finish", "arguments": {"answer": "arguments": {"answer": "0"}}\n', 0.0),   # broken skeleton
    (' {"name": "python", "arguments": {"code": "def f_1_1_1_1', 0.0),         # runaway string, never closed
    (' x {"name": "finish", "arguments": {"answer": "1"}}\n', 0.0),             # text before the object
    ('\n{"name": "finish", "arguments": {"answer": "1"}}', 0.0),                # only the first line counts
    (' {"name": "finish", "arguments": {"answer": "1"},}\n', 0.0),              # not JSON
])
def test_action_reward_hand_cases(text, reward):
    assert action_reward(text, TOOLS) == reward


def test_action_prompt_ends_cut_after_the_action_label():
    pieces = {1: "Thought", 2: ":", 3: " x", 4: "\n", 5: "Action", 6: " {", 7: "}", 8: "Observation", 9: " 3"}
    #            0  1  2  3  4  5  6  7  8  9 10 11 12 13 14 15 16
    ids = np.array([1, 2, 3, 4, 5, 2, 6, 7, 4, 8, 2, 9, 4, 6, 7, 4, 8])
    act = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1])
    # run 1 holds "\nAction:" -> cut after position 5; run 2 is the JSON alone -> its start, 13
    assert av.action_prompt_ends(ids, act, pieces.get) == [6, 13]
    assert av.action_prompt_ends(ids, np.zeros_like(act), pieces.get) == []
    # a run at position 0 without a label leaves no context to prompt with
    assert av.action_prompt_ends(np.array([6, 7]), np.array([1, 1]), pieces.get) == []


def test_samples_at_schedule():
    spec = av.ValiditySpec(weight=1.0, every=3, start_fraction=0.5)
    assert [s for s in range(20) if spec.samples_at(s, 20)] == [10, 13, 16, 19]
    assert not any(av.ValiditySpec(weight=0.0).samples_at(s, 20) for s in range(20))
    assert [s for s in range(4) if av.ValiditySpec(weight=1.0, every=1, start_fraction=0).samples_at(s, 4)] == \
        [0, 1, 2, 3]
    for bad in ({"weight": -1}, {"group_size": 1}, {"every": 0}, {"start_fraction": 1.5}, {"temperature": 0}):
        with pytest.raises(ConfigError):
            av.ValiditySpec(**bad)


def _rollout_batch(v, m=2, k=2, length=7, seed=0):
    """Rollout features (M, K, L) of a fixture: prompts of 3 tokens, completions of 1..4 tokens."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, v, size=(m, k, length))
    seg, pos, mask = np.zeros_like(ids), np.zeros_like(ids), np.zeros((m, k, length), np.float32)
    for i in range(m):
        for j in range(k):
            n = 3 + 1 + (i * k + j) % 4                  # real tokens in the row
            seg[i, j, :n], pos[i, j, :n], mask[i, j, 3:n] = 1, np.arange(n), 1.0
    adv = rng.normal(size=(m, k)).astype(np.float32)
    return {av.ROLLOUT_IDS: ids, av.ROLLOUT_SEG: seg, av.ROLLOUT_POS: pos, av.ROLLOUT_MASK: mask,
            av.ROLLOUT_ADV: adv}


def test_validity_loss_matches_numpy():
    cfg = tiny_model_config(1)
    model = build_model(cfg, seed=3)
    b = _rollout_batch(cfg.vocab_size)
    tau = 0.7
    loss, metrics = av.validity_loss(model, {k: tf.constant(x) for k, x in b.items()}, tau)
    n, length = 4, b[av.ROLLOUT_IDS].shape[-1]
    ids = b[av.ROLLOUT_IDS].reshape(n, length)
    logits = model.forward(tf.constant(ids), position_ids=tf.constant(b[av.ROLLOUT_POS].reshape(n, length)),
                           segment_ids=tf.constant(b[av.ROLLOUT_SEG].reshape(n, length)),
                           training=False)["logits"].numpy().astype(np.float64) / tau    # (N, L, V)
    lsm = logits - logits.max(-1, keepdims=True)
    lsm = lsm - np.log(np.exp(lsm).sum(-1, keepdims=True))
    mask, adv = b[av.ROLLOUT_MASK].reshape(n, length), b[av.ROLLOUT_ADV].reshape(n)
    total = sum(adv[r] * lsm[r, t - 1, ids[r, t]] for r in range(n) for t in range(1, length) if mask[r, t])
    want = -total / mask.sum()
    np.testing.assert_allclose(float(loss), want, rtol=1e-4, atol=1e-6)
    assert float(metrics["validity_loss"]) == float(loss)


def test_one_update_raises_the_rewarded_sample_and_lowers_the_other():
    """Two rollout rows of one group: A = +1 on row 0, −1 on row 1. One SGD step on L_valid raises
    row 0's completion log-prob and lowers row 1's."""
    cfg = tiny_model_config(1)
    model = build_model(cfg, seed=4)
    b = _rollout_batch(cfg.vocab_size, m=1, k=2, seed=2)
    b[av.ROLLOUT_ADV] = np.array([[1.0, -1.0]], np.float32)
    tb = {k: tf.constant(x) for k, x in b.items()}

    def seq_logp():
        from training.grpo_objective import token_logprobs
        ids = tf.reshape(tb[av.ROLLOUT_IDS], [2, -1])
        out = model.forward(ids, position_ids=tf.reshape(tb[av.ROLLOUT_POS], [2, -1]),
                            segment_ids=tf.reshape(tb[av.ROLLOUT_SEG], [2, -1]), training=False)
        lp = token_logprobs(out["logits"], ids) * tf.reshape(tb[av.ROLLOUT_MASK], [2, -1])
        return tf.reduce_sum(lp, -1).numpy()

    before = seq_logp()
    with tf.GradientTape() as tape:
        loss, _ = av.validity_loss(model, tb, 1.0)
    grads = tape.gradient(loss, model.trainable_variables)
    for v, g in zip(model.trainable_variables, grads, strict=True):
        if g is not None:
            v.assign_sub(0.05 * tf.convert_to_tensor(g))
    after = seq_logp()
    assert after[0] > before[0] and after[1] < before[1], (before, after)


# ------------------------------------------------------------------ the batch source on built rows
@pytest.fixture(scope="module")
def agent_data(tmp_path_factory):
    from components.agent.dataset import build_agent_dataset_files
    from components.grpo.testdata import grpo_model_dir
    from components.tokenizer.tokenizer import load
    from training.data import open_packed

    root = tmp_path_factory.mktemp("validity")
    model_dir = grpo_model_dir(str(root), seq=176, layers=1)
    src = root / "traj.jsonl"
    src.write_text("".join(json.dumps(agent_trajectory(a, b)) + "\n" for a in range(1, 7) for b in range(2, 6)))
    build_agent_dataset_files(str(src), str(root / "rows"), tokenizer_path=model_dir, seq_len=176,
                              eval_fraction=0.25, seed=1)
    return model_dir, open_packed(str(root / "rows")), load(f"{model_dir}/tokenizer.json")


def test_source_rows_and_rollouts(agent_data, tmp_path):
    import model as model_core
    from training.agent_losses import AgentLossSpec
    from training.agent_task import AgentDistillTask
    from training.data import train_stream
    from training.loop import Trainer

    model_dir, data, tok = agent_data
    cfg = trainer_config(steps=4, checkpoint_every=4, lr=1e-3, eval_batches=1)
    spec = av.ValiditySpec(weight=1.0, every=2, start_fraction=0.0, prompts=cfg.micro_batch_size, group_size=2,
                           max_new_tokens=24)
    task = AgentDistillTask(AgentLossSpec(), validity_weight=1.0)
    tr = Trainer(cfg, RT, lambda: model_core.load_hf_checkpoint(model_dir), task, str(tmp_path))
    src = av.ValiditySource(tr, data, spec, tok, reward_fn)
    own = train_stream(data.train_files, data.seq_len, micro_batch=cfg.micro_batch_size, accum=cfg.grad_accum_steps,
                       num_replicas=1, seed=cfg.seed, shuffle_buffer=cfg.shuffle_buffer,
                       num_rows=data.num_rows("train"), replica_range=(0, 1)).as_numpy_iterator()
    b0, host = src.batch(0)
    np.testing.assert_array_equal(b0["input_ids"], next(own)["input_ids"])     # the engine's rows, in order
    m, k = cfg.micro_batch_size, 2
    assert b0[av.ROLLOUT_IDS].shape == (1, m, k, data.seq_len) and b0[av.ROLLOUT_ADV].shape == (1, m, k)
    ids, mask = b0[av.ROLLOUT_IDS].reshape(m * k, -1), b0[av.ROLLOUT_MASK].reshape(m * k, -1)
    rewards = []
    for r in range(m * k):
        first = int(np.argmax(mask[r]))
        assert tok.decode(ids[r, :first].tolist(), skip_special_tokens=False).endswith("Action:")
        rewards.append(action_reward(tok.decode(ids[r, mask[r] > 0].tolist(), skip_special_tokens=False), TOOLS))
    want = group_advantages(np.array(rewards), 2).advantages
    np.testing.assert_allclose(b0[av.ROLLOUT_ADV].reshape(-1), want, rtol=1e-6)
    assert host["validity_reward"] == pytest.approx(np.mean(rewards))
    b1, host1 = src.batch(1)                                                   # not a sampling step
    assert av.ROLLOUT_IDS not in b1 and host1 == {}
    np.testing.assert_array_equal(b1["input_ids"], next(own)["input_ids"])

    res = av.fit_with_validity(Trainer(cfg, RT, lambda: model_core.load_hf_checkpoint(model_dir), task,
                                       str(tmp_path / "run")), data, spec, tok, reward_fn, progress=False)
    assert res.steps == 4 and res.nonfinite_steps == 0 and "eval_sad" in res.final_eval
