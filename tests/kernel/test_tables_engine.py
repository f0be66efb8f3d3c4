"""The reference tables' own claims, against the engine alone, once per profile that holds them.

No root, no mount: every row of ``test_tables.py`` is built in memory and explained with the
rules of each kernel version from the row's ``since`` on (6.16, 6.18, 7.0), and what the row
says the kernel does (errno, type, size, open errno, listing, which layer's bytes are read)
must be what the engine predicts.  The rows themselves are checked against the real kernels by
``test_tables.py`` (this machine) and ``test_other_kernels.py`` (the VMs).
"""

from __future__ import annotations

import pytest

from harness import case_stack
from ovlinspect.rules.engine import Engine
from ovlinspect.kernel.profile import parse_version, profile_for
from test_tables import CASES
from ovlinspect.report.document import path_json

#: the kernel versions whose rules differ from 6.16 on (checked when a row holds for them)
VERSIONS = ["6.16", "6.18", "7.0"]

#: the module parameters the rows were observed with (this machine's: see overlayfs-semantics.md)
PARAMS = {"metacopy": "N", "redirect_dir": "N", "redirect_always_follow": "Y", "index": "N",
          "nfs_export": "N", "xino_auto": "N"}


def _rows():
    for case in CASES:
        for v in VERSIONS:
            if parse_version(v) >= case.since and (case.expect or case.mount_errno):
                yield pytest.param(case, v, id=f"{case.name}-{v}")


@pytest.mark.parametrize(("case", "version"), list(_rows()))
def test_row_holds_for_the_engine(case, version):
    stack = case_stack(case)
    stack.params = dict(PARAMS)
    engine = Engine(stack, profile=profile_for(parse_version(version), chosen_by="test"))
    assert engine.mount_errno == case.mount_errno, engine.options.mount_log
    if case.mount_errno:
        return
    labels = {engine.label(k).split("(")[-1].rstrip(")"): k for k in range(len(engine.klayers))
              if engine.klayers[k] is not None}
    for path, want in case.expect.items():
        res = engine.explain(path)
        got = path_json(engine, res)
        if want.get("errno") == "ESTALE":
            # access order (another path looked up first): the engine answers for a fresh
            # mount and names the inode alias that makes the kernel's answer order-dependent
            rules = {f.rule for f in res.findings} | {f.rule for f in engine.check()}
            if got["errno"] != "ESTALE" and "inode-alias" not in rules:
                pytest.xfail(f"{path}: an alias between siblings (a redirected upper directory and "
                             "its visible source) is not flagged yet; the kernel answers ESTALE for "
                             "the one looked up second")
            continue
        for field, value in want.items():
            if field in ("data", "xattrs"):
                continue  # what only a mount shows: the bytes read, listxattr
            if field == "data_from":
                label, _, lpath = value.partition(":")
                assert res.data is not None, f"{path}: no data source predicted"
                assert (res.data.layer, b"/" + b"/".join(res.data.path)) == (
                    labels[label], lpath.encode()), f"{path}: data"
            else:
                if field == "entries" and got.get("readdir_errno") and value is not None:
                    pytest.xfail(f"{path}: whether a listing with failing entries fails depends on "
                                 "the directory's own order (getdents batches), which an in-memory "
                                 "layer does not have as tmpfs does (newest first)")
                assert got[field] == value, f"{path}: {field}"
