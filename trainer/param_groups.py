"""Param-group rules → torch param groups and a report (pure functions).

For now every trainable parameter forms one group, `default`, with the optimizer's options.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from trainer.config import ParamGroupsConfig


@dataclass
class GroupInfo:
    """One resolved group: what the optimizer gets, and where it came from."""

    name: str
    rule: str | None
    lr: float
    weight_decay: float
    options: dict[str, Any]
    params: list[str]
    numel: int


@dataclass
class GroupsReport:
    groups: list[GroupInfo]
    frozen_by_config: list[str] = field(default_factory=list)
    frozen_by_model: list[str] = field(default_factory=list)

    def manifest(self) -> dict[str, list[str]]:
        """Group name → parameter names, as saved in every checkpoint."""
        return {g.name: list(g.params) for g in self.groups}


def build_param_groups(
    model: nn.Module, options: dict[str, Any], config: ParamGroupsConfig
) -> tuple[list[dict[str, Any]], GroupsReport]:
    """Torch param groups (with `name`, `lr`, `weight_decay`) and a report of them."""
    trainable, frozen = [], []
    for name, param in model.named_parameters():
        (trainable if param.requires_grad else frozen).append((name, param))
    lr, weight_decay = options.get("lr"), options.get("weight_decay", 0.0)
    group = {
        "name": "default",
        "params": [p for _, p in trainable],
        "lr": lr,
        "weight_decay": weight_decay,
    }
    info = GroupInfo(
        name="default",
        rule=None,
        lr=lr,
        weight_decay=weight_decay,
        options={},
        params=[n for n, _ in trainable],
        numel=sum(p.numel() for _, p in trainable),
    )
    return [group], GroupsReport(groups=[info], frozen_by_model=[n for n, _ in frozen])
