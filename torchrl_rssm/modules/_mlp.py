"""The MLP shared by the vector encoder, the vector decoder and the reward head."""
from __future__ import annotations

import torch
from torch import nn


def mlp(in_dim: int, out_dim: int, hidden_dim: int, depth: int, activation: type[nn.Module],
        device: torch.device | str | None = None) -> nn.Sequential:
    """``depth`` hidden layers of ``hidden_dim`` units (each followed by ``activation``), then a linear output.

    Layer indices (``0.weight``, ``2.weight``, ...) are those of the modules' ``net``
    attribute, so state dicts keep their names.
    """
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(depth):
        layers += [nn.Linear(width, hidden_dim, device=device), activation()]
        width = hidden_dim
    layers.append(nn.Linear(width, out_dim, device=device))
    return nn.Sequential(*layers)
