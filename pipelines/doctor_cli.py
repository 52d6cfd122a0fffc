"""`seekline doctor` and `seekline diagnose LOGFILE`.

doctor checks the environment a run needs; every check is a small function returning a
`Check(name, status, detail, fix)` and reads the outside world only through its arguments or
`shutil.which` / `os.environ` / subprocess, so tests run each one against fakes (a loopback KFP,
a PATH without kubectl, a fake `kubectl` script). `diagnose` lives in pipelines/diagnose.py.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PASS, FAIL, SKIP, WARN = "pass", "fail", "skip", "warn"
MIN_FREE_GB = 5.0  # the tiny run writes ~0.3 GB; a small run a few GB
PINNED = ("tensorflow", "tfx", "kfp", "apache-beam")


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # pass | fail | skip | warn (warn: informational, never fails the exit code)
    detail: str
    fix: str = ""


def check_python(version: tuple[int, int] | None = None) -> Check:
    v = version or sys.version_info[:2]
    ok = tuple(v) == (3, 10)
    return Check("python", PASS if ok else FAIL, f"Python {v[0]}.{v[1]}",
                 "" if ok else "TFX 1.16 needs Python 3.10: install it (pyenv install 3.10) and re-run make setup")


def read_pins(constraints: Path = REPO / "constraints.txt") -> dict[str, str]:
    """`name==version` lines of the lock file (names lower-case, `_` as `-`)."""
    pins = {}
    for line in constraints.read_text().splitlines():
        m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;#]+)", line)
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def check_pins(pins: dict[str, str], installed: Callable[[str], str | None] | None = None) -> list[Check]:
    """TF / TFX / KFP / Beam installed at the versions constraints.txt locks."""
    def _installed(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    get = installed or _installed
    out = []
    for name in PINNED:
        want, have = pins.get(name), get(name)
        if want is None:
            out.append(Check(name, SKIP, "not pinned in constraints.txt"))
        elif have is None:
            out.append(Check(name, FAIL, f"not installed (constraints.txt pins {want})",
                             "make setup (installs the locked set into .venv)"))
        elif have != want:
            out.append(Check(name, FAIL, f"{have} installed, constraints.txt pins {want}",
                             f"pip install -c constraints.txt {name}=={want} (or rm -rf .venv && make setup)"))
        else:
            out.append(Check(name, PASS, have))
    return out


def check_accelerators(list_gpus: Callable[[], list] | None = None, which=None) -> Check:
    """GPUs TF sees, and the driver's view (nvidia-smi) when it disagrees. No GPU is fine locally."""
    if list_gpus is None:
        def list_gpus():
            import tensorflow as tf
            return tf.config.list_physical_devices("GPU")
    gpus = list_gpus()
    smi = (which or shutil.which)("nvidia-smi")
    driver = []
    if smi:
        try:
            r = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                               text=True, timeout=20)
            driver = [x.strip() for x in r.stdout.splitlines() if x.strip()] if r.returncode == 0 else []
        except (OSError, subprocess.TimeoutExpired):
            driver = []
    if gpus:
        return Check("accelerators", PASS, f"TF sees {len(gpus)} GPU(s)" + (f": {', '.join(driver)}" if driver else ""))
    if driver:
        return Check("accelerators", FAIL, f"nvidia-smi lists {len(driver)} GPU(s) ({driver[0]}) but TF sees none",
                     "CUDA is not visible to TF: install tensorflow[and-cuda]==2.16.2 or use a CUDA image; "
                     "check CUDA_VISIBLE_DEVICES and LD_LIBRARY_PATH")
    return Check("accelerators", WARN, "no GPU (CPU only: fine for the tiny preset)"
                 + ("" if smi else "; nvidia-smi not found"))


def check_disk(path: str, min_free_gb: float = MIN_FREE_GB) -> Check:
    """Free space where the run writes (the nearest existing parent of output_dir)."""
    if "://" in path:
        return Check("disk", SKIP, f"{path} is remote")
    p = Path(path).resolve()
    while not p.exists():
        p = p.parent
    free = shutil.disk_usage(p).free / 2**30
    ok = free >= min_free_gb
    return Check("disk", PASS if ok else FAIL, f"{free:.1f} GB free at {p}",
                 "" if ok else f"free disk space at {p} (need ≥ {min_free_gb:g} GB) or "
                 "--set pipeline.output_dir=<bigger disk>")


def check_sandbox(level: Callable[[], str] | None = None) -> Check:
    """The code sandbox's isolation (sandbox.isolation_level, docs/sandbox.md)."""
    if level is None:
        from sandbox import isolation_level as level
    got = level()
    if got in ("bwrap", "userns+netns"):
        return Check("sandbox", PASS, f"isolation {got}")
    return Check("sandbox", FAIL, f"isolation {got}: NO network or filesystem isolation for model-written code",
                 "install bubblewrap (apt-get install bubblewrap) or enable unprivileged user namespaces "
                 "(sysctl kernel.unprivileged_userns_clone=1); see docs/sandbox.md")


def check_kfp(host: str | None, token: str | None, timeout_s: float = 5.0) -> Check:
    """KFP_HOST answers /healthz, and accepts the token (check_reachable + one authenticated call)."""
    if not host:
        return Check("kfp endpoint", SKIP, "KFP_HOST not set (only deploy / schedule need it)")
    import urllib.error
    import urllib.request

    from common.errors import UserError
    from pipelines.kubeflow import check_reachable
    try:
        check_reachable(host, token, timeout_s)
    except UserError as e:
        return Check("kfp endpoint", FAIL, str(e), "use the KFP API endpoint, e.g. kubectl port-forward "
                     "svc/ml-pipeline-ui 8080:80 and KFP_HOST=http://localhost:8080")
    # healthz answers without auth on some deployments: an authenticated list call checks the token.
    url = host.rstrip("/") + "/apis/v2beta1/experiments?page_size=1"
    try:
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            resp.read()
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            return Check("kfp endpoint", FAIL, f"{host} refused the {'token' if token else 'request without a token'} "
                         f"(HTTP {e.code})", "set KFP_TOKEN to a valid token for this deployment "
                         "(multi-user KFP: a ServiceAccount token with access to the namespace)")
        return Check("kfp endpoint", FAIL, f"{host} answered HTTP {e.code} on {url}", "check KFP_HOST is the API endpoint")
    except (urllib.error.URLError, OSError) as e:
        return Check("kfp endpoint", FAIL, f"{host}: {getattr(e, 'reason', e)}", "check KFP_HOST")
    return Check("kfp endpoint", PASS, f"{host} reachable" + (" with the token" if token else ""))


def _kubectl(kubectl: str, *args: str, timeout_s: float = 20) -> tuple[int, str]:
    try:
        r = subprocess.run([kubectl, *args], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return 124, f"kubectl {' '.join(args)} timed out after {timeout_s:g}s"
    return r.returncode, (r.stdout if r.returncode == 0 else r.stderr).strip()


def check_kube(cluster: bool, which=None) -> list[Check]:
    """kube context and the Training Operator's TFJob CRD, when a cluster profile is used."""
    if not cluster:
        return [Check("kube context", SKIP, "not a cluster profile")]
    kubectl = (which or shutil.which)("kubectl")
    if not kubectl:
        reason = "kubectl not found on PATH"
        return [Check("kube context", SKIP, reason, "install kubectl to check the cluster from here"),
                Check("tfjob crd", SKIP, reason)]
    rc, ctx = _kubectl(kubectl, "config", "current-context")
    if rc != 0 or not ctx:
        return [Check("kube context", FAIL, ctx or "no current context",
                      "kubectl config use-context <cluster> (or set KUBECONFIG)"),
                Check("tfjob crd", SKIP, "no kube context")]
    out = [Check("kube context", PASS, ctx)]
    rc, msg = _kubectl(kubectl, "get", "crd", "tfjobs.kubeflow.org", "-o", "name")
    if rc == 0:
        out.append(Check("tfjob crd", PASS, msg or "tfjobs.kubeflow.org"))
    else:
        out.append(Check("tfjob crd", FAIL, msg.splitlines()[-1] if msg else f"kubectl exit {rc}",
                         "install the Kubeflow Training Operator: kubectl apply -k "
                         "\"github.com/kubeflow/training-operator.git/manifests/overlays/standalone?ref=v1.8.1\""))
    return out


def profile_secrets(config) -> list[tuple[str, bool]]:
    """[(secret name, optional)] the config's pods read as env (resources.default + components)."""
    from configs.schema import COMPONENT_IDS

    seen: dict[str, bool] = {}
    for cid in COMPONENT_IDS:
        for e in config.resources.for_component(cid).secret_env:
            seen[e.secret] = seen.get(e.secret, True) and e.optional
    return sorted(seen.items())


def check_secrets(config, cluster: bool, which=None) -> list[Check]:
    """Every Secret the profile mounts as env exists in the current namespace (a missing required
    one leaves the pod in CreateContainerConfigError); optional ones only warn."""
    wanted = profile_secrets(config) if config is not None else []
    if not cluster or not wanted:
        return []
    kubectl = (which or shutil.which)("kubectl")
    if not kubectl:
        return [Check("secrets", SKIP, "kubectl not found on PATH", "install kubectl to check the cluster from here")]
    out = []
    for name, optional in wanted:
        rc, msg = _kubectl(kubectl, "get", "secret", name, "-o", "name")
        if rc == 0:
            out.append(Check(f"secret {name}", PASS, msg or name))
        else:
            out.append(Check(f"secret {name}", WARN if optional else FAIL,
                             (msg.splitlines()[-1] if msg else f"kubectl exit {rc}")
                             + (" (optional: the pods start without it)" if optional else ""),
                             f"kubectl create secret generic {name} --from-literal=<key>=<value> (docs/deploy.md)"))
    return out


def check_gpu_images(config) -> list[Check]:
    """A component asking for GPUs must run an image with CUDA (kubeflow.gpu_image_hint lists the
    substrings that mark one); the default image is built FROM python:3.10-slim, CPU only."""
    from pipelines.kubeflow import gpu_image_warnings

    if config is None:
        return []
    warnings = gpu_image_warnings(config)
    if not warnings:
        return [Check("gpu images", PASS, "every GPU component runs a CUDA image (or none asks for GPUs)")]
    return [Check("gpu images", WARN, w, "set resources.components.<id>.image to a CUDA build of the image")
            for w in warnings]


def is_cluster_profile(preset: str) -> bool:
    return Path(preset).stem.startswith("cluster")


def run_checks(args: argparse.Namespace) -> list[Check]:
    checks = [check_python(), *check_pins(read_pins())]
    # An invalid config is itself a failed check, not a crash: doctor must run on a broken setup.
    output_dir = "."
    config = None
    try:
        from configs.schema import load_config
        config = load_config(args.config, args.overrides)
        output_dir = config.pipeline.output_dir
        checks.append(Check("config", PASS, args.config))
    except Exception as e:  # noqa: BLE001 — reported as a failed check
        checks.append(Check("config", FAIL, str(e).splitlines()[0][:200], "fix the config (see the message)"))
    checks += [check_accelerators(), check_disk(output_dir), check_sandbox(),
               check_kfp(os.environ.get("KFP_HOST"), os.environ.get("KFP_TOKEN"))]
    cluster = args.cluster or is_cluster_profile(args.config)
    checks += check_kube(cluster)
    if cluster:
        checks += check_secrets(config, cluster) + check_gpu_images(config)
    return checks


def exit_code(checks: list[Check]) -> int:
    return 1 if any(c.status == FAIL for c in checks) else 0


def cmd_doctor(args: argparse.Namespace) -> int:
    checks = run_checks(args)
    if args.json:
        print(json.dumps([asdict(c) for c in checks], indent=1))
        return exit_code(checks)
    from rich.console import Console
    from rich.table import Table

    style = {PASS: "green", FAIL: "bold red", SKIP: "dim", WARN: "yellow"}
    t = Table(title="seekline doctor")
    for col in ("check", "status", "detail", "fix"):
        t.add_column(col, overflow="fold")
    for c in checks:
        t.add_row(c.name, f"[{style[c.status]}]{c.status}[/]", c.detail, c.fix)
    Console(stderr=False).print(t)
    return exit_code(checks)


def cmd_diagnose(args: argparse.Namespace) -> int:
    from pipelines.diagnose import diagnose_file, render
    matches = diagnose_file(args.logfile)
    if args.json:
        print(json.dumps([m.as_dict() for m in matches], indent=1))
    else:
        print(render(matches, args.logfile))
    return 1 if matches else 0


def add_doctor_parsers(sub, config_args) -> None:
    p = sub.add_parser("doctor", help="check the environment a run needs (Python, TF/TFX/KFP pins, GPUs, "
                       "disk, sandbox, KFP, kube)", description="check the environment a run needs; exit 1 "
                       "when a required check fails")
    config_args(p)
    p.add_argument("--cluster", action="store_true", help="also check the kube context and the TFJob CRD "
                   "(implied by a cluster* preset)")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    p.set_defaults(fn=cmd_doctor)
    p = sub.add_parser("diagnose", help="match known failure patterns in a log file to fixes "
                       "(docs/troubleshooting.md)", description="match known failure patterns in a log "
                       "(run.log, a pod log, console output) to their cause and fix; exit 1 when any matched")
    p.add_argument("logfile", metavar="LOGFILE")
    p.add_argument("--json", action="store_true", help="print the matches as JSON")
    p.set_defaults(fn=cmd_diagnose)
