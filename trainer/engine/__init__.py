"""Training: building a run, the loop, steps and optimizer handles, validation, resume,
devices and torch.distributed."""
