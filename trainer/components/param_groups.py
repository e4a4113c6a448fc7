"""Param-group rules → torch param groups and a report, in one pass over named_parameters().

1. Names are qualified names with wrapper prefixes (`module.`, `_orig_mod.`) stripped;
   a tied tensor appears once, under its first name, and any of its names can match.
2. `freeze` regexes set requires_grad=False; frozen tensors never reach the optimizer.
3. `rules` are ordered; a tensor goes to the first rule whose `match` (re.search) hits it;
   the rest go to `default` with the optimizer's own options.
4. A rule sets `lr` | `lr_mult`, `weight_decay` | `wd_mult`, and other optimizer options.
5. A pattern that matches nothing, or a rule shadowed by earlier rules, is an error.
6. `no_decay` splits each group into a decay part and a `<group>.no_decay` part (wd 0).
7. `layer_decay` splits each group by layer first (`<group>.layer03`, `<group>.layer03.no_decay`),
   the lr times `rate ** (top layer - layer)` (timm's `param_groups_layer_decay`).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from trainer.config import ParamGroupsConfig, RuleConfig
from trainer.config.sections import LayerDecayConfig
from trainer.errors import UserError, did_you_mean

WRAPPER_PREFIXES = ("module.", "_orig_mod.")
NORM_LAYERS = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.RMSNorm,
)


@dataclass
class GroupInfo:
    """One resolved group: what the optimizer gets, and the rule it came from."""

    name: str
    rule: str | None
    lr: float | None
    weight_decay: float | None
    options: dict[str, Any]
    params: list[str]
    numel: int
    layer: int | None = None  # with layer_decay: the layer, and its lr's scale
    lr_scale: float | None = None


@dataclass
class GroupsReport:
    groups: list[GroupInfo]
    frozen_by_config: list[str] = field(default_factory=list)
    frozen_by_model: list[str] = field(default_factory=list)
    rule_hits: dict[str, int] = field(default_factory=dict)
    held_norms: list[str] = field(default_factory=list)  # kept in eval mode in training

    def manifest(self) -> dict[str, list[str]]:
        """Group name → parameter names, as saved in every checkpoint."""
        return {group.name: list(group.params) for group in self.groups}

    def to_json(self) -> dict[str, Any]:
        """The document `trainer groups --json` prints."""
        return {
            "groups": [
                {
                    "name": g.name,
                    "rule": g.rule,
                    "lr": g.lr,
                    "weight_decay": g.weight_decay,
                    "options": g.options,
                    "params": g.params,
                    "numel": g.numel,
                    **({"layer": g.layer, "lr_scale": g.lr_scale} if g.layer is not None else {}),
                }
                for g in self.groups
            ],
            "frozen": self.frozen_by_config + self.frozen_by_model,
            "frozen_by_config": self.frozen_by_config,
            "frozen_by_model": self.frozen_by_model,
            "rule_hits": self.rule_hits,
            "unmatched_rules": [],
            "held_norms": self.held_norms,
        }


def clean_name(name: str) -> str:
    """A parameter name without wrapper prefixes (DDP's `module.`, torch.compile's `_orig_mod.`)."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, stripped = name[len(prefix) :], True
    return name


@dataclass(eq=False)
class _Tensor:
    name: str
    aliases: list[str]
    param: nn.Parameter
    module: nn.Module


def _named_tensors(model: nn.Module) -> list[_Tensor]:
    """Each parameter tensor once, with every name it goes by and the module that owns it."""
    modules = dict(model.named_modules())
    by_id: dict[int, _Tensor] = {}
    for raw_name, param in model.named_parameters(remove_duplicate=False):
        name = clean_name(raw_name)
        if id(param) in by_id:
            by_id[id(param)].aliases.append(name)
            continue
        owner = modules.get(raw_name.rpartition(".")[0], model)
        by_id[id(param)] = _Tensor(name, [name], param, owner)
    return list(by_id.values())


def build_param_groups(
    model: nn.Module,
    options: dict[str, Any],
    config: ParamGroupsConfig,
    *,
    optimizer: str = "the optimizer",
    select: str | None = None,
    key: str = "param_groups",
) -> tuple[list[dict[str, Any]], GroupsReport]:
    """Torch param groups (each with `name`, real `lr` and `weight_decay`) and a report.

    `options` are the optimizer's options as it will see them (signature defaults, then
    the config); `optimizer` is its name, for messages. Freezing sets requires_grad=False
    on the model's parameters. With several optimizers, `select` (a regex) scopes the rules
    to this optimizer's tensors and `key` is its section (`optimizers.<name>.param_groups`).
    """
    tensors = _named_tensors(model)
    if select is not None:
        tensors = [t for t in tensors if _matches(select, t)]
    names = [t.name for t in tensors]
    # Freeze: what the model froze itself is reported apart from what the config froze.
    frozen_by_model = [t.name for t in tensors if not t.param.requires_grad]
    to_freeze, problems = _to_freeze(tensors, config.freeze, key=key, names=names)
    trainable = [t for t in tensors if t.param.requires_grad and t not in to_freeze]
    if not trainable:
        problems.append(f"{key}.freeze: nothing left to train; every parameter is frozen")
    members, owner_of = _assign_to_rules(trainable, config.rules)
    for index, rule in enumerate(config.rules):
        if not members[rule.name]:
            problems.append(
                _unused_rule(f"{key}.rules.{index}", rule, tensors, trainable, owner_of, names)
            )
        problems += _check_options(f"{key}.rules.{index}", rule, options, optimizer)
    if config.no_decay and "weight_decay" not in options:
        problems.append(f"{key}.no_decay: {optimizer} has no weight_decay option")
    layers = Layers.of(tensors, config.layer_decay, key=f"{key}.layer_decay", names=names)
    problems += layers.problems
    if config.layer_decay and "lr" not in options:
        problems.append(f"{key}.layer_decay: {optimizer} has no lr option")
    if problems:
        raise UserError(problems)
    for tensor in to_freeze:
        tensor.param.requires_grad_(False)
    groups, infos = _torch_groups(config, members, options, layers)
    report = GroupsReport(
        groups=infos,
        frozen_by_config=[t.name for t in to_freeze],
        frozen_by_model=frozen_by_model,
        rule_hits={rule.name: len(members[rule.name]) for rule in config.rules},
    )
    return groups, report


def _to_freeze(
    tensors: list[_Tensor], patterns: list[str], *, key: str, names: list[str]
) -> tuple[list[_Tensor], list[str]]:
    """The trainable tensors `freeze` hits, and a problem per pattern that hits nothing."""
    to_freeze: list[_Tensor] = []
    problems = []
    for index, pattern in enumerate(patterns):
        hits = [t for t in tensors if _matches(pattern, t)]
        if not hits:
            problems.append(_no_match(f"{key}.freeze.{index}", pattern, names))
        to_freeze += [t for t in hits if t.param.requires_grad and t not in to_freeze]
    return to_freeze, problems


def _assign_to_rules(
    trainable: list[_Tensor], rules: list[RuleConfig]
) -> tuple[dict[str | None, list[_Tensor]], dict[int, RuleConfig]]:
    """Each tensor to the first rule that matches it (None: the group `default`), and the
    rule that took each tensor, by id of its parameter."""
    members: dict[str | None, list[_Tensor]] = {rule.name: [] for rule in rules}
    members[None] = []
    owner_of: dict[int, RuleConfig] = {}
    for tensor in trainable:
        rule = next((r for r in rules if _matches(r.match, tensor)), None)
        members[rule.name if rule else None].append(tensor)
        if rule:
            owner_of[id(tensor.param)] = rule
    return members, owner_of


def _torch_groups(
    config: ParamGroupsConfig,
    members: dict[str | None, list[_Tensor]],
    options: dict[str, Any],
    layers: Layers,
) -> tuple[list[dict[str, Any]], list[GroupInfo]]:
    """The torch param groups, rules first then `default`, each split by layer (with
    `layer_decay`) and then by `no_decay`, and what the report says of each."""
    groups, infos = [], []
    specs = [(rule, members[rule.name]) for rule in config.rules] + [(None, members[None])]
    for rule, group_tensors in specs:
        settings = _group_settings(rule, options)
        for layer, layer_tensors in layers.split(group_tensors):
            base = (rule.name if rule else "default") + layers.suffix(layer)
            scaled = settings
            if layer is not None:
                scaled = {**settings, "lr": settings["lr"] * layers.scale(layer)}
            for suffix, part in _split_no_decay(layer_tensors, config.no_decay, scaled):
                values = {**scaled, "weight_decay": 0.0} if suffix else scaled
                groups.append({"params": [t.param for t in part], "name": base + suffix, **values})
                infos.append(
                    GroupInfo(
                        name=base + suffix,
                        rule=rule.name if rule else None,
                        lr=values.get("lr"),
                        weight_decay=values.get("weight_decay"),
                        options={
                            k: v for k, v in values.items() if k not in ("lr", "weight_decay")
                        },
                        params=[t.name for t in part],
                        numel=sum(t.param.numel() for t in part),
                        layer=layer,
                        lr_scale=None if layer is None else layers.scale(layer),
                    )
                )
    return groups, infos


@dataclass
class Layers:
    """Each tensor's layer for `layer_decay` (none without it), and the lr scale of a layer.

    A tensor `layers` matches is layer index + 1 (the regex's capture); those before the first
    matched tensor (in named_parameters order) are layer 0, those after the last the layer above
    the highest index (the top), and an unmatched one between matched ones takes the layer of the
    tensor before it. With `head`, the tensors it matches are the top layer and the others after
    the last matched one stay in the last layer. The top layer present keeps the group's lr.
    Frozen tensors count: freezing does not renumber the layers.
    """

    config: LayerDecayConfig | None = None
    of_tensor: dict[int, int] = field(default_factory=dict)  # by id of the parameter
    top: int = 0
    problems: list[str] = field(default_factory=list)

    @classmethod
    def of(
        cls, tensors: list[_Tensor], config: LayerDecayConfig | None, *, key: str, names: list[str]
    ) -> Layers:
        if config is None:
            return cls()
        indices = {id(t.param): _captured_index(config.layers, t) for t in tensors}
        bad = [(t, index) for t in tensors if isinstance(index := indices[id(t.param)], str)]
        if bad:
            tensor, captured = bad[0]
            return cls(
                problems=[
                    f"{key}.layers: {config.layers!r} captures {captured!r} from "
                    f"{tensor.name!r}; its group must capture the layer's index (digits), "
                    "e.g. '^blocks\\.(\\d+)\\.'"
                ]
            )
        matched = [i for i, t in enumerate(tensors) if indices[id(t.param)] is not None]
        head = config.head
        problems = [] if matched else [_no_match(f"{key}.layers", config.layers, names)]
        if head is not None and not any(_matches(head, t) for t in tensors):
            problems.append(_no_match(f"{key}.head", head, names))
        if problems:
            return cls(problems=problems)
        top = max(int(index) for index in indices.values() if index is not None) + 2
        of_tensor, layer = {}, 0
        for position, tensor in enumerate(tensors):
            index = indices[id(tensor.param)]
            if head is not None and _matches(head, tensor):
                layer = top
            elif index is not None:
                layer = int(index) + 1
            elif position > matched[-1] and head is None:
                layer = top
            of_tensor[id(tensor.param)] = layer
        return cls(config, of_tensor, max(of_tensor.values()))

    def split(self, tensors: list[_Tensor]) -> list[tuple[int | None, list[_Tensor]]]:
        """(layer, tensors) by ascending layer, the empty ones left out; one part without
        layer decay (layer None)."""
        if self.config is None:
            return [(None, tensors)] if tensors else []
        by_layer: dict[int, list[_Tensor]] = {}
        for tensor in tensors:
            by_layer.setdefault(self.of_tensor[id(tensor.param)], []).append(tensor)
        return sorted(by_layer.items())

    def suffix(self, layer: int | None) -> str:
        """`.layer03` (as wide as the top layer's number, at least two digits), or ''."""
        width = max(len(str(self.top)), 2)
        return "" if layer is None else f".layer{layer:0{width}d}"

    def scale(self, layer: int) -> float:
        """The factor on a layer's lr: rate ** (top - layer)."""
        assert self.config is not None  # a layer exists only with layer_decay
        return float(self.config.rate ** (self.top - layer))


def _captured_index(pattern: str, tensor: _Tensor) -> str | int | None:
    """The layer index `pattern` captures from the tensor's first matching name: an int, the
    captured text when it is not one, or None when no name matches."""
    for alias in tensor.aliases:
        found = re.search(pattern, alias)
        if found is not None:
            captured = found.group(1) or ""
            return int(captured) if re.fullmatch("[0-9]+", captured) else captured
    return None


def frozen_names(model: nn.Module) -> list[str]:
    """Tensors the model itself froze (requires_grad False before any config rule)."""
    return [t.name for t in _named_tensors(model) if not t.param.requires_grad]


def held_norms(model: nn.Module) -> dict[str, nn.Module]:
    """Norm layers with running statistics whose parameters are all frozen, by name: training
    keeps them in eval mode, so their statistics stay as they were
    (param_groups.freeze_norm_stats)."""
    held: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        params = list(module.parameters(recurse=False))
        if (
            isinstance(module, nn.modules.batchnorm._NormBase)
            and module.track_running_stats
            and params
            and not any(p.requires_grad for p in params)
        ):
            held[clean_name(name)] = module
    return held


def apply_freeze(model: nn.Module, patterns: list[str]) -> list[str]:
    """Set requires_grad=False on trainable tensors a `freeze` regex hits; their names."""
    frozen = [
        t
        for t in _named_tensors(model)
        if t.param.requires_grad and any(_matches(p, t) for p in patterns)
    ]
    for tensor in frozen:
        tensor.param.requires_grad_(False)
    return [t.name for t in frozen]


def check_optimizer_scopes(
    model: nn.Module, freeze: list[str], scopes: dict[str, str], *, shown: int = 8
) -> list[str]:
    """Every trainable tensor (after `freeze`) selected by exactly one optimizer's `params`."""
    tensors = _named_tensors(model)
    names = [t.name for t in tensors]
    problems = [
        _no_match(f"param_groups.freeze.{index}", pattern, names)
        for index, pattern in enumerate(freeze)
        if not any(_matches(pattern, t) for t in tensors)
    ]
    problems += [
        _no_match(f"optimizers.{name}.params", pattern, names)
        for name, pattern in scopes.items()
        if not any(_matches(pattern, t) for t in tensors)
    ]
    trainable = [
        t for t in tensors if t.param.requires_grad and not any(_matches(p, t) for p in freeze)
    ]
    orphans = []
    for tensor in trainable:
        owners = [name for name, pattern in scopes.items() if _matches(pattern, tensor)]
        if len(owners) > 1:
            problems.append(
                f"optimizers: {tensor.name} is selected by "
                f"{' and '.join(f'optimizers.{o}.params' for o in owners)}; a tensor belongs "
                "to one optimizer (narrow a params regex)"
            )
        elif not owners:
            orphans.append(tensor.name)
    if orphans:
        listed = ", ".join(orphans[:shown]) + (", ..." if len(orphans) > shown else "")
        problems.append(
            f"optimizers: {len(orphans)} trainable tensor(s) selected by no optimizer's params: "
            f"{listed} (widen a params regex, or freeze them with param_groups.freeze)"
        )
    return problems


def _matches(pattern: str, tensor: _Tensor) -> bool:
    return any(re.search(pattern, alias) for alias in tensor.aliases)


def _no_match(key: str, pattern: str, names: list[str]) -> str:
    closest = difflib.get_close_matches(pattern, names, n=3, cutoff=0.0)
    return f"{key}: {pattern!r} matches no parameter; closest names: {', '.join(closest)}"


def _unused_rule(
    where: str,
    rule: RuleConfig,
    tensors: list[_Tensor],
    trainable: list[_Tensor],
    owner_of: dict[int, RuleConfig],
    names: list[str],
) -> str:
    key = f"{where}.match"
    hits = [t for t in trainable if _matches(rule.match, t)]
    if hits:
        earlier = list(dict.fromkeys(owner_of[id(t.param)].name for t in hits))
        return (
            f"{key}: rule '{rule.name}' ({rule.match!r}) gets nothing: every tensor it matches "
            f"was taken by earlier rule(s) {', '.join(repr(n) for n in earlier)}"
        )
    if any(_matches(rule.match, t) for t in tensors):
        return f"{key}: rule '{rule.name}' ({rule.match!r}) matches only frozen parameters"
    return _no_match(key, rule.match, names)


def _check_options(
    where: str, rule: RuleConfig, options: dict[str, Any], optimizer: str
) -> list[str]:
    problems = []
    for key in ("lr", "weight_decay"):
        set_here = getattr(rule, key) is not None or getattr(rule, _MULT[key]) is not None
        if set_here and key not in options:
            problems.append(f"{where}.{key}: {optimizer} has no {key} option")
    allowed = [k for k in options if k not in ("params", "lr", "weight_decay")]
    for key in rule.options:
        if key not in options or key == "params":
            problems.append(
                f"{where}.{key}: not an option of {optimizer}"
                f"{did_you_mean(key, allowed)} (options: {', '.join(allowed)})"
            )
    return problems


_MULT = {"lr": "lr_mult", "weight_decay": "wd_mult"}


def _group_settings(rule: RuleConfig | None, options: dict[str, Any]) -> dict[str, Any]:
    """The real values a group carries: lr and weight_decay (absolute), then rule options."""
    settings: dict[str, Any] = {
        key: options[key] for key in ("lr", "weight_decay") if key in options
    }
    if rule is None:
        return settings
    for key, mult in _MULT.items():
        if getattr(rule, key) is not None:
            settings[key] = getattr(rule, key)
        elif getattr(rule, mult) is not None and key in settings:
            settings[key] = settings[key] * getattr(rule, mult)
    return {**settings, **rule.options}


def _split_no_decay(
    tensors: list[_Tensor], kinds: Sequence[str], settings: dict[str, Any]
) -> list[tuple[str, list[_Tensor]]]:
    """(suffix, tensors): the decay part ('') and the `.no_decay` part, the empty ones left out."""
    if not kinds or not settings.get("weight_decay"):
        return [("", tensors)]
    decay: list[_Tensor] = []
    no_decay: list[_Tensor] = []
    for tensor in tensors:
        (no_decay if _is_no_decay(tensor, kinds) else decay).append(tensor)
    return [(suffix, part) for suffix, part in (("", decay), (".no_decay", no_decay)) if part]


def _is_no_decay(tensor: _Tensor, kinds: Sequence[str]) -> bool:
    return (
        ("bias" in kinds and tensor.name.rpartition(".")[2] == "bias")
        or ("norm" in kinds and isinstance(tensor.module, NORM_LAYERS))
        or ("1d" in kinds and tensor.param.ndim <= 1)
    )
