"""`check`'s lean walk on disk layers (the lean reader), against the engine's general walk.

Random stacks (the generator of test_random.py) and the composefs stack with every kind of
problem (test_scan.py) are built on a private tmpfs as real layer directories, and `check`
(text and JSON) must print the same bytes through the lean walk and through the general one.
Needs root (trusted.overlay.* xattrs, 0/0 whiteouts); nothing is mounted but the tmpfs.
"""

from __future__ import annotations

import os
import sys

import pytest
from hypothesis import HealthCheck, given, settings

import harness
from harness import build, case_toml
from test_random import random_case

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from test_scan import PROBLEM_OPTIONS, _problems_stack, cli_outputs  # noqa: E402

from ovlinspect.live.build import build_stack  # noqa: E402

pytestmark = pytest.mark.kernel


def _argv(built) -> list[str]:
    argv = ["--lowerdir", built.lowerdir_string()]
    if built.upper is not None:
        argv += ["--upperdir", built.upper, "--workdir", built.workdir]
    if built.options:
        argv += ["-o", built.options]
    return argv


def _same(built, what: str) -> None:
    lean, general = cli_outputs(_argv(built))
    assert lean == general, what
    assert lean[0][0] in (0, 1), lean[0]  # a report, not bad input


@settings(max_examples=int(os.environ.get("OVL_SCAN_DISK_EXAMPLES", "60")), derandomize=True,
          deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=random_case())
def test_random_stacks_on_disk_check_the_same(case, kernel_ready) -> None:
    with harness.private_tmpfs() as tmp:
        _same(build(case, os.path.join(tmp, "s")), case_toml(case))


@pytest.mark.parametrize("upper", [False, True], ids=["no-upper", "upper"])
def test_every_problem_on_disk_checks_the_same(upper: bool, tmpfs: str) -> None:
    for i, options in enumerate(PROBLEM_OPTIONS):
        stack = _problems_stack(options, upper)
        built = build_stack(stack, os.path.join(tmpfs, str(i)), exact=True)
        built.options = options
        _same(built, options)
