"""Built-in models, and building the configured model (with optional `init_from` weights).

A model is a built-in, a torchvision model, a timm model (`timm/<name>`, see the registry) or
an import path; torchvision's `weights` and timm's `pretrained: true` are the only downloads.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from trainer.errors import UserError

if TYPE_CHECKING:
    from trainer.config import InitFrom, ModelConfig


class SmallCNN(nn.Module):
    """A three-block CNN for small images; names follow torchvision's resnet (conv1, bn1, fc)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.conv3 = nn.Conv2d(2 * width, 4 * width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * width)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        x = self.pool(torch.relu(self.bn2(self.conv2(x))))
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def small_cnn(num_classes: int = 10, in_channels: int = 3, width: int = 16) -> SmallCNN:
    """Small three-block CNN (conv-bn-relu x3, global pool, linear) for 32x32-ish images."""
    return SmallCNN(num_classes=num_classes, in_channels=in_channels, width=width)


class GanMLP(nn.Module):
    """A generator and a discriminator (MLPs) for 2-D points; `forward(z)` generates."""

    def __init__(self, latent: int = 8, hidden: int = 128, data_dim: int = 2) -> None:
        super().__init__()
        self.latent = latent
        self.generator = nn.Sequential(
            nn.Linear(latent, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, data_dim),
        )
        self.discriminator = nn.Sequential(
            nn.Linear(data_dim, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, 1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z)


def gan_mlp(latent: int = 8, hidden: int = 128, data_dim: int = 2) -> GanMLP:
    """A GAN for 2-D points: MLP generator and discriminator (submodules of those names)."""
    return GanMLP(latent=latent, hidden=hidden, data_dim=data_dim)


class Tensors(nn.Module):
    """Plain tensors a model callable returned, as trainable parameters named by their keys.

    `forward()` returns them (the one tensor, or the dict), for a step that minimises a
    function of them.
    """

    def __init__(self, tensors: dict[str, torch.Tensor], *, single: bool = False) -> None:
        super().__init__()
        self.single = single
        for name, tensor in tensors.items():
            copy = tensor.detach().clone()
            copy = copy.float() if copy.is_floating_point() else copy
            trainable = copy.is_floating_point() or copy.is_complex()  # else: as_module refuses
            self.register_parameter(name, nn.Parameter(copy, requires_grad=trainable))

    def forward(self) -> torch.Tensor | dict[str, torch.Tensor]:
        named: dict[str, torch.Tensor] = dict(self.named_parameters())
        return next(iter(named.values())) if self.single else named


def as_module(built: object, name: str) -> nn.Module:
    """The model a callable returned: a module as is; a tensor or a dict of them as Tensors.

    Parameters must be floating point (an integer tensor has no gradient to train).
    """
    if isinstance(built, nn.Module):
        return _floating(built, name)
    if isinstance(built, torch.Tensor):
        return _floating(Tensors({"tensor": built}, single=True), name)
    if (
        isinstance(built, dict)
        and all(isinstance(v, torch.Tensor) for v in built.values())
        and built
    ):
        bad = [k for k in built if not (isinstance(k, str) and k.isidentifier())]
        if bad:
            raise UserError(
                f"model.name: {name!r} returned tensors under {bad[0]!r}; their keys name "
                "parameters, so they must be identifiers"
            )
        return _floating(Tensors(built), name)
    raise UserError(
        f"model.name: {name!r} returned a {type(built).__name__}; expected a torch.nn.Module, "
        "a tensor, or a dict of tensors"
    )


def _floating(model: nn.Module, name: str) -> nn.Module:
    """`model`, if every parameter is floating point (or complex); else a UserError."""
    for key, param in model.named_parameters():
        if not (param.is_floating_point() or param.is_complex()):
            raise UserError(
                f"model.name: {name!r} built a parameter {key!r} of dtype "
                f"{str(param.dtype).removeprefix('torch.')}: a parameter must be floating "
                "point (e.g. torch.zeros(3) or tensor.float())"
            )
    return model


def build_model(config: ModelConfig) -> nn.Module:
    """The configured model, as its callable builds it (weights from `init_from` come apart)."""
    from trainer.components import registry

    try:
        model = registry.build("models", config.name, config.kwargs, key="model")
    except OSError as err:  # torchvision's `weights`, timm's `pretrained: true`: a download
        option = next((k for k in ("weights", "pretrained") if config.kwargs.get(k)), None)
        if option is None:
            raise
        raise UserError(
            f"model.{option}: {config.kwargs[option]!r} needs pretrained weights that "
            f"could not be fetched ({err}); offline, save a state dict and use model.init_from"
        ) from None
    return as_module(model, config.name)


class StateFit:
    """How a state dict fits a model: keys missing, unexpected, or of another shape."""

    def __init__(self, state: dict[str, torch.Tensor], model: nn.Module) -> None:
        own = model.state_dict()
        self.shapes = {
            k: (tuple(v.shape), tuple(own[k].shape)) for k, v in state.items() if k in own
        }
        self.reshaped = [k for k, (saved, now) in self.shapes.items() if saved != now]
        self.unexpected = [k for k in state if k not in own]
        self.missing = [k for k in own if k not in state]

    def problems(self, source: str) -> list[str]:
        """One line per difference; `source` names where the state dict came from."""
        lines = [f"  {k}: in the model, not in {source}" for k in self.missing]
        lines += [f"  {k}: in {source}, not in the model" for k in self.unexpected]
        lines += [
            f"  {k}: shape {self.shapes[k][0]} in {source}, {self.shapes[k][1]} in the model"
            for k in self.reshaped
        ]
        return lines


def load_initial_weights(model: nn.Module, init_from: InitFrom) -> list[str]:
    """Load a local state dict into `model` as `model.init_from` says; returns a report.

    `prefix` renames key prefixes first (`{"module.": ""}` strips DDP's). With `strict: false`
    keys the model lacks, and tensors whose shape differs (a new head), are left out and
    reported; with `strict: true` any difference is an error.
    """
    path = init_from.path
    if not Path(path).is_file():
        raise UserError(f"model.init_from.path: no such file {path!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(f"model.init_from.path: cannot read {path!r}: {err}") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a trainer checkpoint
    if not isinstance(state, dict):
        raise UserError(f"model.init_from.path: {path!r} holds no state dict")
    state = {_renamed(key, init_from.prefix): value for key, value in state.items()}
    fit = StateFit(state, model)
    reshaped, unexpected, missing = fit.reshaped, fit.unexpected, fit.missing
    if init_from.strict and fit.problems("the file"):
        raise UserError(
            [
                f"model.init_from: {path!r} does not fit the model (strict: true; "
                "strict: false loads what fits, prefix renames keys):",
                *fit.problems("the file"),
            ]
        )
    model.load_state_dict(
        {k: v for k, v in state.items() if k not in unexpected and k not in reshaped}, strict=False
    )
    loaded = len(state) - len(reshaped) - len(unexpected)
    report = [f"init_from: loaded {loaded} tensors from {path}"]
    for label, keys in (
        ("missing (kept as built)", missing + reshaped),
        ("unexpected (ignored)", unexpected),
    ):
        if keys:
            shown = ", ".join(keys[:6]) + (", ..." if len(keys) > 6 else "")
            report.append(f"init_from: {len(keys)} {label}: {shown}")
    return report


def _renamed(key: str, prefix: dict[str, str]) -> str:
    for old, new in prefix.items():
        if key.startswith(old):
            return new + key[len(old) :]
    return key
