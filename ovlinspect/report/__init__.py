"""What ovlinspect reports, for the CLI and the interactive view alike: the per-layer view
(:mod:`.view`)."""
