"""Language modelling: tiny_gpt, markov_text (its exact entropy rate), the loss over a
sequence's tokens, val/perplexity, and a short LM fit through the CLI."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from trainer.components.data import build_loaders, dataset_notes
from trainer.components.language import MarkovChain, markov_text, tiny_gpt
from trainer.components.optim import build_loss
from trainer.config import LossConfig, validate_config
from trainer.config.metric_names import default_mode
from trainer.engine.build import unlogged_monitors
from trainer.engine.evaluate import evaluate, perplexity
from trainer.runs.metrics_file import is_epoch_record, read_metrics

SMALL = {"vocab_size": 11, "dim": 16, "depth": 2, "heads": 2, "seq_len": 12}


def small_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return tiny_gpt(**SMALL)


# ---------------------------------------------------------------- tiny_gpt


def test_tiny_gpt_maps_tokens_to_logits_per_position() -> None:
    tokens = torch.randint(11, (3, 12))
    assert small_model()(tokens).shape == (3, 12, 11)
    assert small_model()(tokens[:, :5]).shape == (3, 5, 11)  # shorter than seq_len
    with pytest.raises(ValueError, match="longer than the model's seq_len"):
        small_model()(torch.zeros(1, 13, dtype=torch.long))


def test_tiny_gpt_is_causal() -> None:
    model = small_model().eval()
    tokens = torch.randint(11, (2, 12), generator=torch.Generator().manual_seed(1))
    changed = tokens.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 11
    before, after = model(tokens), model(changed)
    assert torch.equal(before[:, :7], after[:, :7])  # the past does not see the change
    assert not torch.allclose(before[:, 7:], after[:, 7:])


def test_tiny_gpt_module_names() -> None:
    model = small_model()
    assert [name for name, _ in model.named_children()] == ["embed", "blocks", "norm", "head"]
    names = [name for name, _ in model.named_parameters()]
    assert all(re.match(r"(embed|blocks\.\d+|norm|head)\.", name) for name in names), names
    modules = dict(model.named_modules())
    for part in ("norm1", "attn", "attn.qkv", "attn.proj", "norm2", "mlp"):
        assert f"blocks.1.{part}" in modules
    assert "blocks.2" not in modules
    assert isinstance(modules["norm"], torch.nn.LayerNorm)
    assert modules["head"].weight.data_ptr() != modules["embed.tokens"].weight.data_ptr()


def test_tiny_gpt_is_deterministic() -> None:
    first, second, other = small_model(0), small_model(0), small_model(1)
    tokens = torch.randint(11, (2, 12))
    weights, again = first.state_dict(), second.state_dict()
    assert weights.keys() == again.keys()
    assert all(torch.equal(weights[name], again[name]) for name in weights)
    assert torch.equal(first(tokens), second(tokens))
    assert not torch.equal(first.state_dict()["head.weight"], other.state_dict()["head.weight"])


def test_tiny_gpt_refuses_heads_that_do_not_divide_dim() -> None:
    with pytest.raises(ValueError, match="divisible by heads"):
        tiny_gpt(dim=10, heads=4)


# ---------------------------------------------------------------- markov_text


def test_markov_text_is_a_function_of_its_seed() -> None:
    options = {"vocab_size": 5, "order": 2, "seq_len": 9, "n": 40}
    first, again = markov_text(**options), markov_text(**options)
    assert torch.equal(first.tensors[0], again.tensors[0])
    assert not torch.equal(first.tensors[0], markov_text(**options, seed=1).tensors[0])
    val = markov_text(False, **options)
    assert len(first) == 40 and len(val) == 10
    as_many = markov_text(**{**options, "n": 10})
    assert not torch.equal(as_many.tensors[0], val.tensors[0])  # other draws...
    assert np.array_equal(first.chain.transitions, val.chain.transitions)  # ...same chain


def test_markov_text_targets_are_the_inputs_shifted() -> None:
    data = markov_text(vocab_size=5, seq_len=9, n=8)
    inputs, targets = data.tensors
    assert inputs.shape == targets.shape == (8, 9)
    assert inputs.dtype == targets.dtype == torch.int64
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    assert int(inputs.min()) >= 0 and int(inputs.max()) < 5


def test_transition_rows_are_distributions() -> None:
    chain = markov_text(vocab_size=7, order=3, n=1).chain
    assert chain.transitions.shape == (7**3, 7)
    assert np.allclose(chain.transitions.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert (chain.transitions >= 0).all()


def binary_entropy(p: float) -> float:
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def test_entropy_rate_of_a_two_state_chain_by_hand() -> None:
    # P(0→1) = a, P(1→0) = b: stationary (b, a) / (a + b).
    a, b = 0.1, 0.4
    chain = MarkovChain(np.array([[1 - a, a], [b, 1 - b]]), order=1)
    pi = np.array([b, a]) / (a + b)
    assert np.allclose(chain.stationary(), pi, rtol=0, atol=1e-13)
    expected = pi[0] * binary_entropy(a) + pi[1] * binary_entropy(b)
    assert chain.entropy_rate() == pytest.approx(expected, rel=1e-12)
    assert chain.best_loss(10) == pytest.approx(expected, rel=1e-12)  # order 1: all see it


def test_best_loss_of_an_order_two_chain_by_hand() -> None:
    # The next token copies the one two back with probability 1 - e: the chain over pairs
    # is doubly stochastic, so pairs are uniform; the first prediction sees one token, which
    # says nothing of the next (log 2), the others cost h(e).
    e = 0.1
    copy = np.array([[1 - e, e], [1 - e, e], [e, 1 - e], [e, 1 - e]])  # rows: pairs 00 01 10 11
    chain = MarkovChain(copy, order=2)
    assert np.allclose(chain.stationary(), 0.25, rtol=0, atol=1e-13)
    assert chain.entropy_rate() == pytest.approx(binary_entropy(e), rel=1e-12)
    length = 8
    best = (math.log(2) + (length - 1) * binary_entropy(e)) / length
    assert chain.best_loss(length) == pytest.approx(best, rel=1e-12)


def test_stationary_distribution_solves_the_linear_system() -> None:
    chain = markov_text(vocab_size=4, order=2, n=1, concentration=0.3).chain
    # The chain over pairs: (a, b) → (b, x) with P(x | a, b).
    states, vocab = 16, 4
    matrix = np.zeros((states, states))
    for context in range(states):
        for token in range(vocab):
            matrix[context, context % vocab * vocab + token] += chain.transitions[context, token]
    system = np.vstack([matrix.T - np.eye(states), np.ones(states)])
    solved = np.linalg.lstsq(system, np.r_[np.zeros(states), 1.0], rcond=None)[0]
    assert np.allclose(chain.stationary(), solved, rtol=0, atol=1e-12)


def test_entropy_rate_matches_a_long_sample() -> None:
    """The mean -log P(x | context) over a long sample estimates the entropy rate without
    bias; within 5 standard errors of the sample (about 0.01 nats here)."""
    chain = markov_text(vocab_size=6, order=2, n=1, concentration=0.5).chain
    tokens = chain.sample(200, 1001, np.random.default_rng(7))
    contexts = tokens[:, :-2] * 6 + tokens[:, 1:-1]
    surprise = -np.log(chain.transitions[contexts, tokens[:, 2:]]).ravel()
    error = surprise.std() / math.sqrt(surprise.size)
    assert abs(surprise.mean() - chain.entropy_rate()) < 5 * error
    spread = np.bincount(contexts.ravel(), minlength=36) / contexts.size
    assert np.abs(spread - chain.stationary()).max() < 0.01


def test_sequences_start_from_the_stationary_distribution() -> None:
    """The first k tokens' frequencies over many draws are the stationary ones (within 0.01,
    about 5 standard errors); a uniform start would be 0.05 off."""
    chain = markov_text(vocab_size=6, order=2, n=1, concentration=0.5).chain
    tokens = chain.sample(20_000, 2, np.random.default_rng(3))
    firsts = np.bincount(tokens[:, 0] * 6 + tokens[:, 1], minlength=36) / 20_000
    assert np.abs(firsts - chain.stationary()).max() < 0.01
    assert np.abs(chain.stationary() - 1 / 36).max() > 0.05


def test_notes_state_the_entropy_rate_and_the_best_loss() -> None:
    config = validate_config(
        {
            "name": "lm",
            "model": {"name": "tiny_gpt"},
            "data": {"name": "markov_text", "vocab_size": 4, "seq_len": 8, "n": 32,
                     "batch_size": 8, "val_fraction": 0.25},
        }
    )  # fmt: skip
    train, val = build_loaders(config.data, seed=0, device=torch.device("cpu"))
    chain = markov_text(vocab_size=4, seq_len=8, n=1).chain
    notes = dataset_notes(train, val)  # through the Subsets of val_fraction, once
    assert len(notes) == 1
    assert f"entropy rate {chain.entropy_rate():.4f} nats/token" in notes[0]
    assert f"best possible val/loss over 8 positions {chain.best_loss(8):.4f}" in notes[0]


# ---------------------------------------------------------------- the loss and validation


@pytest.mark.parametrize("options", [{}, {"label_smoothing": 0.1}])
def test_sequence_cross_entropy_is_over_the_flattened_tokens(options: dict) -> None:
    loss_fn = build_loss(LossConfig(name="CrossEntropyLoss", **options))
    generator = torch.Generator().manual_seed(0)
    for length in (5, 7):  # 7: as many positions as classes, still classes last
        logits = torch.randn(3, length, 7, generator=generator)
        targets = torch.randint(7, (3, length), generator=generator)
        flat = F.cross_entropy(logits.reshape(-1, 7), targets.reshape(-1), **options)
        assert torch.equal(loss_fn(logits, targets), flat)
    per_token = build_loss(LossConfig(name="CrossEntropyLoss", reduction="none", **options))
    assert per_token(logits, targets).shape == (3, 7)
    # Other shapes are torch's: (batch, classes) and (batch, classes, d) with (batch, d).
    images = torch.randn(4, 7, 3, 2, generator=generator)
    labels = torch.randint(7, (4, 3, 2), generator=generator)
    assert torch.equal(loss_fn(images, labels), F.cross_entropy(images, labels, **options))
    assert torch.equal(loss_fn(logits[:, 0], targets[:, 0]),
                       F.cross_entropy(logits[:, 0], targets[:, 0], **options))  # fmt: skip


def test_evaluate_logs_per_token_loss_accuracy_and_perplexity() -> None:
    model = small_model().eval()
    generator = torch.Generator().manual_seed(2)
    inputs = torch.randint(11, (10, 12), generator=generator)
    targets = torch.randint(11, (10, 12), generator=generator)
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=4)  # 4, 4, 2
    loss_fn = build_loss(LossConfig(name="CrossEntropyLoss"))
    values = evaluate(model, loader, loss_fn, torch.device("cpu"), "fp32")
    assert values.keys() == {"val/loss", "val/acc", "val/perplexity"}
    assert values["val/perplexity"] == math.exp(values["val/loss"])
    with torch.no_grad():
        logits = model(inputs)
    flat = F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1), reduction="none")
    assert values["val/loss"] == pytest.approx(float(flat.double().mean()), rel=1e-6)
    correct = (logits.argmax(dim=-1) == targets).double().mean()
    assert values["val/acc"] == float(correct)


def test_perplexity_of_a_huge_loss_is_infinite() -> None:
    assert perplexity(1000.0) == math.inf
    assert math.isnan(perplexity(math.nan))


def test_evaluate_logs_no_perplexity_for_classes() -> None:
    model = torch.nn.Linear(3, 4)
    loader = DataLoader(TensorDataset(torch.randn(6, 3), torch.randint(4, (6,))), batch_size=4)
    loss_fn = build_loss(LossConfig(name="CrossEntropyLoss"))
    assert evaluate(model, loader, loss_fn, torch.device("cpu"), "fp32").keys() == {
        "val/loss",
        "val/acc",
    }


def test_perplexity_is_a_monitor_known_before_training() -> None:
    assert default_mode("val/perplexity") == "min"
    config = validate_config(
        {"name": "lm", "model": {"name": "tiny_gpt"}, "data": {"name": "markov_text"},
         "checkpoint": {"monitor": "val/perplexity"}}
    )  # fmt: skip
    assert config.checkpoint.mode == "min"
    assert unlogged_monitors(config) == []


# ---------------------------------------------------------------- through the CLI

LM_CONFIG = """
    name: lm
    seed: 0
    model: {name: tiny_gpt, vocab_size: 6, dim: 16, depth: 1, heads: 2, seq_len: 8}
    data: {name: markov_text, vocab_size: 6, seq_len: 8, n: 64, batch_size: 16}
    loss: {name: CrossEntropyLoss, label_smoothing: 0.05}
    optimizer: {name: AdamW, lr: 0.01}
    checkpoint: {monitor: val/perplexity}
    trainer: {epochs: 2, device: cpu, log_every: 2}
"""


def test_fit_and_eval_a_language_model(write_config, run_cli, tmp_path: Path) -> None:
    write_config(LM_CONFIG, "lm.yaml")
    result = run_cli("fit", "lm.yaml")
    assert result.exit_code == 0, (result.exception, result.output)
    chain = markov_text(vocab_size=6, seq_len=8, n=1).chain
    assert f"markov_text: entropy rate {chain.entropy_rate():.4f} nats/token" in result.output
    run_dir = tmp_path / "runs" / "lm"
    epochs = [r for r in read_metrics(run_dir / "metrics.jsonl") if is_epoch_record(r)]
    assert len(epochs) == 2
    for record in epochs:
        assert record["val/perplexity"] == math.exp(record["val/loss"])
        assert 0 <= record["val/acc"] <= 1
    assert (run_dir / "checkpoints" / "best.pt").is_file()
    evaluated = run_cli("eval", "lm.yaml", "--checkpoint", run_dir / "checkpoints/last.pt",
                        "--json")  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout) == pytest.approx(
        {key: epochs[-1][key] for key in ("val/loss", "val/acc", "val/perplexity")}, rel=1e-6
    )
