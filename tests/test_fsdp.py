"""trainer.strategy: fsdp (FSDP2 on CPU, gloo): real `--nproc 2` runs against ddp and one
process on the same seed and global batch; rules, freeze, several optimizers, accumulation,
activation checkpointing, mixed precision, skip_nonfinite; and the exit-2 refusals."""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.blocks import blocks_mlp
from test_distributed import trainer

from trainer.runs.metrics_file import is_epoch_record, read_metrics
from trainer.state.checkpoint import load_checkpoint
from trainer.state.sharded import read_sharded

UNITS = r"fsdp.units=[^blocks\.\d+$]"
FSDP = ["trainer.strategy=fsdp", UNITS]

# 20 optimizer steps at a global batch of 16 (one epoch of 320 samples): AdamW with its
# no_decay groups, a rule with its own lr, a frozen layer, a per-step StepLR (the lrs halved
# after step 10) and gradient clipping.
CONFIG = """\
    name: fsdp
    model: {name: "helpers.blocks:blocks_mlp"}
    data: {name: shapes, size: 320, image_size: 8, batch_size: 8, shuffle: false}
    optimizer: {name: AdamW, lr: 0.01, weight_decay: 0.1}
    param_groups:
      freeze: ['^embed\\.']
      no_decay: [bias, norm]
      rules: [{name: head, match: '^head\\.', lr: 0.003}]
    scheduler: {name: StepLR, step_size: 10, gamma: 0.5, interval: step}
    trainer: {epochs: 1, device: cpu, log_every: 2, clip_grad_norm: 0.5}
"""

GAN = """\
    name: gan
    model: {name: gan_mlp, latent: 4, hidden: 16}
    data: {name: ring, n: 512, batch_size: 32, val_batch_size: 128, shuffle: false}
    step: {name: gan}
    val_step: {name: ring_quality}
    optimizers:
      generator:
        params: '^generator\\.'
        optimizer: {name: Adam, lr: 1.0e-3, betas: [0.5, 0.999]}
      discriminator:
        params: '^discriminator\\.'
        optimizer: {name: Adam, lr: 1.0e-3, betas: [0.5, 0.999]}
    trainer: {epochs: 1, device: cpu, log_every: 2}
    checkpoint: {monitor: val/modes_covered}
"""


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """A run's last weights, full tensors: a ddp file, or the directory every fsdp rank wrote
    its shards into, read in this one process."""
    return load_checkpoint(run_dir / "checkpoints" / "last.pt").model


def optimizer_state_names(run_dir: Path, optimizer: str = "optimizer") -> set[str]:
    """The parameters `optimizer` holds state for, by name, as the sharded directory keeps them."""
    return set(read_sharded(run_dir / "checkpoints" / "last.pt")["optimizers"][optimizer]["state"])


def records(run_dir: Path) -> list[dict]:
    return read_metrics(run_dir / "metrics.jsonl")


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype == torch.float32, key
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=key)


def assert_records_close(a: list[dict], b: list[dict], keys: list[str], atol: float) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ours, theirs in zip(a, b, strict=True):
        assert {k for k in keys if k in ours} == {k for k in keys if k in theirs}
        for key in keys:
            if key in theirs:
                assert ours[key] == pytest.approx(theirs[key], abs=atol), (ours["step"], key)


def fit_all(root: Path, config: str, runs: dict[str, list[str]]) -> Path:
    """`trainer fit c.yaml trainer.out_dir=<name> <args>` for each run, in root: the
    one-process runs two at a time (one thread each), then the `--nproc 2` ones in turn."""
    (root / "c.yaml").write_text(textwrap.dedent(config))

    def fit(name: str) -> None:
        result = trainer(root, "fit", "c.yaml", f"trainer.out_dir={name}", *runs[name])
        assert result.returncode == 0, result.stdout + result.stderr
        (root / f"{name}.out").write_text(result.stdout)

    alone = [name for name, args in runs.items() if "--nproc" not in args]
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(fit, alone))
    for name in runs:
        if name not in alone:
            fit(name)
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CONFIG on one process (batch 16: ddp, fsdp, each with bf16 params too, and activation
    checkpointing) and on two (batch 8 each: ddp, fsdp, fsdp accumulating 2 batches of 4,
    fsdp with activation checkpointing, fsdp with bf16 params)."""
    two, one = ["--nproc", "2"], ["data.batch_size=16"]
    checkpointing = r"trainer.activation_checkpointing=[^blocks\.\d+$]"
    bf16 = ["fsdp.param_dtype=bf16", "fsdp.reduce_dtype=fp32"]
    return fit_all(
        tmp_path_factory.mktemp("fsdp"),
        CONFIG,
        {
            "one": one,
            "one_fsdp": [*one, *FSDP],
            "one_checkpointing": [*one, checkpointing],
            "one_bf16": [*one, *FSDP, *bf16],
            "ddp": two,
            "fsdp": [*two, *FSDP],
            "fsdp_accumulating": [*two, *FSDP, "trainer.accumulate=2", "data.batch_size=4"],
            "fsdp_checkpointing": [*two, *FSDP, checkpointing],
            "fsdp_bf16": [*two, *FSDP, *bf16],
        },
    )


# --- 1. fsdp equals ddp equals one process ---


def test_fsdp_equals_ddp_and_one_process_with_the_doubled_batch(runs: Path) -> None:
    assert records(runs / "fsdp")[-1]["step"] == 20
    one = weights(runs / "one")
    assert_close(weights(runs / "fsdp"), weights(runs / "ddp"), atol=1e-5)
    assert_close(weights(runs / "fsdp"), one, atol=1e-5)
    assert not torch.equal(one["head.weight"], blocks_mlp().state_dict()["head.weight"])


def test_fsdp_on_one_process_equals_one_process_exactly(runs: Path) -> None:
    ours, theirs = weights(runs / "one_fsdp"), weights(runs / "one")
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key


def test_the_summary_names_the_strategy_and_the_units(runs: Path) -> None:
    output = (runs / "fsdp.out").read_text()
    assert "distributed: 2 processes (gloo, fsdp), global batch 2 x 8 x 1 = 16" in output
    assert "fsdp units (4, " in output and "blocks.0 " in output and "(root) " in output


# --- 2. rules and freeze under fsdp ---


def test_frozen_tensors_are_unchanged_and_the_optimizer_holds_the_trainable_ones(
    runs: Path,
) -> None:
    torch.manual_seed(0)  # the config's seed: the model every run starts from
    initial = blocks_mlp().state_dict()
    for run in ("fsdp", "one_fsdp"):
        trained = weights(runs / run)
        for key in ("embed.weight", "embed.bias"):
            assert torch.equal(trained[key], initial[key]), (run, key)
        assert not torch.equal(trained["blocks.0.fc.weight"], initial["blocks.0.fc.weight"])
        trainable = {key for key in initial if not key.startswith("embed.")}
        assert optimizer_state_names(runs / run) == trainable, run


def test_grad_norm_lrs_and_losses_under_fsdp_are_ddps(runs: Path) -> None:
    keys = ["train/loss", "train/grad_norm", "val/loss", "val/acc", "lr/head", "lr/default"]
    keys += ["lr/head.no_decay", "lr/default.no_decay"]
    fsdp = records(runs / "fsdp")
    assert sum("train/grad_norm" in record for record in fsdp) == 10
    assert_records_close(fsdp, records(runs / "ddp"), keys, atol=1e-5)
    # The lrs the rule and the scheduler set: the head's own lr, halved after step 10.
    steps = [record for record in fsdp if not is_epoch_record(record)]
    assert steps[0]["lr/head"] == 0.003 and steps[-1]["lr/head"] == 0.0015


def test_groups_json_of_the_fsdp_config_lists_trainable_tensors_and_units(
    run_cli: Callable[..., Any], write_config: Callable[..., Path]
) -> None:
    path = write_config(CONFIG)
    result = run_cli("groups", path, "--json", *FSDP)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    listed = {name for group in document["groups"] for name in group["params"]}
    assert listed == {key for key in blocks_mlp().state_dict() if not key.startswith("embed.")}
    units = document["fsdp_units"]
    assert [unit["module"] for unit in units] == ["blocks.0", "blocks.1", "blocks.2", ""]
    total = sum(p.numel() for p in blocks_mlp().parameters())
    assert sum(unit["parameters"] for unit in units) == total
    assert units[0]["parameters"] == 16 * 16 + 16 + 2 * 16  # fc and norm
    assert "activation_checkpointing" not in document


# --- 3. a GAN with two optimizers ---


@pytest.fixture(scope="module")
def gans(tmp_path_factory: pytest.TempPathFactory) -> Path:
    two = ["--nproc", "2"]
    units = "fsdp.units=[^generator$, ^discriminator$]"
    return fit_all(
        tmp_path_factory.mktemp("gan"),
        GAN,
        {"ddp": two, "fsdp": [*two, "trainer.strategy=fsdp", units]},
    )


def test_a_gan_under_fsdp_equals_ddp(gans: Path) -> None:
    assert_close(weights(gans / "fsdp"), weights(gans / "ddp"), atol=1e-5)
    fsdp, ddp = records(gans / "fsdp"), records(gans / "ddp")
    keys = sorted({key for record in ddp for key in record} - {"train/samples_per_s"})
    assert any(key.startswith("train/") and "loss" in key for key in keys), keys
    assert_records_close(fsdp, ddp, [k for k in keys if k not in ("epoch", "step")], atol=1e-5)
    last = fsdp[-1]
    assert last["updates/generator"] == last["updates/discriminator"] == 8
    for name in ("generator", "discriminator"):
        assert optimizer_state_names(gans / "fsdp", name) == {
            key for key in weights(gans / "fsdp") if key.startswith(f"{name}.")
        }


# --- 4. accumulation ---


def test_accumulating_under_fsdp_equals_the_doubled_batch(runs: Path) -> None:
    assert records(runs / "fsdp_accumulating")[-1]["step"] == 20
    assert_close(weights(runs / "fsdp_accumulating"), weights(runs / "fsdp"), atol=1e-6)


# --- 5. activation checkpointing ---


def test_activation_checkpointing_keeps_the_weights(runs: Path) -> None:
    assert_close(weights(runs / "one_checkpointing"), weights(runs / "one"), atol=1e-6)
    assert_close(weights(runs / "fsdp_checkpointing"), weights(runs / "fsdp"), atol=1e-6)
    for run in ("one_checkpointing", "fsdp_checkpointing"):
        output = (runs / f"{run}.out").read_text()
        assert "activation checkpointing (3 modules): blocks.0, blocks.1, blocks.2" in output


def test_a_checkpointing_regex_matching_no_module_is_refused(
    tmp_path: Path, user_error: Callable[..., str], write_config: Callable[..., Path]
) -> None:
    path = write_config(CONFIG)
    for strategy in ([], FSDP):
        user_error(
            "fit", path, *strategy, r"trainer.activation_checkpointing=[^blocks\.\d+$, ^attn$]",
            expect=["trainer.activation_checkpointing.1", "'^attn$' matches no module"],
        )  # fmt: skip
    assert not (tmp_path / "runs").exists()


# --- 6. refusals before anything is written ---


REFUSALS = {
    "units matching no module": (
        [*FSDP[:1], r"fsdp.units=[^blocks\.\d+$, ^layers\.\d+$]"],
        ["fsdp.units.1", "'^layers\\\\.\\\\d+$' matches no module", "blocks.0"],
    ),
    "fsdp settings without fsdp": (
        [UNITS],
        ["fsdp:", "trainer.strategy: fsdp", "strategy is 'ddp'"],
    ),
    "LBFGS": (
        [*FSDP, "optimizer={name: LBFGS, lr: 0.1}"],
        ["optimizer", "LBFGS", "closure", "trainer.strategy: fsdp"],
    ),
    "fp16 params without a scaler": (
        [*FSDP, "fsdp.param_dtype=fp16"],
        ["fsdp.param_dtype", "trainer.precision: fp16"],
    ),
    "cpu offload on cpu": (
        [*FSDP, "fsdp.cpu_offload=true"],
        ["fsdp.cpu_offload", "cpu"],
    ),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_fsdp_refusals_exit_2_before_writing(
    case: str,
    tmp_path: Path,
    user_error: Callable[..., str],
    write_config: Callable[..., Path],
) -> None:
    overrides, expect = REFUSALS[case]
    path = write_config(CONFIG)
    user_error("fit", path, *overrides, expect=expect)
    assert not (tmp_path / "runs").exists()


def test_fsdp_settings_without_fsdp_are_refused_by_trainer_config(
    user_error: Callable[..., str], write_config: Callable[..., Path]
) -> None:
    path = write_config(CONFIG)
    user_error("config", path, UNITS, expect=["fsdp:", "strategy is 'ddp'"])


def test_a_custom_step_without_units_is_refused(
    tmp_path: Path, user_error: Callable[..., str], write_config: Callable[..., Path]
) -> None:
    path = write_config(GAN)
    user_error(
        "fit", path, "trainer.strategy=fsdp",
        expect=["fsdp.units", "step 'gan'", "'^generator$', '^discriminator$'"],
    )  # fmt: skip
    assert not (tmp_path / "runs").exists()


def test_units_matching_no_module_under_torchrun_exit_2(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(textwrap.dedent(CONFIG))
    result = trainer(
        tmp_path, "fit", "c.yaml", "trainer.strategy=fsdp", "fsdp.units=[^layers$]", "--nproc", "2"
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    assert "fsdp.units.0: '^layers$' matches no module" in result.stderr
    assert not (tmp_path / "runs").exists()


# --- 7. trainer groups ---


def test_groups_prints_the_units_innermost_first_and_the_root_last(
    run_cli: Callable[..., Any], write_config: Callable[..., Path]
) -> None:
    path = write_config(CONFIG)
    checkpointing = r"trainer.activation_checkpointing=[fc$]"
    result = run_cli("groups", path, *FSDP[:1], r"fsdp.units=[^blocks\.\d+$, \.fc$]", checkpointing)
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    # blocks.<i>.fc are inside blocks.<i>: they come first; blocks.<i> keep their norms.
    fc, norm, total = 16 * 16 + 16, 2 * 16, sum(p.numel() for p in blocks_mlp().parameters())
    units = ", ".join(
        [*(f"blocks.{i}.fc {fc}" for i in range(3)), *(f"blocks.{i} {norm}" for i in range(3))]
    )
    root = total - 3 * (fc + norm)
    assert f"fsdp units (7, {total:,} parameters): {units}, (root) {root:,}" in text
    assert "activation checkpointing (3 modules): blocks.0.fc, blocks.1.fc, blocks.2.fc" in text

    result = run_cli("groups", path, "trainer.strategy=fsdp")
    assert result.exit_code == 0, result.output
    assert f"fsdp units (1, {total:,} parameters): (root) {total:,}" in result.stdout
    assert "the root alone is sharded" in result.stdout


# --- 8. mixed precision: bf16 parameters, fp32 reduction ---


def test_bf16_params_train_in_bf16_and_keep_fp32_weights(runs: Path) -> None:
    for run, fp32 in (("one_bf16", "one_fsdp"), ("fsdp_bf16", "fsdp")):
        ours, theirs = records(runs / run), records(runs / fp32)
        losses = [r["train/loss"] for r in ours if not is_epoch_record(r)]
        assert all(math.isfinite(loss) for loss in losses), run
        assert losses[-1] < losses[0], (run, losses)
        # The policy is applied: computed in bf16, the losses are not the fp32 run's ...
        assert ours[0]["train/loss"] != theirs[0]["train/loss"], run
        # ... but close to them; the sharded weights stay fp32.
        assert ours[0]["train/loss"] == pytest.approx(theirs[0]["train/loss"], abs=0.05), run
        trained = weights(runs / run)
        assert {value.dtype for value in trained.values()} == {torch.float32}, run


# --- 9. skip_nonfinite ---


def test_a_nan_on_one_rank_skips_the_step_on_both(tmp_path: Path) -> None:
    # Rank 0 (which logs) sees a NaN gradient that, reduced, lies in rank 1's shard alone.
    model = '{name: "helpers.blocks:blocks_mlp_troubled_rank", rank: "0", nan_at: 3}'
    config = textwrap.dedent(CONFIG).replace('{name: "helpers.blocks:blocks_mlp"}', model)
    config = config.replace("size: 320", "size: 160").replace(
        "epochs: 1,", "epochs: 1, skip_nonfinite: true,"
    )
    fit_all(tmp_path, config, {"skipping": ["--nproc", "2", *FSDP]})
    logged = records(tmp_path / "skipping")
    assert [r["train/skipped"] for r in logged if not is_epoch_record(r)] == [0, 1, 0, 0, 0]
    assert logged[-1]["step"] == 10 and logged[-1]["train/skipped"] == 1
    assert all(math.isfinite(r["train/loss"]) for r in logged)
    assert all(value.isfinite().all() for value in weights(tmp_path / "skipping").values())
