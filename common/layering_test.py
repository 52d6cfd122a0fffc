"""The package layering, checked on the source (ast), not by importing anything.

    common, sandbox  <  configs, model  <  training  <  components  <  pipelines

sandbox/ (running untrusted code) is a bottom layer beside common: it imports only the stdlib
and common, so components, training and serving can all use it.

training/ also never imports TFX (TFX is the orchestration shell around the phases).

A package may import from the layers below it only. Test modules (``*_test.py``, conftest.py)
are exempt: they may drive a layer from above (e.g. model tests call the CLI).
"""
import ast
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT = ("common", "sandbox", "configs", "model", "components", "training", "pipelines",
           "serving", "planning")

# package -> top-level project packages it must not import
FORBIDDEN = {
    "common": set(PROJECT) - {"common"},
    "sandbox": set(PROJECT) - {"common", "sandbox"},
    "configs": {"components", "pipelines", "model", "training", "serving"},
    "model": {"components", "pipelines", "training"},
    "training": {"components", "pipelines", "serving", "tfx"},
    "serving": {"components", "training", "pipelines", "configs", "planning"},
    "planning": {"components", "training", "pipelines", "serving", "tfx"},
}


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """Absolute names of every module `source` (the module `module`; a package's __init__ if
    is_package) imports, at any depth (function-level imports too; relative ones resolved)."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = package[:len(package) - node.level + 1] if node.level else []
            name = ".".join(parts + ([node.module] if node.module else []))
            if name:
                out.add(name)
            # `from pkg import sub` may import a submodule: record pkg.sub too
            out.update(f"{name}.{a.name}" if name else a.name for a in node.names)
    return out


def _sources(package: str, repo: str = REPO):
    for root, _dirs, files in os.walk(os.path.join(repo, package)):
        for fn in sorted(files):
            if fn.endswith(".py") and not fn.endswith("_test.py") and fn != "conftest.py":
                path = os.path.join(root, fn)
                rel = os.path.relpath(path, repo)[:-3].replace(os.sep, ".")
                yield path, rel.removesuffix(".__init__"), fn == "__init__.py"


def violations(package: str, repo: str = REPO) -> list[str]:
    bad = []
    for path, module, is_package in _sources(package, repo):
        with open(path, encoding="utf-8") as f:
            names = imported_modules(f.read(), module, is_package)
        seen: list[str] = []
        for name in sorted(names):  # a parent sorts first: report `a.b`, not also `a.b.X`
            if name.split(".")[0] in FORBIDDEN[package] and not any(
                    name.startswith(s + ".") for s in seen):
                seen.append(name)
                bad.append(f"{os.path.relpath(path, repo)} imports {name}")
    return bad


@pytest.mark.parametrize("package", list(FORBIDDEN))
def test_package_imports_only_lower_layers(package):
    assert list(_sources(package)), f"no modules found under {package}/"
    assert violations(package) == []


def test_sandbox_imports_only_the_stdlib_and_common():
    """Beyond the layer rule: no third-party package either (it must import anywhere, tfx-free)."""
    allowed = set(sys.stdlib_module_names) | {"common", "sandbox", "__future__"}
    bad = []
    for path, module, is_package in _sources("sandbox"):
        with open(path, encoding="utf-8") as f:
            names = imported_modules(f.read(), module, is_package)
        bad += [f"{os.path.relpath(path, REPO)} imports {n}" for n in sorted(names)
                if n.split(".")[0] not in allowed]
    assert bad == []


def test_checker_sees_every_import_form():
    src = (
        "import os\n"
        "from components.common.errors import ConfigError\n"
        "def f():\n"
        "    import pipelines.cli\n"
        "from .. import model\n"
        "from .sibling import x\n"
    )
    got = imported_modules(src, "configs.sub.mod")
    assert {"os", "components.common.errors", "pipelines.cli", "configs.model",
            "configs.sub.sibling"} <= got
    # `from .. import model` inside configs/sub resolves to configs.model, not model
    assert "model" not in {n.split(".")[0] for n in got}
    # in a package's __init__, `.` is the package itself
    assert imported_modules("from .x import y", "configs.sub", is_package=True) >= {"configs.sub.x"}
    assert imported_modules("from .x import y", "configs.sub") >= {"configs.x"}


def test_violations_are_reported(tmp_path):
    """The scan itself: a configs module importing components (as configs/schema.py did) and a
    model module importing the CLI are caught; test modules are skipped."""
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "schema.py").write_text("from components.common.errors import ConfigError\n")
    (tmp_path / "configs" / "schema_test.py").write_text("import components\n")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "__init__.py").write_text("def f():\n    from pipelines import cli\n")
    assert violations("configs", str(tmp_path)) == [
        os.path.join("configs", "schema.py") + " imports components.common.errors"]
    assert violations("model", str(tmp_path)) == [os.path.join("model", "__init__.py") + " imports pipelines"]
