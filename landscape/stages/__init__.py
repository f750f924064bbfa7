"""Adapters between the pipeline (config, checkpoints, rows) and the pure metric modules."""
