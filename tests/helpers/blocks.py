"""Models with named blocks for trainer.strategy: fsdp (units `^blocks\\.\\d+$`), without batch
norm or dropout, so fsdp, ddp and one process with the doubled batch compute the same."""

import os
from typing import Any

import torch
from torch import nn


class Block(nn.Module):
    """x + tanh(fc(norm(x))): a residual block with a norm layer (for no_decay: norm)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.tanh(self.fc(self.norm(x)))


class BlocksMLP(nn.Module):
    """embed -> blocks.<i> -> norm -> head, on flattened 3 x 8 x 8 images."""

    def __init__(self, num_classes: int = 4, width: int = 16, depth: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(3 * 8 * 8, width)
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x.flatten(1))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def blocks_mlp(num_classes: int = 4, width: int = 16, depth: int = 3) -> nn.Module:
    return BlocksMLP(num_classes, width, depth)


class NanGrad(torch.autograd.Function):
    """Identity forward; backward puts NaN into element `index` of the gradient alone."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, index: int) -> torch.Tensor:
        ctx.index = index
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.clone()
        grad[ctx.index] = float("nan")
        return grad, None


class TroubledBlocksMLP(BlocksMLP):
    """BlocksMLP plus a trainable output shift (`shift`, one per class), whose gradient's
    last element alone is NaN at rank `rank`'s `nan_at`-th training forward: the loss stays
    finite, and once reduced the NaN lies in the last rank's shard of `shift` only."""

    def __init__(self, num_classes: int, width: int, depth: int, rank: str, nan_at: int) -> None:
        super().__init__(num_classes, width, depth)
        self.shift = nn.Parameter(torch.zeros(num_classes))
        self.rank, self.nan_at, self.forwards = rank, nan_at, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shift = self.shift
        if self.training and os.environ.get("RANK") == self.rank:
            self.forwards += 1
            if self.forwards == self.nan_at:
                shift = NanGrad.apply(shift, -1)
        return super().forward(x) + shift


def blocks_mlp_troubled_rank(
    num_classes: int = 4, *, rank: str, nan_at: int, width: int = 16, depth: int = 3
) -> nn.Module:
    """`blocks_mlp` whose rank `rank` alone gets a NaN gradient at its `nan_at`-th training
    forward, in one element that (reduced and sharded over 2 processes) rank 1 holds: only
    the ranks agreeing on it makes rank 0 skip the step too."""
    return TroubledBlocksMLP(num_classes, width, depth, rank, nan_at)
