"""What ovlinspect shows: findings grouped by cause (``causes.py``) and the command line's text
(``text.py``).  Uses ``rules``, ``kernel`` and ``model``; never textual or rich."""
