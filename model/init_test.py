import subprocess
import sys


def test_import_model_is_light_and_exposes_api():
    code = ("import sys, model; "
            "assert 'tensorflow' not in sys.modules and 'tfx' not in sys.modules; "
            "print(model.count_params('deepseek-v3-671b')['total']); "
            "[getattr(model, n) for n in ('ModelConfig', 'build_model', 'load_hf_checkpoint', "
            "'save_hf_checkpoint', 'import_hf_checkpoint', 'count_params', 'generate', 'GenerationConfig')]")
    import os
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                         env={**os.environ, "PYTHONPATH": root})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "671026404352"


def test_no_tfx_anywhere_in_model():
    import os
    root = os.path.dirname(os.path.abspath(__file__))
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f.endswith(".py"):
                src = open(os.path.join(dirpath, f)).read()
                bad = ("import " + "tfx", "from " + "tfx")   # spelled apart so this file passes
                assert not any(b in src for b in bad), f
