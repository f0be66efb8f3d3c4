"""The model never imports Textual or Rich (only ovlinspect/ui does)."""

import pkgutil
import subprocess
import sys

import ovlinspect

MODEL = sorted(m.name.removeprefix("ovlinspect.")
               for m in pkgutil.walk_packages(ovlinspect.__path__, "ovlinspect.")
               if not m.name.startswith(("ovlinspect.ui", "ovlinspect.__main__")))


def test_model_modules_exist():
    assert {"kernel.overlay", "kernel.lookup", "rules.engine", "model.layers", "cli", "kernel.params", "kernel.profile"} <= set(MODEL)


def test_model_does_not_import_textual_or_rich():
    code = ("import sys\n"
            + "".join(f"import ovlinspect.{m}\n" for m in MODEL)
            + "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'rich'))\n"
            + "print(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
