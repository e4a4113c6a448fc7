"""`data.train_transforms` / `data.val_transforms`: torchvision.transforms.v2 by name.

A list of `{name: <v2 transform>, <keyword arguments>}`. Images become float tensors before
the listed transforms run (ToImage, ToDtype(float32, scale=True)) unless the list converts
them itself, so PIL images never reach the model. Without a list, each dataset has a default.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from trainer.components import registry
from trainer.components.datasets import STATS
from trainer.errors import UserError

CONVERTERS = ("ToImage", "ToTensor", "PILToTensor", "ToDtype", "ToPureTensor")

_TO_FLOAT: list[dict[str, Any]] = [
    {"name": "ToImage"},
    {"name": "ToDtype", "dtype": "float32", "scale": True},
]


def default_transforms(dataset: str, *, train: bool) -> list[dict[str, Any]] | None:
    """The transforms a named dataset gets when the config lists none."""
    if dataset in ("mnist", "fashion_mnist", "cifar10", "cifar100"):
        mean, std = STATS[dataset]
        return [*_TO_FLOAT, {"name": "Normalize", "mean": list(mean), "std": list(std)}]
    if dataset == "image_folder":
        mean, std = STATS["imagenet"]
        resize = (
            [{"name": "RandomResizedCrop", "size": 224}, {"name": "RandomHorizontalFlip"}]
            if train
            else [{"name": "Resize", "size": 256}, {"name": "CenterCrop", "size": 224}]
        )
        return [*resize, *_TO_FLOAT, {"name": "Normalize", "mean": list(mean), "std": list(std)}]
    if dataset == "fake_data":
        return list(_TO_FLOAT)
    return None


def resolved_specs(
    specs: list[dict[str, Any]] | None, dataset: str, *, train: bool
) -> list[dict[str, Any]] | None:
    """The list that will be built: the config's (made to yield float tensors) or the default."""
    if specs is None:
        return default_transforms(dataset, train=train)
    if any(spec.get("name") in CONVERTERS for spec in specs):
        return specs
    return [*_TO_FLOAT, *specs]


def check_transforms(specs: list[dict[str, Any]] | None, *, key: str) -> list[str]:
    """Problems with a transform list: unknown names, bad keyword arguments."""
    problems = []
    for index, spec in enumerate(specs or []):
        where = f"{key}.{index}"
        if "name" not in spec:
            problems.append(f"{where}: needs a name (a torchvision.transforms.v2 transform)")
            continue
        kwargs = {k: v for k, v in spec.items() if k != "name"}
        problems += registry.check_component("transforms", spec["name"], kwargs, key=where)
    return problems


def build_transform(specs: list[dict[str, Any]] | None, *, key: str) -> Callable | None:
    """A v2.Compose of the specs (None for none)."""
    if not specs:
        return None
    from torchvision.transforms import v2

    problems = check_transforms(specs, key=key)
    if problems:
        raise UserError(problems)
    steps = []
    for index, spec in enumerate(specs):
        kwargs = {k: _value(k, v, key=f"{key}.{index}") for k, v in spec.items() if k != "name"}
        steps.append(registry.build("transforms", spec["name"], kwargs, key=f"{key}.{index}"))
    return v2.Compose(steps)


def _value(name: str, value: Any, *, key: str) -> Any:
    """YAML cannot write a torch dtype: `dtype: float32` names one."""
    if name == "dtype" and isinstance(value, str):
        import torch

        if not isinstance(getattr(torch, value, None), torch.dtype):
            raise UserError(f"{key}.dtype: {value!r} is not a torch dtype (float32, uint8, ...)")
        return getattr(torch, value)
    return value
