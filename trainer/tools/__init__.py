"""Commands built on the engine: the lr range test and hyperparameter sweeps."""
