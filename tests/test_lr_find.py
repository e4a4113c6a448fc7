"""trainer lr-find: the lr range test over every param group, nothing written, a sensible
suggestion on the quickstart problem."""

from __future__ import annotations

import itertools
import json
import math
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from typer.testing import Result

from trainer.components.models import small_cnn
from trainer.config import load_config
from trainer.tools.lr_find import RangeTest, loss_axis, plot_range_test, suggest

ROOT = Path(__file__).resolve().parent.parent
HEAD_RULE = """\
param_groups:
  rules:
    - {name: head, match: '^fc\\.', lr_mult: 10}
"""


def files_under(path: Path) -> dict[str, bytes]:
    """Every file below `path` with its bytes."""
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def test_every_step_scales_both_groups_together_and_nothing_is_written(
    tmp_path: Path,
    write_config: Callable[..., Path],
    tiny_yaml: str,
    run_cli: Callable,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch.save(small_cnn(num_classes=4, in_channels=3, width=4).state_dict(), tmp_path / "w.pt")
    # A scheduler the test leaves out: it sets the lr of every step itself.
    scheduler = "scheduler: {name: StepLR, step_size: 1, interval: step, warmup: {steps: 9}}\n"
    with_weights = tiny_yaml.replace("width: 4}", "width: 4, init_from: w.pt}")
    config = write_config(with_weights + HEAD_RULE + scheduler)
    assert load_config(config).model.init_from is not None  # the weights are read
    before = files_under(tmp_path)

    seen: list[dict[str, float]] = []  # the lr of each group as the optimizer steps
    step = torch.optim.SGD.step

    def recording(self: torch.optim.SGD, closure: Callable | None = None) -> object:
        seen.append({group["name"]: group["lr"] for group in self.param_groups})
        return step(self, closure)

    monkeypatch.setattr(torch.optim.SGD, "step", recording)
    result = run_cli("lr-find", config, "--start", "1e-5", "--end", "1", "--steps", "12", "--json")
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)

    assert len(seen) == len(found["lr"]) >= 2
    for lrs in seen:
        assert lrs["head"] == pytest.approx(10 * lrs["default"], rel=1e-12)
    default = [lrs["default"] for lrs in seen]
    assert default[0] == pytest.approx(1e-5)
    growth = [b / a for a, b in itertools.pairwise(default)]  # exponential: one factor
    assert growth == pytest.approx([(1 / 1e-5) ** (1 / 11)] * len(growth))
    assert found["group_lr"] == {
        "default": default,
        "head": [lrs["head"] for lrs in seen],
    }
    assert files_under(tmp_path) == before  # no run directory; the weights file untouched


def test_a_rule_with_its_own_lr_gets_its_own_override(
    write_config: Callable[..., Path], tiny_yaml: str, run_cli: Callable
) -> None:
    config = write_config(tiny_yaml + HEAD_RULE.replace("lr_mult: 10", "lr: 0.5"))
    result = run_cli("lr-find", config, "--start", "1e-4", "--end", "3", "--steps", "30")
    assert result.exit_code == 0, result.output
    line = next(x for x in result.stdout.splitlines() if x.startswith("use it: "))
    overrides = line.split()[5:]  # "use it: trainer fit CONFIG <overrides>"
    assert [o.split("=")[0] for o in overrides] == ["optimizer.lr", "param_groups.rules.0.lr"]
    lr, head_lr = (float(o.split("=")[1]) for o in overrides)
    assert head_lr == pytest.approx(5 * lr, rel=0.1)  # 0.5 / 0.1, both to two digits
    resolved = load_config(config, overrides)
    assert resolved.param_groups.rules[0].lr == head_lr
    assert "param groups scaled together: head x5, default x1" in result.stdout


def test_suggestion_on_the_quickstart_problem_is_a_good_lr(run_cli: Callable) -> None:
    # Measured with `trainer fit configs/quickstart.yaml trainer.epochs=2`: lr 0.05, 0.25
    # and 0.5 reach val/acc >= 0.987; lr 1 and 2 end at 0.72 and 0.75.
    quickstart = ROOT / "configs" / "quickstart.yaml"
    result = run_cli("lr-find", quickstart, "--start", "1e-4", "--steps", "50", "--json")
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert 0.05 <= found["suggestion"] <= 0.5, found["rule"]
    assert found["overrides"] == [f"optimizer.lr={found['suggestion']:.2g}"]


def test_suggestion_is_the_steepest_fall_before_the_minimum() -> None:
    lrs = [10.0**e for e in range(-6, 2)]
    # Falls fast from 1e-5 to 1e-3, slowly to its lowest at 1e-1, then diverges.
    smoothed = [2.0, 2.0, 1.9, 1.0, 0.95, 0.9, 1.2, 5.0]
    lr, rule = suggest(lrs, smoothed)
    assert lr == 1e-4  # the steepest central slope: (1.0 - 2.0) / 2 decades
    assert "the loss was lowest at lr 0.1" in rule
    none, why = suggest(lrs, [1.0, 0.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    assert none is None and why.startswith("no suggestion: the loss was lowest at step 2")


def range_test(losses: list[float], smoothed: list[float]) -> RangeTest:
    lrs = [10.0**e for e in range(-len(losses), 0)]
    return RangeTest(lrs, losses, smoothed, {"default": lrs}, "stopped", 1e-3, "rule", [])


def test_the_plot_cuts_the_divergence_off_its_log_y_axis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # From 2.0 down to 0.25, then a spike of 1e6 (the smoothed loss past 4 x its minimum).
    test = range_test([2.0, 1.0, 0.5, 0.3, 0.25, 1e6], [2.0, 1.5, 1.0, 0.6, 0.4, 2e5])
    scale, bottom, top = loss_axis(test)
    assert scale == "log"
    assert bottom == pytest.approx(0.25 / 8**0.05) and top == pytest.approx(2.0 * 8**0.05)
    wide = range_test([9.0, 1.0, 0.5, 0.3, 0.25, 1e6], [9.0, 1.0, 0.5, 0.3, 0.25, 2e5])
    assert loss_axis(wide)[2] == pytest.approx(9.0 * 36**0.05)  # from the first loss
    shallow = range_test([1.0, 0.6, 0.5, 1e6], [1.0, 0.7, 0.5, 2e5])
    assert loss_axis(shallow)[2] == pytest.approx(2.0 * 4**0.05)  # 4 x the smoothed minimum
    negative = range_test([1.0, -1.0, 1e6], [1.0, -0.5, 2e5])
    assert loss_axis(negative) == ("linear", -1.0 - 0.1, 1.0 + 0.1)
    assert loss_axis(range_test([math.nan], [math.nan])) is None

    import trainer.tools.lr_find

    drawn = []
    monkeypatch.setattr(
        trainer.tools.lr_find,
        "save_figure",
        lambda figure, path, **_: drawn.append(
            (figure.axes[0].get_yscale(), figure.axes[0].get_ylim())
        ),
    )
    plot_range_test(test, str(tmp_path / "lr.png"))
    assert drawn == [("log", pytest.approx((bottom, top)))]


def test_a_loss_that_is_not_finite_ends_the_test(
    write_config: Callable[..., Path], tiny_yaml: str, run_cli: Callable
) -> None:
    # lr up to 1e30: the loss overflows within a few steps, and the test stops there.
    config = write_config(tiny_yaml)
    result = run_cli(
        "lr-find", config, "--start", "1e-3", "--end", "1e30", "--steps", "40", "--json"
    )
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert len(found["lr"]) < 40
    assert found["stopped"].startswith(f"stopped at step {len(found['lr'])}")
    last = found["smoothed_loss"][-1]
    assert last is None or last > 4 * min(v for v in found["smoothed_loss"] if v is not None)


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (
            ["--start", "-1", "--end", "-2", "--steps", "1"],
            ["--start: -1.0 must be above 0", "--end: -2.0 must be above --start", "--steps: 1"],
        ),
        (["optimizer.lr=abc"], ["optimizer.lr: lr-find scales the optimizer's lr", "'abc'"]),
        (["optimizer.name=Adamm"], ["optimizer.name: unknown 'Adamm'; did you mean 'Adam'?"]),
        (
            ["step={name: gan}"],
            ["optimizers: step 'gan' needs optimizers named generator, discriminator"],
        ),
        (
            ["--steps", "1000000000000"],
            ["--steps: 1,000,000,000,000 is more than a range test takes (at most 10,000)"],
        ),
    ],
    ids=["range", "lr-not-a-number", "unknown-optimizer", "step-needs-two", "steps-too-many"],
)
def test_bad_input_is_exit_2(
    tmp_path: Path,
    write_config: Callable[..., Path],
    tiny_yaml: str,
    user_error: Callable,
    args: list[str],
    fragments: list[str],
) -> None:
    user_error("lr-find", write_config(tiny_yaml), *args, expect=fragments)
    assert not (tmp_path / "runs").exists()


def test_suggested_lr_never_comes_from_the_noisy_start() -> None:
    lrs = [10.0 ** (e / 10) for e in range(-60, 0)]
    # The first tenth falls steeply (the average settling), then a gentle fall to the end.
    smoothed = [10.0 - i for i in range(6)] + [4.0 - 0.01 * i for i in range(54)]
    lr, _ = suggest(lrs, smoothed)
    assert lrs.index(lr) >= 6


TWO_OPTIMIZERS = """\
optimizers:
  body:
    params: '^(conv|bn)'
    optimizer: {name: SGD, lr: 0.1, momentum: 0.9}
  head:
    params: '^fc\\.'
    optimizer: {name: SGD, lr: 0.2, momentum: 0.9}
"""


def test_several_optimizers_are_scaled_together_and_each_gets_its_lr(
    write_config: Callable[..., Path], tiny_yaml: str, run_cli: Callable
) -> None:
    one = "optimizer: {name: SGD, lr: 0.1, momentum: 0.9}\n"
    config = write_config(tiny_yaml.replace(one, TWO_OPTIMIZERS))
    result = run_cli("lr-find", config, "--start", "1e-4", "--end", "3", "--steps", "30", "--json")
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert found["lr_key"] == "optimizers.body.optimizer.lr"
    assert list(found["group_lr"]) == ["body/default", "head/default"]
    assert found["group_lr"]["body/default"] == found["lr"]
    for body, head in zip(*found["group_lr"].values(), strict=True):
        assert head == pytest.approx(2 * body, rel=1e-12)
    suggestions = found["suggestions"]
    assert suggestions["body"] == found["suggestion"]
    assert suggestions["head"] == pytest.approx(2 * found["suggestion"], rel=1e-12)
    assert found["overrides"] == [
        f"optimizers.body.optimizer.lr={suggestions['body']:.2g}",
        f"optimizers.head.optimizer.lr={suggestions['head']:.2g}",
    ]
    resolved = load_config(config, found["overrides"])
    assert resolved.optimizers["head"].optimizer.kwargs["lr"] == float(
        found["overrides"][1].split("=")[1]
    )


def test_a_custom_step_follows_its_first_metric(run_cli: Callable) -> None:
    gan = ROOT / "configs" / "gan.yaml"
    args = ["data.n=512", "trainer.device=cpu", "--start", "1e-5", "--end", "1", "--steps", "12"]
    result = run_cli("lr-find", gan, *args)
    assert result.exit_code == 0, result.output
    assert (
        "param groups scaled together: generator/default x1, discriminator/default x1; loss: "
        "the step's d_loss\n"
    ) in " ".join(result.stdout.split(" \n"))  # the console wraps long lines
    found = json.loads(run_cli("lr-find", gan, *args, "--json").stdout)
    assert (found["lr_key"], found["loss_key"]) == ("optimizers.generator.optimizer.lr", "d_loss")


def first_updates(
    monkeypatch: pytest.MonkeyPatch, optimizer: type[torch.optim.Optimizer], count: int
) -> Callable[[Callable[[], Result]], list[list[torch.Tensor]]]:
    """`first_updates(run)`: the parameters of each of the first `count` optimizer steps,
    right after the step, while `run()` trains."""

    def record(run: Callable[[], Result]) -> list[list[torch.Tensor]]:
        seen: list[list[torch.Tensor]] = []
        step = optimizer.step

        def recording(self: torch.optim.Optimizer, closure: Callable | None = None) -> object:
            loss = step(self, closure)
            if len(seen) < count:
                seen.append([p.detach().clone() for g in self.param_groups for p in g["params"]])
            return loss

        with monkeypatch.context() as patch:
            patch.setattr(optimizer, "step", recording)
            result = run()
        assert result.exit_code == 0, result.output
        assert len(seen) == count
        return seen

    return record


@pytest.mark.parametrize(
    ("config_name", "optimizer", "updates", "start"),
    [("tiny", torch.optim.SGD, 1, "0.1"), ("gan", torch.optim.Adam, 2, "0.001")],
)
@pytest.mark.parametrize("clipping", ["clip_grad_norm=0.01", "clip_grad_value=0.001"])
def test_the_first_step_is_fits_first_update(
    write_config: Callable[..., Path],
    tiny_yaml: str,
    run_cli: Callable,
    monkeypatch: pytest.MonkeyPatch,
    config_name: str,
    optimizer: type[torch.optim.Optimizer],
    updates: int,
    start: str,
    clipping: str,
) -> None:
    # At the config's lr, lr-find's first update is fit's (two batches accumulated, the
    # gradients clipped; every optimizer of a gan), bit for bit.
    if config_name == "tiny":
        # bn1 frozen and held in eval mode (freeze_norm_stats), as fit holds it.
        groups = """\
        param_groups:
          freeze: ['^bn1\\.']
          freeze_norm_stats: true
          rules: [{name: head, match: '^fc\\.', lr_mult: 0.5}]
        """
        config, small = write_config(tiny_yaml + textwrap.dedent(groups)), []
    else:
        config, small = ROOT / "configs" / "gan.yaml", ["data.n=512", "trainer.device=cpu"]
    overrides = [*small, "trainer.accumulate=2", f"trainer.{clipping}"]
    record = first_updates(monkeypatch, optimizer, updates)
    fitted = record(lambda: run_cli("fit", config, *overrides, "trainer.max_steps=1"))
    found = record(
        lambda: run_cli("lr-find", config, *overrides, "--start", start, "--steps", "2")
    )
    for fit_params, found_params in zip(fitted, found, strict=True):
        assert all(map(torch.equal, fit_params, found_params))


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        (
            ["trainer.clip_grad_norm=1", "trainer.clip_grad_value=0.5"],
            "trainer.clip_grad_value: 0.5 cannot be set with trainer.clip_grad_norm: 1.0 (one "
            "clipping per optimizer: by norm or by value, not both)",
        ),
        (
            ["trainer.clip_grad_norm=1", "optimizers.head.clip_grad_value=0.5"],
            "optimizers.head.clip_grad_value: 0.5 cannot be set with trainer.clip_grad_norm: 1.0",
        ),
        (
            ["optimizers.body.clip_grad_norm=2", "optimizers.body.clip_grad_value=0.5"],
            "optimizers.body.clip_grad_value: 0.5 cannot be set with "
            "optimizers.body.clip_grad_norm: 2.0",
        ),
    ],
    ids=["both-in-trainer", "one-in-trainer-one-per-optimizer", "both-per-optimizer"],
)
@pytest.mark.parametrize("command", ["fit", "lr-find"])
def test_clipping_by_norm_and_by_value_is_exit_2(
    tmp_path: Path,
    write_config: Callable[..., Path],
    tiny_yaml: str,
    user_error: Callable,
    overrides: list[str],
    problem: str,
    command: str,
) -> None:
    one = "optimizer: {name: SGD, lr: 0.1, momentum: 0.9}\n"
    config = write_config(tiny_yaml.replace(one, TWO_OPTIMIZERS))
    stderr = user_error(command, config, *overrides, expect=[problem])
    assert stderr.count("\n") == 1  # one line, once for both optimizers
    assert not (tmp_path / "runs").exists()


def turns_nan_at(forward: int, tiny_yaml: str) -> str:
    """The tiny config with a model whose `forward`-th forward gives NaN outputs."""
    model = "model: {name: small_cnn, num_classes: 4, in_channels: 3, width: 4}"
    nan_model = f'model: {{name: "helpers.loop:tiny_nan_at", forward: {forward}, image_size: 16}}'
    return tiny_yaml.replace(model, nan_model)


@pytest.mark.parametrize("as_json", [False, True], ids=["chart", "json"])
def test_a_model_that_turns_nan_stops_the_test_and_reports_what_it_has(
    write_config: Callable[..., Path],
    tiny_yaml: str,
    run_cli: Callable,
    as_json: bool,
) -> None:
    config = write_config(turns_nan_at(6, tiny_yaml))
    result = run_cli("lr-find", config, "--steps", "20", *(["--json"] if as_json else []))
    assert result.exit_code == 0, result.output
    stopped = "stopped at step 6 (lr 1.27e-05): the loss is nan"
    if as_json:
        found = json.loads(result.stdout)
        assert found["stopped"] == stopped
        assert found["smoothed_loss"][5] is None and None not in found["smoothed_loss"][:5]
    else:
        assert stopped in result.stdout
        assert "x: optimizer.lr 1e-07 .. 4.83e-06 (log scale)" in result.stdout  # 5 finite


def test_a_loss_that_is_nan_from_the_start_is_one_line_and_exit_1(
    write_config: Callable[..., Path],
    tiny_yaml: str,
    run_cli: Callable,
) -> None:
    result = run_cli("lr-find", write_config(turns_nan_at(1, tiny_yaml)))
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert result.stderr == (
        "error: the loss is nan at the first step (lr 1e-07), before the lr could matter: the "
        "model or the data gives a non-finite loss; nothing to test\n"
    )
