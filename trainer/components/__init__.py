"""The components a config names and their builders: the registry and trust policy,
models, datasets, transforms, loaders, param groups, optimizers, schedulers, metrics, and
the checks that run before building."""
