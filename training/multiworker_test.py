"""Two workers under MultiWorkerMirroredStrategy train exactly what one process does.

Each worker is a separate process on localhost (TF_CONFIG, free ports), micro batch 2 on each =
global batch 4; the reference is one process with micro batch 4 on one device. Both read the
same global row stream (training/data.py), weight each micro-batch loss by its share of the
global targets and all-reduce gradients, so only float summation order differs.

Measured after 3 steps (lr 5e-3, tiny model, fp32 CPU): max |chief - single| = 4.8e-6 over all
weights, routing biases equal. Tolerance atol 5e-5: 10× the measured difference, far below one
Adam step (~lr = 5e-3) or one routing-bias step (γ = 1e-3), so a replica seeing the wrong rows,
a double all-reduce or a missed bias update fails it.
"""
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from training.testdata import write_packed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 420
STEPS = 3


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _launch(tmp_path, name, strategy, micro, output, tf_config=None):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="")
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    log = open(tmp_path / f"{name}.log", "w")
    cmd = [sys.executable, "-m", "training.testing_worker", "--data", str(tmp_path / "data"),
           "--output", str(output), "--strategy", strategy, "--micro", str(micro),
           "--steps", str(STEPS), "--npz", str(tmp_path / f"{name}.npz")]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    return name, proc, log


def _wait_all(tmp_path, procs):
    """Wait for every process; on a timeout or any failure kill the rest (a worker whose peer
    died blocks in a collective forever) and fail with the logs' tails."""
    deadline = time.monotonic() + TIMEOUT_S
    failed = None
    try:
        # Poll all of them: the first failure ends the wait, whichever process it is.
        while True:
            bad = [(n, p.returncode) for n, p, _ in procs if p.poll() not in (None, 0)]
            if bad:
                failed = f"{bad[0][0]} exited with {bad[0][1]}"
                break
            if all(p.poll() is not None for _, p, _ in procs):
                break
            if time.monotonic() > deadline:
                failed = f"still running after {TIMEOUT_S} s"
                break
            time.sleep(0.5)
    finally:
        for _, proc, log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    if failed:
        tails = "\n".join(f"--- {n}\n" + "\n".join((tmp_path / f"{n}.log").read_text().splitlines()[-15:])
                          for n, _, _ in procs)
        pytest.fail(f"{failed}\n{tails}")


def _losses(path):
    return [r["loss"] for r in map(json.loads, open(path)) if "loss" in r]


@pytest.mark.slow
def test_two_workers_match_one_process(tmp_path):
    write_packed(str(tmp_path / "data"), 32, 256, train_rows=24, eval_rows=8)
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    run = tmp_path / "run"           # one output folder, as a shared cluster volume would be
    procs = [_launch(tmp_path, f"worker{i}", "multi_worker", 2, run,
                     {"cluster": cluster, "task": {"type": "worker", "index": i}}) for i in range(2)]
    procs.append(_launch(tmp_path, "single", "one_device", 4, tmp_path / "single"))
    _wait_all(tmp_path, procs)

    assert "replicas=2 steps=3 nonfinite=0" in (tmp_path / "worker0.log").read_text()
    chief, single = np.load(tmp_path / "worker0.npz"), np.load(tmp_path / "single.npz")
    assert not (tmp_path / "worker1.npz").exists()           # only the chief reports
    assert chief.files == single.files
    diff = max(float(np.abs(chief[k] - single[k]).max()) for k in chief.files)
    assert diff < 5e-5, f"max |chief - single| = {diff}"
    # The runs really trained (not two copies of the initial weights): the loss moved and the
    # routing biases, zero at init, were updated.
    losses = _losses(run / "metrics.jsonl")
    assert len(losses) == STEPS and losses[-1] < losses[0]
    np.testing.assert_allclose(losses, _losses(tmp_path / "single" / "metrics.jsonl"), rtol=1e-5)
    biases = [k for k in chief.files if k.endswith("e_score_correction_bias")]
    assert biases and all(np.abs(chief[k]).max() > 0 for k in biases)
    # Checkpoints are the chief's; the other worker's scratch copy was removed.
    ckpts = sorted(n for n in os.listdir(run / "checkpoints") if n.endswith(".index"))
    assert ckpts == ["ckpt-2.index", "ckpt-3.index"]
    assert not any(n.startswith(".worker-") for n in os.listdir(run))
