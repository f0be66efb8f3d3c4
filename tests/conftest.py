"""Test-wide settings.

Hypothesis explores new random examples on every developer run (that is how the kernel-agreement
tests find new disagreements); under CI (``CI`` set, as ``.ci/run`` is run) it is derandomized,
so a submission's result does not depend on the draw.  Inside a kernel VM (``KVM_KREL``, set by
``../shared/tools/kernel-vm``), QEMU emulates the CPU: no deadlines there.
"""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("vm", derandomize=True, print_blob=True, deadline=None)
if os.environ.get("KVM_KREL"):
    settings.load_profile("vm")
elif os.environ.get("CI"):
    settings.load_profile("ci")
