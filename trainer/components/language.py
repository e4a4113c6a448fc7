"""Language modelling, built in and offline: the `tiny_gpt` transformer, the `markov_text`
dataset (sequences from a seeded random Markov chain whose entropy rate, the best loss any
model can reach, is computed exactly), and the loss that reads a sequence's logits.

A sequence's logits come classes last, `(batch, seq, vocab)` for `(batch, seq)` targets (the
layout of nanoGPT and HF transformers); `classes_last` is the one rule that says so, for the
loss (`TokenLoss`), for validation's accuracy and for `val/perplexity`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset


class Embedding(nn.Module):
    """Token embedding plus a learned position embedding (`tokens`, `positions`)."""

    def __init__(self, vocab_size: int, dim: int, seq_len: int) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, dim)
        self.positions = nn.Embedding(seq_len, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        if length > self.positions.num_embeddings:
            raise ValueError(
                f"a sequence of {length} tokens is longer than the model's seq_len "
                f"({self.positions.num_embeddings})"
            )
        return self.tokens(tokens) + self.positions(torch.arange(length, device=tokens.device))


class Attention(nn.Module):
    """Causal multi-head self-attention: one `qkv` projection, torch's fused attention, `proj`."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, dim // self.heads).unbind(2)
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=True,
        )
        return self.proj(y.transpose(1, 2).reshape(batch, length, dim))


class Block(nn.Module):
    """A pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_ratio * dim),
            nn.GELU(),
            nn.Linear(mlp_ratio * dim, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyGPT(nn.Module):
    """A decoder-only transformer: `embed`, `blocks.<i>`, `norm`, `head` (not weight-tied, so
    each is its own sharding unit and its own param-group rule)."""

    def __init__(
        self,
        vocab_size: int,
        dim: int,
        depth: int,
        heads: int,
        seq_len: int,
        mlp_ratio: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if min(vocab_size, dim, depth, heads, seq_len, mlp_ratio) < 1 or dim % heads:
            raise ValueError(
                "need vocab_size, dim, depth, heads, seq_len, mlp_ratio >= 1 and dim divisible "
                f"by heads (got vocab_size={vocab_size}, dim={dim}, depth={depth}, "
                f"heads={heads}, seq_len={seq_len}, mlp_ratio={mlp_ratio})"
            )
        self.embed = Embedding(vocab_size, dim, seq_len)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size)
        # GPT-2's initialisation: the projections into the residual stream scaled with depth.
        residual = ("attn.proj.weight", "mlp.2.weight")
        for name, param in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(param)
            elif param.dim() > 1:
                scale = 1 / math.sqrt(2 * depth) if name.endswith(residual) else 1.0
                nn.init.normal_(param, std=0.02 * scale)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids (batch, seq) → next-token logits (batch, seq, vocab_size)."""
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def tiny_gpt(
    vocab_size: int = 16,
    dim: int = 64,
    depth: int = 2,
    heads: int = 4,
    seq_len: int = 64,
    mlp_ratio: int = 4,
    dropout: float = 0.0,
) -> TinyGPT:
    """A small decoder-only transformer (GPT-2 style, pre-norm, learned positions) over token
    ids; modules embed, blocks.<i>, norm, head."""
    return TinyGPT(vocab_size, dim, depth, heads, seq_len, mlp_ratio, dropout)


@dataclass
class MarkovChain:
    """An order-k chain over `vocab_size` tokens: row c of `transitions` is P(next | context c),
    where context c numbers the last k tokens oldest first (base vocab_size)."""

    transitions: np.ndarray  # (vocab_size**order, vocab_size), float64
    order: int

    @property
    def vocab_size(self) -> int:
        return self.transitions.shape[1]

    @classmethod
    def random(
        cls, vocab_size: int, order: int, concentration: float, rng: np.random.Generator
    ) -> MarkovChain:
        """Each context's next-token distribution drawn from a symmetric Dirichlet: a small
        `concentration` makes the rows peaked (low entropy), a large one near uniform."""
        alpha = np.full(vocab_size, concentration)
        return cls(rng.dirichlet(alpha, size=vocab_size**order), order)

    def stationary(self, *, tolerance: float = 1e-15, max_iterations: int = 100_000) -> np.ndarray:
        """The stationary distribution over contexts (float64), by power iteration of the lazy
        chain (half a step: the same fixed point, and it converges on periodic chains too)."""
        states = self.transitions.shape[0]
        pi = np.full(states, 1.0 / states)
        for _ in range(max_iterations):
            joint = pi[:, None] * self.transitions  # (context, next token)
            # Context (a1..ak) then x moves to context (a2..ak, x): drop the oldest token.
            moved = joint.reshape(self.vocab_size, states // self.vocab_size, -1).sum(0)
            new = 0.5 * (pi + moved.reshape(states))
            if np.abs(new - pi).max() < tolerance:
                return new / new.sum()
            pi = new
        raise ValueError(f"the stationary distribution did not converge in {max_iterations} steps")

    def entropy_rate(self) -> float:
        """H = -sum_c pi(c) sum_x P(x|c) log P(x|c), in nats: the mean cross-entropy of the
        best possible next-token predictor, once it sees k tokens of context."""
        return float(self.stationary() @ _entropies(self.transitions))

    def best_loss(self, seq_len: int) -> float:
        """The least mean cross-entropy (nats) over `seq_len` next-token predictions of a
        sequence started from the stationary distribution: the first k-1 predictions see fewer
        than k tokens, and position j costs H(X_j | X_<j) = H(X_<=j) - H(X_<j), computed from
        the stationary k-gram marginals; the others cost the entropy rate."""
        if seq_len < self.order:
            raise ValueError(f"seq_len ({seq_len}) must be at least the order ({self.order})")
        pi = self.stationary()
        # Joint entropy of the first j tokens, j = 1 and k: the k-1 short predictions
        # telescope to H(X_1..X_k) - H(X_1).
        first = pi.reshape(self.vocab_size, -1).sum(1)
        short = _entropies(pi[None, :])[0] - _entropies(first[None, :])[0]
        return float((short + (seq_len - self.order + 1) * self.entropy_rate()) / seq_len)

    def sample(self, count: int, length: int, rng: np.random.Generator) -> np.ndarray:
        """`count` sequences of `length` tokens (int64), each started from the stationary
        distribution of its first k tokens."""
        vocab, order = self.vocab_size, self.order
        pi = self.stationary()
        context = rng.choice(len(pi), size=count, p=pi / pi.sum())
        tokens = np.empty((count, length), dtype=np.int64)
        for position in range(min(order, length)):  # the context's digits, oldest first
            tokens[:, position] = context // vocab ** (order - 1 - position) % vocab
        cumulative = self.transitions.cumsum(axis=1)
        for position in range(order, length):
            draw = rng.random(count)
            token = (cumulative[context] <= draw[:, None]).sum(axis=1).clip(max=vocab - 1)
            tokens[:, position] = token
            context = context % vocab ** (order - 1) * vocab + token
        return tokens


def _entropies(rows: np.ndarray) -> np.ndarray:
    """-sum p log p of each row, in nats (0 log 0 = 0)."""
    logs = np.log(np.where(rows > 0, rows, 1.0))
    return -(rows * logs).sum(axis=1)


class MarkovText(TensorDataset):
    """(inputs, targets) token sequences of a Markov chain: targets are inputs shifted by one.
    `notes` state the chain's entropy rate and the best loss a model can reach."""

    def __init__(self, tokens: torch.Tensor, chain: MarkovChain, notes: list[str]) -> None:
        super().__init__(tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous())
        self.chain, self.notes = chain, notes


def markov_text(
    train: bool = True,
    *,
    vocab_size: int = 16,
    order: int = 2,
    seq_len: int = 64,
    n: int | None = None,
    concentration: float = 0.2,
    seed: int = 0,
) -> MarkovText:
    """Token sequences from a seeded random order-k Markov chain (offline); its entropy rate,
    the best loss possible, is computed exactly and stated in the run's notes.

    `n` sequences of `seq_len` next-token predictions for training (4096 by default), a
    quarter as many for validation, drawn from the same chain. `concentration` (the
    Dirichlet's, of each context's next-token distribution): smaller is more predictable.
    """
    if vocab_size < 2 or order < 1 or seq_len < order or concentration <= 0:
        raise ValueError(
            "need vocab_size >= 2, order >= 1, seq_len >= order, concentration > 0 "
            f"(got {vocab_size}, {order}, {seq_len}, {concentration})"
        )
    if vocab_size**order > 2**20:
        raise ValueError(f"vocab_size**order = {vocab_size**order} contexts; at most 2**20")
    n = n if n is not None else 4096
    n = n if train else max(n // 4, 1)
    chain_seed, train_seed, val_seed = np.random.SeedSequence(seed).spawn(3)
    chain = MarkovChain.random(vocab_size, order, concentration, np.random.default_rng(chain_seed))
    draws = np.random.default_rng(train_seed if train else val_seed)
    tokens = torch.from_numpy(chain.sample(n, seq_len + 1, draws))
    rate, best = chain.entropy_rate(), chain.best_loss(seq_len)
    notes = [
        f"markov_text: entropy rate {rate:.4f} nats/token (perplexity {math.exp(rate):.3f}; "
        f"uniform: {math.log(vocab_size):.4f}); best possible val/loss over {seq_len} positions "
        f"{best:.4f} (the first {order - 1} of them see fewer than {order} tokens)"
    ]
    return MarkovText(tokens, chain, notes)


def classes_last(outputs: torch.Tensor, targets: torch.Tensor) -> bool:
    """Whether `outputs` are a sequence's class scores, classes last: (batch, seq, classes)
    for (batch, seq) class-index targets (a language model's logits)."""
    return (
        outputs.dim() == 3
        and targets.dim() == 2
        and not targets.is_floating_point()
        and outputs.shape[:2] == targets.shape
    )


class TokenLoss(nn.Module):
    """A class-index loss (CrossEntropyLoss, NLLLoss) that also takes a sequence's logits with
    the classes last (`classes_last`): computed over the tokens, as if flattened to
    (batch * seq, classes); other shapes go to the loss as they are."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if not classes_last(outputs, targets):
            return self.loss(outputs, targets)
        loss = self.loss(outputs.flatten(0, 1), targets.flatten())
        return loss.view(targets.shape) if loss.dim() else loss  # reduction: none
