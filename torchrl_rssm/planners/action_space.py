"""What a planner samples from a TorchRL action spec, and the plan helpers.

- :class:`ActionSpace`: bounded / unbounded boxes, one-hot, categorical; turns a plan
  into the environment's action and the model's action vector.
- :func:`shift_plan`: warm start, the previous plan moved one step earlier.
- :func:`top_k_elites`: the best candidates of a search.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.nn import functional as F
from torchrl.data import (
    Binary,
    Bounded,
    Categorical,
    MultiCategorical,
    MultiOneHot,
    OneHot,
    TensorSpec,
    Unbounded,
)

Returns = Callable[[torch.Tensor], torch.Tensor]
"""A planner's objective: ``actions [M, N, H, A] -> returns [M, N]``."""


class ActionSpace:
    """The sampling space of a TorchRL action spec.

    ``kind`` is ``"continuous"`` (``Bounded`` / ``Unbounded``, shape ``[A]``),
    ``"one_hot"`` (``OneHot``, shape ``[A]``) or ``"categorical"`` (``Categorical``
    with ``n`` values, shape ``[]`` or ``[1]``; the model sees one-hot vectors).
    Continuous plans are Gaussians (mean, std ``[M, H, A]``); discrete plans are
    per-step categorical probabilities (``[M, H, A]``, the std is unused).

    Examples:
        >>> from torchrl.data import Bounded, Categorical
        >>> ActionSpace(Bounded(-1, 1, (2,))).kind, ActionSpace(Categorical(4)).kind
        ('continuous', 'categorical')
    """

    def __init__(self, spec: TensorSpec, argname: str = "action_spec"):
        if spec is None:
            raise ValueError(f"`{argname}` is required: the planner needs the action spec to sample candidates.")
        shape = tuple(spec.shape)
        self.spec = spec
        self.low = self.high = None
        self._bounds: dict = {}
        if isinstance(spec, (Binary, MultiOneHot, MultiCategorical)):
            raise TypeError(
                f"`{argname}`: {type(spec).__name__} actions are not supported; the planner handles "
                "Bounded/Unbounded float boxes [A], OneHot [n] and Categorical specs."
            )
        if isinstance(spec, OneHot):
            if len(shape) != 1:
                raise ValueError(f"`{argname}`: one-hot actions must have shape [n], got {shape} "
                                 "(for a batched env pass env.action_spec_unbatched).")
            self.kind, self.dim = "one_hot", shape[-1]
        elif isinstance(spec, Categorical):
            if shape not in ((), (1,)):
                raise ValueError(f"`{argname}`: categorical actions must have shape [] or [1], got {shape}.")
            self.kind, self.dim = "categorical", int(spec.space.n)
        elif isinstance(spec, (Bounded, Unbounded)) and spec.dtype.is_floating_point:
            if len(shape) != 1:
                raise ValueError(f"`{argname}`: continuous actions must have shape [A], got {shape} "
                                 "(for a batched env pass env.action_spec_unbatched).")
            self.kind, self.dim = "continuous", shape[-1]
            if isinstance(spec, Bounded):
                self.low = spec.space.low.detach().clone().float()
                self.high = spec.space.high.detach().clone().float()
        else:
            raise TypeError(
                f"`{argname}`: the planner handles Bounded/Unbounded float boxes [A], OneHot [n] and "
                f"Categorical specs; got {type(spec).__name__} (shape {shape}, dtype {spec.dtype})."
            )

    @property
    def discrete(self) -> bool:
        return self.kind != "continuous"

    def initial(self, batch: int, horizon: int, init_std: float, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The cold-start plan: mean/std ``[M, H, A]`` (uniform probabilities when discrete).

        A bounded box starts centred with ``init_std`` times its half-width, which is
        PlaNet's N(0, 1) for [-1, 1] actions.
        """
        shape = (batch, horizon, self.dim)
        if self.discrete:
            probs = torch.full(shape, 1.0 / self.dim, device=device, dtype=dtype)
            return probs, torch.zeros_like(probs)
        if self.low is None:
            mean = torch.zeros(shape, device=device, dtype=dtype)
            return mean, torch.full_like(mean, init_std)
        low, high = self.bounds(device if device is not None else self.low.device, dtype)
        finite = torch.isfinite(low) & torch.isfinite(high)
        centre = torch.where(finite, (low + high) / 2, torch.zeros_like(low))
        half = torch.where(finite, (high - low) / 2, torch.ones_like(low))
        return centre.expand(shape).clone(), (init_std * half).expand(shape).clone()

    def sample(self, mean: torch.Tensor, std: torch.Tensor, n: int) -> torch.Tensor:
        """``n`` candidate sequences per plan: ``[M, H, A] -> [M, n, H, A]`` (model actions)."""
        M, H, A = mean.shape
        if self.discrete:  # Gumbel-max: one sample per (candidate, step), no host sync, graph-safe
            u = torch.rand(M, n, H, A, device=mean.device, dtype=mean.dtype).clamp_(min=1e-20)
            idx = (mean.log().unsqueeze(1) - torch.log(-torch.log(u))).argmax(-1)
            return F.one_hot(idx, A).to(mean.dtype)
        actions = torch.addcmul(mean.unsqueeze(1), std.unsqueeze(1),
                                torch.randn(M, n, H, A, device=mean.device, dtype=mean.dtype))
        return self.clip(actions)

    def bounds(self, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``(low, high)`` on ``device`` (cached: no host-to-device copy per call, e.g. in a CUDA graph)."""
        key = (torch.device(device), dtype)
        if key not in self._bounds:
            self._bounds[key] = (self.low.to(device, dtype), self.high.to(device, dtype))
        return self._bounds[key]

    def clip(self, action: torch.Tensor) -> torch.Tensor:
        """Clips continuous actions to the spec's bounds (PlaNet's official code clips candidates)."""
        if self.low is None:
            return action
        return torch.clamp(action, *self.bounds(action.device, action.dtype))

    def first_action(self, mean: torch.Tensor) -> torch.Tensor:
        """The action to execute from a plan: the mean's first step (most likely value when discrete).

        Returns the model's action vector ``[M, A]`` (one-hot when discrete).
        """
        first = mean[:, 0]
        if self.discrete:
            return F.one_hot(first.argmax(-1), self.dim).to(first.dtype)
        return first

    def to_env(self, action: torch.Tensor, batch: Sequence[int]) -> torch.Tensor:
        """Model action vector ``[M, A]`` -> the spec's layout and dtype, ``[*B, *spec.shape]``."""
        if self.kind == "categorical":
            action = action.argmax(-1)
        return action.reshape(tuple(batch) + tuple(self.spec.shape)).to(self.spec.dtype)

    def to_model(self, action: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The spec's layout ``[*B, *spec.shape]`` -> the model's action vector ``[*B, A]``."""
        if self.kind == "categorical":
            index = action.long().reshape(action.shape[: action.ndim - len(self.spec.shape)])
            return F.one_hot(index, self.dim).to(dtype)
        return action.to(dtype)


def shift_plan(prev: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
    """Warm start: the previous plan moved one step earlier, its last step from ``fresh``.

    Examples:
        >>> import torch
        >>> shift_plan(torch.tensor([[[1.0], [2.0], [3.0]]]), torch.zeros(1, 3, 1)).flatten().tolist()
        [2.0, 3.0, 0.0]
    """
    return torch.cat([prev[:, 1:], fresh[:, -1:]], dim=1)


def top_k_elites(actions: torch.Tensor, returns: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best candidates: ``[M, N, H, A], [M, N] -> [M, k, H, A], [M, k]``.

    Examples:
        >>> import torch
        >>> actions = torch.arange(4.0).reshape(1, 4, 1, 1)  # candidate i plays action i
        >>> elites, best = top_k_elites(actions, torch.tensor([[1.0, 4.0, 3.0, 2.0]]), k=2)
        >>> elites.flatten().tolist(), best.tolist()
        ([1.0, 2.0], [[4.0, 3.0]])
    """
    best, idx = returns.topk(k, dim=1)
    M, _, H, A = actions.shape
    return actions.gather(1, idx[:, :, None, None].expand(M, k, H, A)), best

