"""A run on disk and what people read of it: the run directory, metrics.jsonl, status,
loggers, printed reports, plots, monitors."""
