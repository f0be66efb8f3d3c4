"""Test-wide settings.

Hypothesis explores new random examples on every developer run (that is how the kernel-agreement
tests find new disagreements); under CI (``CI`` set, as ``.ci/run`` is run) it is derandomized,
so a submission's result does not depend on the draw.
"""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
