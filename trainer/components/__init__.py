"""The components a config names and their builders: the registry (names and trusted import
paths to callables), models, datasets, transforms, loaders, param groups, optimizers,
schedulers, metrics, the checks that run before building, and the previews of `trainer
groups` and `trainer schedule`."""
