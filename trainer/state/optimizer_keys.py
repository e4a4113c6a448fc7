"""Optimizer states keyed by parameter index (Optimizer.state_dict(), what a .pt checkpoint
holds) or by parameter name (get_optimizer_state_dict, what a sharded checkpoint holds); a
checkpoint's `groups` manifest (group name -> parameter names, in the optimizer's
param_groups order) maps one to the other."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def optimizer_state_by_name(
    state: Mapping[str, Any], groups: Mapping[str, Sequence[str]]
) -> dict[str, Any]:
    """An Optimizer.state_dict() (parameters by index) keyed by parameter name, as
    get_optimizer_state_dict gives it; `groups` (group name -> parameter names, in the
    optimizer's param_groups order) names the i-th parameter of each group. A ValueError
    when the groups do not fit the state."""
    _check_sizes(state, groups)
    names = {
        index: name
        for group, group_names in zip(state["param_groups"], groups.values(), strict=True)
        for index, name in zip(group["params"], group_names, strict=True)
    }
    unknown = [index for index in state["state"] if index not in names]
    if unknown:
        raise ValueError(f"the state holds parameters {unknown} that no group has")
    return {
        "state": {names[index]: value for index, value in state["state"].items()},
        "param_groups": [
            {**group, "params": [names[index] for index in group["params"]]}
            for group in state["param_groups"]
        ],
    }


def optimizer_state_by_index(
    state: Mapping[str, Any], groups: Mapping[str, Sequence[str]]
) -> dict[str, Any]:
    """A state keyed by parameter name (get_optimizer_state_dict's) keyed by index as
    Optimizer.state_dict() keys it: 0, 1, ... across the param_groups in order. Each group's
    names must be the manifest's (`groups`), in order; else a ValueError."""
    _check_sizes(state, groups)
    for number, (group, (name, group_names)) in enumerate(
        zip(state["param_groups"], groups.items(), strict=True)
    ):
        if list(group["params"]) != list(group_names):
            raise ValueError(
                f"param group {number} holds {group['params']}, the groups manifest's "
                f"{name!r} {list(group_names)}"
            )
    order = [name for group in state["param_groups"] for name in group["params"]]
    index = {name: number for number, name in enumerate(order)}
    unknown = [name for name in state["state"] if name not in index]
    if unknown:
        raise ValueError(f"the state holds parameters {unknown} that no group has")
    return {
        "state": {index[name]: value for name, value in state["state"].items()},
        "param_groups": [
            {**group, "params": [index[name] for name in group["params"]]}
            for group in state["param_groups"]
        ],
    }


def _check_sizes(state: Mapping[str, Any], groups: Mapping[str, Sequence[str]]) -> None:
    sizes = [len(group["params"]) for group in state["param_groups"]]
    manifest = [len(names) for names in groups.values()]
    if sizes != manifest:
        raise ValueError(
            f"its param_groups hold {sizes} parameters, the groups manifest {manifest}"
        )
