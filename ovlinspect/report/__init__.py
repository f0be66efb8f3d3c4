"""What is shown: one per-layer view for the CLI and the view, the JSON document, the text."""
