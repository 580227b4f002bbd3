"""Prediction heads on the latent state (h_t, s_t)."""
from __future__ import annotations

import torch
from torch import nn

from ._mlp import mlp


class RewardModel(nn.Module):
    """Reward head p(r_t | h_t, s_t): the mean of a unit-variance Gaussian, ``[*B, 1]``.

    Args:
        state_dim: size of the stochastic state s_t.
        belief_dim: size of the deterministic belief h_t.
        hidden_dim: width of the hidden layers.
        depth: number of hidden layers.
        activation: activation class.
        device: where to create the parameters.

    Examples:
        >>> import torch
        >>> RewardModel(30, 200)(torch.zeros(8, 12, 30), torch.zeros(8, 12, 200)).shape
        torch.Size([8, 12, 1])
    """

    def __init__(
        self,
        state_dim: int = 30,
        belief_dim: int = 200,
        hidden_dim: int = 200,
        depth: int = 2,
        activation: type[nn.Module] = nn.ELU,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        self.net = mlp(state_dim + belief_dim, 1, hidden_dim, depth, activation, device)

    def forward(self, state: torch.Tensor, belief: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([state, belief], dim=-1))


class ValueModel(RewardModel):
    """Dreamer's value head v(h_t, s_t): ``depth`` ELU layers of ``hidden_dim`` units, ``[*B, 1]``.

    The paper's value model is 3 x 400 ELU (the defaults); its output is the mean of a
    unit-variance Gaussian, used as is (no sampling) by the Dreamer losses.

    Args:
        state_dim: size of the stochastic state s_t.
        belief_dim: size of the deterministic belief h_t.
        hidden_dim: width of the hidden layers (paper: 400).
        depth: number of hidden layers (paper: 3).
        activation: activation class.
        device: where to create the parameters.

    Examples:
        >>> import torch
        >>> ValueModel(30, 200)(torch.zeros(8, 15, 30), torch.zeros(8, 15, 200)).shape
        torch.Size([8, 15, 1])
    """

    def __init__(
        self,
        state_dim: int = 30,
        belief_dim: int = 200,
        hidden_dim: int = 400,
        depth: int = 3,
        activation: type[nn.Module] = nn.ELU,
        device: torch.device | str | None = None,
    ):
        super().__init__(state_dim, belief_dim, hidden_dim, depth, activation, device)
