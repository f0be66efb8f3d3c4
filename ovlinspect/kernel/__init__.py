"""The kernel's overlayfs, as ovlinspect models it.

``profile.py`` is the one place that knows kernel version numbers: every behaviour that changed
between Linux 6.1 and today is a field of :class:`~ovlinspect.kernel.profile.KernelProfile`, and
the rest of the model asks the profile, never a version.
"""
