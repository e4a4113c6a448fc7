"""trainer: a YAML-driven training-loop runner for PyTorch."""
