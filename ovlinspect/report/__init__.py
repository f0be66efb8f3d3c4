"""What is shown: one per-layer view for the CLI and the view, the JSON document, the text.

``causes.py`` groups findings by cause (one entry per thing to fix); ``text.py`` is the command
line's text rendering.  Never textual or rich."""
