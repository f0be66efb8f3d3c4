"""The catalogue of diagnostics and the checks that produce findings."""
