"""The README's command outputs are the real ones (scripts/readme_outputs.py refreshes them)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_outputs_are_current():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "readme_outputs.py"), "--check"])
    assert r.returncode == 0, "README outputs are stale: run python scripts/readme_outputs.py"


def test_readme_gives_the_two_quick_start_commands():
    text = (ROOT / "README.md").read_text()
    assert "pip install . && ovlinspect demo" in text
    assert "pip install -e '.[test]' && python -m pytest -q" in text
    assert "pip install -q -e '.[test]' && python3 -m pytest -q" in (ROOT / ".ci" / "run").read_text()
