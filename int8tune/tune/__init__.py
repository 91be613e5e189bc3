"""Tuning: per-layer threshold search, strategies, the trial log."""
