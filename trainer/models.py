"""Built-in models, and building the configured model (with optional `init_from` weights)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from trainer.errors import UserError

if TYPE_CHECKING:
    from trainer.config import ModelConfig


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


BUILT_IN = {"small_cnn": small_cnn}


def build_model(config: ModelConfig, *, load_weights: bool = True) -> nn.Module:
    """The configured model, with `init_from` weights loaded when given (and asked for)."""
    from trainer import registry

    model = registry.build("models", config.name, config.kwargs, key="model")
    if not isinstance(model, nn.Module):
        raise _not_a(config.name, model)
    if config.init_from and load_weights:
        load_initial_weights(model, config.init_from)
    return model


def _not_a(name: str, obj: Any) -> Exception:
    return UserError(f"model.name: {name!r} returned a {type(obj).__name__}, not a torch.nn.Module")


def load_initial_weights(model: nn.Module, path: str) -> None:
    """Load a local state dict into `model` (strict), as `model.init_from` asks."""
    if not Path(path).is_file():
        raise UserError(f"model.init_from: no such file {path!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(f"model.init_from: cannot read {path!r} as a state dict: {err}") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise UserError(f"model.init_from: {path!r} does not fit the model: {err}") from None
