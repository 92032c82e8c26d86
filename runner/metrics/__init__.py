"""Metric sources (TensorBoard event files, JSONL, container stdout) and the series they fill."""
