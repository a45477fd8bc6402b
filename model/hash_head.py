"""Hash layers: FC -> ReLU -> FC -> tanh on the [CLS] feature, one head per code length."""

from __future__ import annotations

import torch
from torch import nn


class HashHead(nn.Module):
    def __init__(self, dim: int, hidden: int, bits: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, D] -> continuous codes in (-1, 1) [B, bits]."""
        return torch.tanh(self.fc2(torch.relu(self.fc1(x))))


class MultiHashHead(nn.Module):
    """Heads for several code lengths trained jointly on one encoder; keys are str(bits)."""

    def __init__(self, dim: int, hidden: int, bits: tuple[int, ...]):
        super().__init__()
        self.bits = tuple(bits)
        self.heads = nn.ModuleDict({str(b): HashHead(dim, hidden, b) for b in self.bits})

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        return {b: self.heads[str(b)](x) for b in self.bits}


def binarize(h: torch.Tensor) -> torch.Tensor:
    """Continuous codes -> {-1, +1} (zero maps to +1, so every bit is defined)."""
    return torch.where(h >= 0, torch.ones_like(h), -torch.ones_like(h))
