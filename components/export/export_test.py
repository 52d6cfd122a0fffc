"""The serving export: the SavedModel's generate / logits against model/generation and the Keras
model (the references), loading in a fresh process, saved_model_cli, the HF files, the manifest
and the publish into TF Serving's version layout."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from components.export.export import HF_DIR, MANIFEST, SAVED_MODEL_DIR, run_export, stop_and_pad_ids
from configs.training import ExportConfig

CAP = 12


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from components.grpo.testdata import grpo_model_dir

    root = tmp_path_factory.mktemp("export")
    model_dir = grpo_model_dir(str(root / "m"), layers=2, seq=64)
    out, push = str(root / "out"), str(root / "serving")
    manifest = run_export(ExportConfig(max_new_tokens_cap=CAP), model_dir, out, push, {"pipeline": "p"},
                          version="7")
    return model_dir, out, push, manifest


def _left_pad(prompts, pad):
    p = max(map(len, prompts))
    ids = np.full((len(prompts), p), pad, np.int32)
    mask = np.zeros((len(prompts), p), np.int32)
    for i, row in enumerate(prompts):
        ids[i, p - len(row):], mask[i, p - len(row):] = row, 1
    return ids, mask


PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [20]]


def _run(sig, prompts, pad, n, temperature=0.0, top_p=1.0, seed=0):
    ids, mask = _left_pad(prompts, pad)
    out = sig(input_ids=tf.constant(ids), attention_mask=tf.constant(mask), max_new_tokens=tf.constant(n),
              temperature=tf.constant(temperature), top_p=tf.constant(top_p), seed=tf.constant(seed))
    seqs, lengths = out["sequences"].numpy(), out["lengths"].numpy()
    assert seqs.shape == (len(prompts), CAP)
    return [row[:k].tolist() for row, k in zip(seqs, lengths, strict=True)], out


def test_generate_signature_equals_model_generation(exported):
    from model.checkpoint.hf import load_hf_checkpoint
    from model.generation.config import GenerationConfig
    from model.generation.generate import generate

    model_dir, out, _, _ = exported
    stops, pad = stop_and_pad_ids(model_dir)
    sig = tf.saved_model.load(os.path.join(out, SAVED_MODEL_DIR, "7")).signatures["generate"]
    m = load_hf_checkpoint(model_dir)
    # greedy, a batch of ragged prompts: token for token, with the same stop ids
    ref = generate(m, PROMPTS, GenerationConfig(max_new_tokens=10, stop_token_ids=tuple(stops), pad_token_id=pad))
    got, raw = _run(sig, PROMPTS, pad, 10)
    assert got == ref.sequences
    assert raw["finished_by_stop"].numpy().tolist() == [r == "stop" for r in ref.finish_reasons]
    assert (raw["sequences"].numpy()[:, 10:] == pad).all()          # steps past max_new_tokens are pad
    # sampled (temperature, top-p, seed) for one prompt: generate with the same seed
    for seed in (3, 11):
        ref = generate(m, [PROMPTS[0]], GenerationConfig(max_new_tokens=CAP, temperature=0.9, top_p=0.8, seed=seed,
                                                         stop_token_ids=tuple(stops), pad_token_id=pad))
        assert _run(sig, [PROMPTS[0]], pad, CAP, 0.9, 0.8, seed)[0] == ref.sequences
    # a request above the cap is clipped to it
    assert len(_run(sig, [PROMPTS[1]], pad, 10_000)[0][0]) <= CAP


def test_logits_signature_equals_the_forward_pass(exported):
    from model.checkpoint.hf import load_hf_checkpoint

    model_dir, out, _, _ = exported
    sig = tf.saved_model.load(os.path.join(out, SAVED_MODEL_DIR, "7")).signatures["logits"]
    m = load_hf_checkpoint(model_dir)
    for row in PROMPTS:
        got = sig(input_ids=tf.constant([row], tf.int32), attention_mask=tf.ones([1, len(row)], tf.int32))["logits"]
        ref = m(tf.constant([row], tf.int32))
        ref = ref[0] if isinstance(ref, (tuple, list)) else ref
        np.testing.assert_allclose(got.numpy(), np.asarray(ref, np.float32), atol=1e-4)


def test_fresh_process_load_and_saved_model_cli(exported, tmp_path):
    model_dir, out, push, manifest = exported
    sm = os.path.join(out, SAVED_MODEL_DIR, "7")
    # traced on the pure-TF paths: no op of seekline's custom-op library in the graph
    with open(os.path.join(sm, "saved_model.pb"), "rb") as f:
        assert b"Seekline" not in f.read()
    script = (
        "import sys, json, tensorflow as tf\n"
        "m = tf.saved_model.load(sys.argv[1])\n"
        "o = m.signatures['generate'](input_ids=tf.constant([[5, 6, 7]]), attention_mask=tf.constant([[1, 1, 1]]),"
        " max_new_tokens=tf.constant(4), temperature=tf.constant(0.0), top_p=tf.constant(1.0), seed=tf.constant(0))\n"
        "print(json.dumps({'sigs': sorted(m.signatures), 'seq': o['sequences'].numpy().tolist()}))\n")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run([sys.executable, "-c", script, sm], capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["sigs"] == ["generate", "logits", "serving_default"] and len(got["seq"][0]) == CAP
    cli = shutil.which("saved_model_cli") or os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    res = subprocess.run([cli, "show", "--dir", sm, "--all"], capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    for name in ("signature_def['generate']", "signature_def['logits']", "input_ids", "max_new_tokens",
                 "temperature", "top_p", "sequences", "lengths"):
        assert name in res.stdout, name


def test_hf_files_manifest_and_publish(exported):
    model_dir, out, push, manifest = exported
    for f in ("config.json", "model.safetensors", "tokenizer.json"):
        assert open(os.path.join(out, HF_DIR, f), "rb").read() == open(os.path.join(model_dir, f), "rb").read()
    on_disk = json.load(open(os.path.join(out, MANIFEST)))
    assert on_disk == manifest and manifest["version"] == 7 and manifest["pipeline"] == "p"
    assert manifest["saved_model"]["signatures"] == ["generate", "logits", "serving_default"]
    assert manifest["source_model"] == model_dir and manifest["pushed_to"] == os.path.join(push, "7")
    # TF Serving's layout: <base>/<numeric version>/saved_model.pb + variables/, nothing half-written
    assert sorted(os.listdir(push)) == ["7"]
    assert {"saved_model.pb", "variables", "hf"} <= set(os.listdir(os.path.join(push, "7")))
    # the hf/ beside it is what `seekline serve PUSH_DIR` serves (tests/test_serving_cli.py)
    assert open(os.path.join(push, "7", "hf", "model.safetensors"), "rb").read() == \
        open(os.path.join(model_dir, "model.safetensors"), "rb").read()


def test_publish_to_an_object_store_uri(exported):
    from components.export.export import _publish

    _, out, _, _ = exported
    src = os.path.join(out, SAVED_MODEL_DIR, "7")
    dst = _publish(src, "ram://serving_models/m", "7")             # TF's in-memory filesystem
    assert dst == "ram://serving_models/m/7"
    assert tf.io.gfile.exists(dst + "/saved_model.pb") and tf.io.gfile.listdir(dst + "/variables")
    assert not tf.io.gfile.exists(dst + "/hf")                       # no hf given
    assert tf.saved_model.load(dst).signatures["logits"] is not None


def test_bad_inputs(tmp_path, exported):
    from common.errors import InputDataError, UserError

    with pytest.raises(InputDataError, match="not an HF-layout model folder"):
        run_export(ExportConfig(), str(tmp_path), str(tmp_path / "o"), None)
    model_dir = exported[0]
    with pytest.raises(UserError, match="max_new_tokens_cap=64: must be in"):
        run_export(ExportConfig(max_new_tokens_cap=64), model_dir, str(tmp_path / "o"), None)
