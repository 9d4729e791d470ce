"""Every script answers `--help` before torch loads (argparse first, heavy imports in `main`)."""
import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = sorted(os.path.relpath(path, ROOT) for path in glob.glob(os.path.join(ROOT, "scripts", "*.py")))
HEAVY = ("torch", "pytorch_lightning", "lightning_fabric", "numpy", "PIL.Image")

# Runs one script's --help in a fresh interpreter and prints, last, the heavy modules it imported.
PROBE = ("import runpy, sys\nsys.argv = [sys.argv[1], '--help']\ntry:\n"
         "    runpy.run_path(sys.argv[0], run_name='__main__')\nexcept SystemExit as exit:\n"
         "    assert exit.code in (0, None), exit.code\n"
         f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")


def test_every_script_is_covered():
    assert "scripts/txt2img.py" in SCRIPTS and "scripts/convert_checkpoint.py" in SCRIPTS and len(SCRIPTS) >= 14


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_answers_before_torch_is_imported(script):
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", PROBE, script], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert "usage:" in proc.stdout and lines[-1] == "[]", (script, lines[-1])
