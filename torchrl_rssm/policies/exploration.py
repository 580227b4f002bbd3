"""Exploration noise on top of a chosen action, under ``ExplorationType.RANDOM``.

Continuous actions: Gaussian noise ``N(0, scale^2)`` added to the action, then clipped to
the spec's bounds (PlaNet and Dreamer: 0.3). Discrete actions: epsilon-greedy, the action
replaced by a uniformly random one with probability ``scale``.

The noise is added under ``ExplorationType.RANDOM`` (TorchRL collectors' default) and
outside any exploration context (``exploration_type()`` is ``None`` there, as for TorchRL's
own exploration modules, e.g. ``AdditiveGaussianModule``); never under DETERMINISTIC /
MODE / MEAN / MEDIAN (use ``set_exploration_type(ExplorationType.DETERMINISTIC)`` for
test episodes).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torchrl.envs.utils import ExplorationType, exploration_type

from ..planners.action_space import ActionSpace

# Exploration types under which the noise is added; None: outside any context (plain calls).
NOISY = (ExplorationType.RANDOM, None)


class ExplorationNoise(nn.Module):
    """``action -> action + noise`` in the env's action layout ``[*B, *spec.shape]``.

    Args:
        space: the :class:`~torchrl_rssm.planners.ActionSpace` of the env's action spec
            (or the spec itself).
        scale: continuous: std of the Gaussian noise; discrete: epsilon. ``0`` disables it.

    Examples:
        >>> import torch
        >>> from torchrl.data import Bounded
        >>> from torchrl.envs.utils import ExplorationType, set_exploration_type
        >>> noise = ExplorationNoise(Bounded(-1, 1, (2,)), scale=0.3)
        >>> with set_exploration_type(ExplorationType.DETERMINISTIC):
        ...     bool((noise(torch.zeros(5, 2)) == 0).all())
        True
        >>> with set_exploration_type(ExplorationType.RANDOM):
        ...     bool((noise(torch.ones(5, 2)) <= 1).all())
        True
    """

    def __init__(self, space, scale: float = 0.3):
        super().__init__()
        if scale < 0:
            raise ValueError(f"`exploration_noise` must be >= 0, got {scale}.")
        self.space = space if isinstance(space, ActionSpace) else ActionSpace(space)
        self.scale = float(scale)

    def active(self) -> bool:
        return self.scale > 0 and exploration_type() in NOISY

    def forward(self, action: torch.Tensor) -> torch.Tensor:
        if not self.active():
            return action
        space = self.space
        if not space.discrete:
            return space.clip(action + self.scale * torch.randn_like(action))
        batch = action.shape[: action.ndim - len(space.spec.shape)]
        swap = torch.rand(batch, device=action.device) < self.scale  # epsilon-greedy
        random = torch.randint(space.dim, batch, device=action.device)
        if space.kind == "one_hot":
            random = F.one_hot(random, space.dim).to(action.dtype)
            return torch.where(swap.unsqueeze(-1), random, action)
        return torch.where(swap.reshape(*batch, *([1] * len(space.spec.shape))),
                           random.reshape(action.shape).to(action.dtype), action)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, actions={self.space.kind}"
