"""Runs about runs: sweeps of methods x shots x seeds, their reports and tables, the demo,
feature probes (linear evaluation, t-SNE) and zero-shot accuracy."""
