"""The overlay as the kernel runs it: a mounted stack with lookup, data lookup, verity and readdir.

Each behaviour lives in the module named like the kernel's file: :mod:`.mount` (``ovl_fs``
and its predicates), :mod:`.xattr`, :mod:`.lookup` (``namei.c``), :mod:`.data` (lazy lower
data), :mod:`.verity`, :mod:`.readdir`, :mod:`.origin` (index and origin); what differs
between kernel versions is in :mod:`.profile`.  The diagnostics built on top of these
predictions are :class:`ovlinspect.rules.engine.Engine`.
"""

from __future__ import annotations

from .data import DataLookup
from .lookup import Lookup
from .mount import MountedStack
from .readdir import Readdir
from .verity import Verity
from .xattr import XattrRules


class Overlay(MountedStack, XattrRules, Lookup, DataLookup, Verity, Readdir):
    """Predicts the kernel's behaviour for a :class:`~ovlinspect.model.stack.Stack`."""
