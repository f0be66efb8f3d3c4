"""The package layout holds: the import contracts of pyproject.toml (import-linter)."""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_import_contracts_hold():
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    out = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": ROOT})
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def test_a_broken_contract_is_caught(tmp_path):
    """The contracts are not vacuous: the model importing the kernel engine breaks them."""
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    shutil.copytree(os.path.join(ROOT, "ovlinspect"), tmp_path / "ovlinspect",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(ROOT, "pyproject.toml"), tmp_path / "pyproject.toml")
    bad = tmp_path / "ovlinspect" / "model" / "bad.py"
    bad.write_text("from ..rules.engine import Engine\n")
    out = subprocess.run([exe, "--no-cache"], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert out.returncode != 0
    assert "ovlinspect.model.bad -> ovlinspect.rules.engine" in out.stdout
