"""`seekline doctor`: each check against fakes of the environment (version tuples, fake
`kubectl` / `nvidia-smi` scripts on PATH, loopback KFP servers), and the command end to end."""
from __future__ import annotations

import json
import os
import shutil
import stat
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata

from pipelines import cli
from pipelines import doctor_cli as dr
from tests.kfp_fake import FakeKFP


def test_python_version():
    assert dr.check_python((3, 10)).status == dr.PASS
    c = dr.check_python((3, 11))
    assert c.status == dr.FAIL and "3.11" in c.detail and "pyenv install 3.10" in c.fix


def test_pins_are_read_from_the_lock_file(tmp_path):
    f = tmp_path / "constraints.txt"
    f.write_text("# lock\ntensorflow==2.16.2\ntfx == 1.16.0 ; python_version<'3.11'\nApache_Beam==2.74.0\nkfp>=2\n")
    assert dr.read_pins(f) == {"tensorflow": "2.16.2", "tfx": "1.16.0", "apache-beam": "2.74.0"}


def test_pins_compare_installed_versions():
    pins = {"tensorflow": "2.16.2", "tfx": "1.16.0", "kfp": "2.5.0"}
    installed = {"tensorflow": "2.16.2", "tfx": "1.15.0", "kfp": None, "apache-beam": "2.74.0"}
    got = {c.name: c for c in dr.check_pins(pins, installed.get)}
    assert got["tensorflow"].status == dr.PASS
    assert got["tfx"].status == dr.FAIL and "1.15.0 installed" in got["tfx"].detail and "tfx==1.16.0" in got["tfx"].fix
    assert got["kfp"].status == dr.FAIL and "not installed" in got["kfp"].detail
    assert got["apache-beam"].status == dr.SKIP  # not pinned in this lock


def test_this_venv_matches_the_lock():
    # The real .venv was installed from constraints.txt: every pin matches what pip reports.
    checks = dr.check_pins(dr.read_pins())
    assert [c.status for c in checks] == [dr.PASS] * len(dr.PINNED)
    assert checks[0].detail == metadata.version("tensorflow")


def _script(dirpath, name, body):
    p = dirpath / name
    p.write_text("#!/bin/sh\n" + body)
    p.chmod(p.stat().st_mode | stat.S_IEXEC)
    return str(p)


def test_accelerators(tmp_path):
    no_smi = lambda _: None  # noqa: E731
    assert dr.check_accelerators(lambda: [], no_smi).status == dr.WARN  # CPU only is fine
    assert dr.check_accelerators(lambda: ["GPU:0", "GPU:1"], no_smi).detail == "TF sees 2 GPU(s)"
    smi = _script(tmp_path, "nvidia-smi", 'echo "NVIDIA H200"\n')
    c = dr.check_accelerators(lambda: [], lambda _: smi)
    assert c.status == dr.FAIL and "nvidia-smi lists 1 GPU(s) (NVIDIA H200) but TF sees none" in c.detail
    assert dr.check_accelerators(lambda: ["GPU:0"], lambda _: smi).detail == "TF sees 1 GPU(s): NVIDIA H200"


def test_disk(tmp_path):
    free_gb = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize / 2**30
    c = dr.check_disk(str(tmp_path / "not" / "yet"), min_free_gb=0)
    assert c.status == dr.PASS and str(tmp_path) in c.detail  # the nearest existing parent
    assert abs(float(c.detail.split()[0]) - free_gb) < 0.2
    c = dr.check_disk(str(tmp_path), min_free_gb=free_gb + 1000)
    assert c.status == dr.FAIL and "pipeline.output_dir" in c.fix
    assert dr.check_disk("gs://bucket/x").status == dr.SKIP


def test_sandbox():
    assert dr.check_sandbox(lambda: "bwrap").status == dr.PASS
    c = dr.check_sandbox(lambda: "rlimits")
    assert c.status == dr.FAIL and "bubblewrap" in c.fix
    from sandbox import isolation_level
    real = dr.check_sandbox()
    assert real.detail.startswith(f"isolation {isolation_level()}")


def test_kfp_skipped_without_host_and_passes_against_fake_kfp():
    assert dr.check_kfp(None, None).status == dr.SKIP
    fake = FakeKFP()
    host = fake.start()
    try:
        c = dr.check_kfp(host, "tok")
        assert c.status == dr.PASS, c
        assert ("GET", "/apis/v2beta1/healthz") in fake.calls()
        assert fake.requests[-1].headers.get("Authorization") == "Bearer tok"  # the token was sent
    finally:
        fake.stop()


class _AuthKFP:
    """healthz open, every other endpoint wants `Bearer good` (a multi-user deployment)."""

    def __enter__(self):
        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):  # noqa: N802
                ok = self.path.startswith("/apis/v2beta1/healthz") or self.headers.get("Authorization") == "Bearer good"
                self.send_response(200 if ok else 401)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *a):
        self.server.shutdown()
        self.server.server_close()


def test_kfp_token_is_checked():
    with _AuthKFP() as host:
        assert dr.check_kfp(host, "good").status == dr.PASS
        bad = dr.check_kfp(host, "bad")
        assert bad.status == dr.FAIL and "HTTP 401" in bad.detail and "KFP_TOKEN" in bad.fix
        none = dr.check_kfp(host, None)
        assert none.status == dr.FAIL and "without a token" in none.detail


def test_kfp_unreachable():
    with _AuthKFP() as host:
        pass  # closed: nothing listens there now
    c = dr.check_kfp(host, None, timeout_s=2)
    assert c.status == dr.FAIL and "cannot reach Kubeflow Pipelines" in c.detail
    assert dr.check_kfp("kfp:8080", None).status == dr.FAIL  # no scheme


def test_kube_skips_without_cluster_profile_or_kubectl():
    assert [c.status for c in dr.check_kube(False)] == [dr.SKIP]
    got = dr.check_kube(True, which=lambda _: None)
    assert [c.status for c in got] == [dr.SKIP, dr.SKIP] and "kubectl not found" in got[0].detail


KUBECTL = """case "$*" in
  "config current-context") {ctx} ;;
  "get crd tfjobs.kubeflow.org -o name") {crd} ;;
  *) echo "unexpected: $*" >&2; exit 3 ;;
esac
"""


def test_kube_context_and_tfjob_crd(tmp_path):
    ok_ctx = 'echo kind-gpu'
    ok_crd = 'echo customresourcedefinition.apiextensions.k8s.io/tfjobs.kubeflow.org'
    k = _script(tmp_path, "kubectl", KUBECTL.format(ctx=ok_ctx, crd=ok_crd))
    got = dr.check_kube(True, which=lambda _: k)
    assert [(c.name, c.status) for c in got] == [("kube context", dr.PASS), ("tfjob crd", dr.PASS)]
    assert got[0].detail == "kind-gpu"

    missing = ('echo \'Error from server (NotFound): customresourcedefinitions.apiextensions.k8s.io '
               '"tfjobs.kubeflow.org" not found\' >&2; exit 1')
    k = _script(tmp_path, "kubectl", KUBECTL.format(ctx=ok_ctx, crd=missing))
    crd = dr.check_kube(True, which=lambda _: k)[1]
    assert crd.status == dr.FAIL and "NotFound" in crd.detail and "training-operator" in crd.fix

    k = _script(tmp_path, "kubectl", KUBECTL.format(ctx='echo "error: current-context is not set" >&2; exit 1',
                                                     crd=ok_crd))
    got = dr.check_kube(True, which=lambda _: k)
    assert got[0].status == dr.FAIL and "current-context is not set" in got[0].detail
    assert got[1].status == dr.SKIP


def test_cluster_profile_detection():
    assert dr.is_cluster_profile("cluster") and dr.is_cluster_profile("configs/cluster-small.yaml")
    assert not dr.is_cluster_profile("tiny")


def test_exit_code_fails_only_on_fail():
    C = dr.Check  # noqa: N806 — a short alias keeps the rows readable
    assert dr.exit_code([C("a", dr.PASS, ""), C("b", dr.SKIP, ""), C("c", dr.WARN, "")]) == 0
    assert dr.exit_code([C("a", dr.PASS, ""), C("b", dr.FAIL, "")]) == 1


def test_doctor_command_json(monkeypatch, tmp_path, capsys):
    # The real machine, except: KFP at a loopback fake, no kubectl, output under tmp_path.
    fake = FakeKFP()
    monkeypatch.setenv("KFP_HOST", fake.start())
    monkeypatch.delenv("KFP_TOKEN", raising=False)
    real_which = shutil.which
    monkeypatch.setattr(dr.shutil, "which", lambda n, *a, **k: None if n == "kubectl" else real_which(n, *a, **k))
    try:
        rc = cli.main(["doctor", "--json", "-c", "cluster", "--set", f"pipeline.output_dir={tmp_path}/out"])
    finally:
        fake.stop()
    got = {c["name"]: c for c in json.loads(capsys.readouterr().out)}
    assert set(got) >= {"python", "tensorflow", "tfx", "kfp", "apache-beam", "config", "accelerators", "disk",
                        "sandbox", "kfp endpoint", "kube context", "tfjob crd"}
    assert got["python"]["status"] == "pass" and got["config"]["status"] == "pass"
    assert str(tmp_path) in got["disk"]["detail"]
    assert got["kube context"]["status"] == "skip" and "kubectl not found" in got["kube context"]["detail"]
    assert got["kfp endpoint"]["status"] == "pass"
    assert rc == (1 if any(c["status"] == "fail" for c in got.values()) else 0)


def test_doctor_table_and_bad_config(capsys):
    rc = cli.main(["doctor", "-c", "no-such-preset"])
    out = capsys.readouterr().out
    assert rc == 1 and "seekline doctor" in out and "unknown preset" in out


SECRETS_KUBECTL = """case "$*" in
  "get secret seekline-teacher -o name") {teacher} ;;
  "get secret kfp -o name") {kfp} ;;
  *) echo "unexpected: $*" >&2; exit 3 ;;
esac
"""


def test_profile_secrets_and_gpu_images(tmp_path):
    from configs.schema import load_config

    cfg = load_config("cluster", ["resources.components.evaluate.secret_env=[{secret: kfp, key: t, env: KFP_TOKEN}]"])
    assert dr.profile_secrets(cfg) == [("kfp", False), ("seekline-teacher", True)]
    notfound = "echo 'Error from server (NotFound): secrets \"{n}\" not found' >&2; exit 1"
    k = _script(tmp_path, "kubectl", SECRETS_KUBECTL.format(teacher=notfound.format(n="seekline-teacher"),
                                                            kfp="echo secret/kfp"))
    got = {c.name: c for c in dr.check_secrets(cfg, True, which=lambda _: k)}
    assert got["secret kfp"].status == dr.PASS
    # the preset's teacher key is optional: missing is a warning, not a failure
    assert got["secret seekline-teacher"].status == dr.WARN and "optional" in got["secret seekline-teacher"].detail
    k = _script(tmp_path, "kubectl", SECRETS_KUBECTL.format(teacher="echo secret/seekline-teacher",
                                                            kfp=notfound.format(n="kfp")))
    got = {c.name: c for c in dr.check_secrets(cfg, True, which=lambda _: k)}
    assert got["secret kfp"].status == dr.FAIL and "kubectl create secret generic kfp" in got["secret kfp"].fix
    assert dr.check_secrets(cfg, False) == [] and dr.check_secrets(load_config("tiny"), True) == []
    assert [c.status for c in dr.check_secrets(cfg, True, which=lambda _: None)] == [dr.SKIP]
    assert [c.status for c in dr.check_gpu_images(load_config("cluster"))] == [dr.PASS]
    [w] = dr.check_gpu_images(load_config("cluster", ["resources.components.grpo.image=x/seekline:2"]))
    assert w.status == dr.WARN and "grpo asks for 8 GPU(s)" in w.detail
