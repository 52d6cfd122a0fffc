import numpy as np
import tensorflow as tf

from model.config import ModelConfig
from model.decoder import DecoderLM, build_model


def test_tiny_forward_shapes_and_aux_outputs():
    cfg = ModelConfig.from_preset("tiny")
    m = build_model(cfg, seed=0)
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(2, 7)).astype(np.int32)
    assert m(ids).shape == (2, 7, cfg.vocab_size)
    out = m.forward(ids, return_router=True, with_mtp=True)
    n_moe = sum(cfg.is_moe_layer(i) for i in range(cfg.num_hidden_layers + cfg.num_nextn_predict_layers))
    assert len(out["router"]) == n_moe == len(m.moe_layers())
    assert out["router"][0].topk_idx.shape == (14, cfg.num_experts_per_tok)
    assert len(out["mtp_logits"]) == cfg.num_nextn_predict_layers
    assert out["mtp_logits"][0].shape == (2, 7, cfg.vocab_size)
    np.testing.assert_allclose(out["logits"].numpy(), m(ids).numpy(), atol=1e-6)


def test_eager_inference_call_equals_plain_forward_and_keeps_length_check():
    """Eager m(ids) runs a cached tf.function; the reference is the plain (untraced) forward."""
    import pytest
    m = build_model("tiny", seed=0)
    rng = np.random.default_rng(4)
    for t in (5, 9, 12):            # the third length runs the shape-relaxed trace
        ids = rng.integers(0, 256, size=(2, t)).astype(np.int32)
        mask = np.ones_like(ids)
        mask[1, :2] = 0
        want = m.forward(ids, attention_mask=mask)["logits"].numpy()
        np.testing.assert_allclose(m(ids, attention_mask=mask).numpy(), want, atol=1e-6)
    too_long = np.zeros((1, m.cfg.max_position_embeddings + 1), np.int32)
    with pytest.raises(ValueError, match="exceeds the model's max context"):
        m(too_long)


def test_training_call_is_not_the_cached_inference_function():
    from model import decoder
    m = build_model("tiny", seed=0)
    ids = np.zeros((1, 4), np.int32)
    m(ids, training=True)
    assert m not in decoder._INFERENCE_FORWARD
    m(ids)
    assert m in decoder._INFERENCE_FORWARD


def test_left_padding_does_not_change_real_rows():
    for preset in ("tiny", "tiny-qwen2"):
        m = build_model(preset, seed=1)
        seq = np.array([[5, 6, 7, 8]], np.int32)
        alone = m(seq).numpy()[0]
        padded = np.array([[0, 0, 5, 6, 7, 8]], np.int32)
        mask = np.array([[0, 0, 1, 1, 1, 1]], np.int32)
        got = m(padded, attention_mask=mask).numpy()[0, 2:]
        np.testing.assert_allclose(got, alone, rtol=1e-4, atol=1e-5)


def test_causality():
    m = build_model("tiny", seed=2)
    a = np.array([[3, 4, 5, 6, 7]], np.int32)
    b = np.array([[3, 4, 5, 9, 9]], np.int32)
    np.testing.assert_allclose(m(a).numpy()[0, :3], m(b).numpy()[0, :3], atol=1e-6)


def test_mtp_uses_shared_embedding_and_head():
    cfg = ModelConfig.from_preset("tiny")
    m = build_model(cfg, seed=3)
    names = [w.path for w in m.mtp[0].weights]
    assert not any("embed" in n or "lm_head" in n for n in names)


def test_gradients_reach_every_trainable_weight():
    m = build_model("tiny", seed=4)
    ids = np.random.default_rng(1).integers(0, 256, size=(2, 12)).astype(np.int32)
    with tf.GradientTape() as tape:
        out = m.forward(ids, with_mtp=True, training=True)
        loss = tf.reduce_mean(out["logits"] ** 2) + tf.reduce_mean(out["mtp_logits"][0] ** 2)
    grads = tape.gradient(loss, m.trainable_weights)
    missing = [w.path for w, g in zip(m.trainable_weights, grads, strict=False) if g is None]
    # an expert no token was routed to legitimately gets a zero (not None) gradient
    assert not missing, missing
    assert all(not w.trainable for w in m.weights if "e_score_correction_bias" in w.path)


def test_get_config_rebuilds_same_architecture():
    m = build_model("tiny-qwen2", seed=5)
    clone = DecoderLM.from_config(m.get_config())
    assert [tuple(w.shape) for w in clone.weights] == [tuple(w.shape) for w in m.weights]


def test_one_training_step_with_all_hooks():
    """Smoke test of what the trainer does: LM + MTP + sequence aux loss, one optimizer step,
    then the aux-loss-free bias update from the step's expert loads."""
    import keras

    from model.balance import layer_loads, update_routing_bias
    from model.losses import causal_lm_loss, mtp_loss, total_sequence_aux_loss
    m = build_model("tiny", seed=6)
    cfg = m.cfg
    ids = tf.constant(np.random.default_rng(2).integers(0, 256, size=(2, 16)).astype(np.int32))
    opt = keras.optimizers.Adam(1e-2)
    losses = []
    for _ in range(3):
        with tf.GradientTape() as tape:
            out = m.forward(ids, training=True, return_router=True, with_mtp=True)
            loss = (causal_lm_loss(out["logits"], ids) + mtp_loss(out["mtp_logits"], ids, weight=0.3)
                    + total_sequence_aux_loss(out["router"], 2, 16, cfg.num_experts_per_tok))
        grads = tape.gradient(loss, m.trainable_weights)
        opt.apply_gradients(zip(grads, m.trainable_weights, strict=False))
        update_routing_bias(m, layer_loads(out["router"], cfg.n_routed_experts), gamma=1e-3)
        losses.append(float(loss))
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert any(np.abs(x.e_score_correction_bias.numpy()).sum() > 0 for x in m.moe_layers())


def test_keras_save_and_savedmodel_round_trip(tmp_path):
    import keras
    m = build_model("tiny", seed=7)
    ids = np.random.default_rng(3).integers(0, 256, size=(2, 6)).astype(np.int32)
    want = m(ids).numpy()
    m.save(str(tmp_path / "m.keras"))
    again = keras.models.load_model(str(tmp_path / "m.keras"))
    np.testing.assert_allclose(again(ids).numpy(), want, atol=1e-6)

    class Serve(tf.Module):   # what a TF Serving export wraps
        def __init__(self, lm):
            self.lm = lm

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32)])
        def logits(self, token_ids):
            return self.lm(token_ids)
    tf.saved_model.save(Serve(m), str(tmp_path / "sm"))
    served = tf.saved_model.load(str(tmp_path / "sm"))
    np.testing.assert_allclose(served.logits(tf.constant(ids)).numpy(), want, atol=1e-6)
