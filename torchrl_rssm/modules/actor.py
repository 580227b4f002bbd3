"""Dreamer's actor and value modules, and builders that wrap them as TorchRL modules.

- :class:`DreamerActor`: ``forward(state, belief) -> (loc, scale)``, the same constructor
  arguments and parameter names as TorchRL's :class:`~torchrl.modules.DreamerActor` (so
  its state dicts load), with the paper's mean scaling (see the class docstring).
- :func:`make_dreamer_actor`: a TorchRL ``ProbabilisticActor`` (``state``, ``belief`` ->
  ``action``) drawing from a ``TanhNormal`` on the action spec's bounds.
- :func:`make_value_model`: a ``TensorDictModule`` (``state``, ``belief`` -> ``state_value``)
  around :class:`~torchrl_rssm.modules.ValueModel`.
"""
from __future__ import annotations

import math

from collections.abc import Callable, Sequence

import torch
from tensordict.nn import InteractionType, TensorDictModule
from tensordict.utils import NestedKey
from torch import nn
from torch.nn import functional as F
from torchrl.data import Bounded, Composite, OneHot
from torchrl.modules import MLP, OneHotCategorical, ProbabilisticActor, TanhNormal
from torchrl.modules.distributions import ReparamGradientStrategy
from torchrl.modules.distributions.continuous import safetanh_noeps

from .heads import ValueModel


class DreamerActor(nn.Module):
    """Dreamer's action model: ``(state, belief) -> (loc, scale)`` of a tanh-transformed Gaussian.

    ``backbone`` is TorchRL's ``MLP`` on ``cat([state, belief])`` (``depth`` hidden layers of
    ``num_cells`` units) giving ``(mu, x)``; the scale is the paper's
    ``softplus(x + log(e^std_bias - 1)) + std_min_val`` and the location the paper's
    ``mean_scale * tanh(mu / mean_scale)`` (``mean_scale=5``).

    **Differences from TorchRL's** ``DreamerActor`` (0.14.1), which follow the paper: TorchRL
    returns the raw ``mu`` (no mean scaling; with ``TanhNormal(tanh_loc=False)``, its default,
    that is not the paper's actor), and its ``NormalParamExtractor`` shifts by
    ``log(e^(std_bias - std_min_val) - 1)`` (a std of exactly 5 at x = 0, against the paper's
    5 + 1e-4). Parameter names are TorchRL's, so its state dicts load. ``mean_scale=None``
    drops the mean scaling; with the default, do not also set ``tanh_loc=True`` on the
    distribution (it would scale twice).

    Args:
        out_features: action dimension.
        depth: hidden layers (TorchRL's default 4; the paper's 4).
        num_cells: units per hidden layer (TorchRL's default 200; the paper's 400).
        activation_class: activation (ELU).
        std_bias: the std at a zero pre-activation (5.0).
        std_min_val: lower bound added to the std (1e-4).
        device: where to create the parameters.
        in_features: ``state_dim + belief_dim``; ``None`` makes the first layer lazy, as
            TorchRL's (give it, so that optimisers see materialised parameters).
        mean_scale: the ``a`` of ``a * tanh(mu / a)``; ``None`` turns it off.

    Examples:
        >>> import torch
        >>> actor = DreamerActor(2, num_cells=32, in_features=30 + 200)
        >>> loc, scale = actor(torch.zeros(4, 30), torch.zeros(4, 200))
        >>> loc.shape, bool((loc.abs() < 5).all()), bool((scale > 0).all())
        (torch.Size([4, 2]), True, True)
    """

    def __init__(
        self,
        out_features: int,
        depth: int = 4,
        num_cells: int = 200,
        activation_class: type[nn.Module] = nn.ELU,
        std_bias: float = 5.0,
        std_min_val: float = 1e-4,
        device: torch.device | str | None = None,
        *,
        in_features: int | None = None,
        mean_scale: float | None = 5.0,
    ):
        super().__init__()
        if int(out_features) < 1:
            raise ValueError(f"DreamerActor: out_features must be >= 1, got {out_features}.")
        if mean_scale is not None and mean_scale <= 0:
            raise ValueError(f"DreamerActor: mean_scale must be > 0 or None, got {mean_scale}.")
        self.backbone = MLP(
            in_features=in_features,
            out_features=2 * int(out_features),
            depth=depth,
            num_cells=num_cells,
            activation_class=activation_class,
            device=device,
        )
        # the paper's std offset log(e^std_bias - 1) (TorchRL's NormalParamExtractor uses
        # that of std_bias - std_min_val); a parameter-free step, so state dicts still match
        self.std_shift = math.log(math.expm1(std_bias))
        self.std_min_val = std_min_val
        self.out_features = int(out_features)
        self.mean_scale = mean_scale

    def forward(self, state: torch.Tensor, belief: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw = self.backbone(state, belief).chunk(2, -1)
        scale = F.softplus(raw + self.std_shift) + self.std_min_val
        if self.mean_scale is not None:
            loc = self.mean_scale * torch.tanh(loc / self.mean_scale)
        return loc, scale


def _box_bounds(action_spec, action_key: NestedKey, who: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The (low, high) of a continuous bounded action spec; a clear error for anything else."""
    spec = action_spec
    if isinstance(spec, Composite):
        if action_key not in spec.keys(True, True):
            raise ValueError(f"{who}: action_spec is a Composite without the key {action_key!r}.")
        spec = spec[action_key]
    if spec is None or not hasattr(spec, "shape"):
        raise ValueError(f"{who}: action_spec must be a TorchRL Bounded (Box) spec, got {action_spec!r}.")
    if not isinstance(spec, Bounded) or spec.domain != "continuous":
        kind = type(spec).__name__
        hint = (" Discrete actions are served as one-hot vectors only (the world model consumes one-hot"
                " actions; index actions cannot carry a straight-through gradient)."
                if getattr(spec, "domain", None) == "discrete" else
                " A tanh-Gaussian actor needs finite bounds: use a Bounded spec (e.g. Bounded(-1, 1, (A,))).")
        raise ValueError(f"{who}: action_spec must be a continuous Bounded (Box) or a OneHot spec, got {kind}.{hint}")
    if len(spec.shape) < 1:
        raise ValueError(f"{who}: action_spec must have a trailing action dimension, got shape {tuple(spec.shape)}.")
    low, high = spec.space.low, spec.space.high
    if not (torch.isfinite(low).all() and torch.isfinite(high).all() and (high > low).all()):
        raise ValueError(f"{who}: action_spec bounds must be finite with high > low, got low={low}, high={high}.")
    # batched specs (e.g. from a ParallelEnv): one set of bounds per action dim
    return low.reshape(-1, spec.shape[-1])[0], high.reshape(-1, spec.shape[-1])[0]


class StraightThroughOneHotCategorical(OneHotCategorical):
    """TorchRL's ``OneHotCategorical`` that reports ``has_rsample``, so that TorchRL modules draw with
    ``rsample``: the one-hot sample (as floats) plus ``probs - probs.detach()`` (straight-through).

    Examples:
        >>> import torch
        >>> logits = torch.zeros(2, 3, requires_grad=True)
        >>> a = StraightThroughOneHotCategorical(logits=logits).rsample()
        >>> bool(a.sum(-1).eq(1).all()), a.requires_grad
        (True, True)
    """

    has_rsample = True

    def rsample(self, sample_shape=None) -> torch.Tensor:
        return super().rsample(sample_shape).to(self.logits.dtype)


def make_dreamer_actor(
    action_spec,
    state_dim: int = 30,
    belief_dim: int = 200,
    *,
    depth: int = 4,
    num_cells: int = 400,
    activation_class: type[nn.Module] = nn.ELU,
    std_bias: float = 5.0,
    std_min_val: float = 1e-4,
    mean_scale: float | None = 5.0,
    in_keys: Sequence[NestedKey] = ("state", "belief"),
    out_key: NestedKey = "action",
    device: torch.device | str | None = None,
) -> ProbabilisticActor:
    """Dreamer's actor as a TorchRL ``ProbabilisticActor``: ``(state, belief) -> action``.

    A :class:`DreamerActor` writes ``loc``/``scale``; a ``TanhNormal`` with the spec's bounds
    draws the action: a reparameterised sample under ``ExplorationType.RANDOM`` (training,
    imagination), ``tanh(loc)`` mapped to the bounds under ``DETERMINISTIC``/``MODE``
    (TorchRL's deterministic sample of a ``TanhNormal``, the paper's test-time action up to
    the tanh's skew). The actor's default interaction type is ``DETERMINISTIC``.

    Discrete actions: a ``OneHot`` spec gives an MLP writing ``logits`` and TorchRL's
    ``OneHotCategorical`` with a straight-through gradient (:class:`StraightThroughOneHotCategorical`:
    the one-hot sample plus ``probs - probs.detach()``), so Dreamer's actor loss backpropagates
    through the dynamics to the logits; the deterministic action is the argmax (the
    distribution's mode, integer one-hot); sampled actions are float one-hot vectors. Other specs
    (categorical indices, binary, unbounded) raise a ``ValueError`` naming ``action_spec``.

    Args:
        action_spec: the environment's action spec (``Bounded``, ``[..., A]``), or a
            ``Composite`` holding it at ``out_key``.
        state_dim, belief_dim: sizes of the latent parts.
        depth, num_cells, activation_class, std_bias, std_min_val, mean_scale: see
            :class:`DreamerActor` (defaults: the paper's 4 x 400 ELU).
        in_keys: the ``(state, belief)`` keys.
        out_key: where the action goes.
        device: where to create the parameters.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded
        >>> from torchrl.envs.utils import ExplorationType, set_exploration_type
        >>> actor = make_dreamer_actor(Bounded(-2, 2, (3,)), state_dim=8, belief_dim=16, num_cells=32)
        >>> td = TensorDict({"state": torch.randn(5, 8), "belief": torch.randn(5, 16)}, [5])
        >>> with set_exploration_type(ExplorationType.RANDOM):
        ...     a = actor(td)["action"]
        >>> a.shape, bool((a.abs() <= 2).all())
        (torch.Size([5, 3]), True)
    """
    in_keys = list(in_keys)
    if len(in_keys) != 2:
        raise ValueError(f"make_dreamer_actor: in_keys must be (state_key, belief_key), got {in_keys}.")
    spec = action_spec[out_key] if isinstance(action_spec, Composite) and out_key in action_spec.keys(True, True) \
        else action_spec
    if isinstance(spec, OneHot):
        net = MLP(in_features=state_dim + belief_dim, out_features=spec.shape[-1], depth=depth, num_cells=num_cells,
                  activation_class=activation_class, device=device)
        return ProbabilisticActor(
            TensorDictModule(net, in_keys=in_keys, out_keys=["logits"]),
            in_keys=["logits"], out_keys=[out_key], spec=spec, distribution_class=StraightThroughOneHotCategorical,
            distribution_kwargs={"grad_method": ReparamGradientStrategy.PassThrough},
            default_interaction_type=InteractionType.DETERMINISTIC,
        )
    low, high = _box_bounds(action_spec, out_key, "make_dreamer_actor")
    net = DreamerActor(low.shape[-1], depth=depth, num_cells=num_cells, activation_class=activation_class,
                       std_bias=std_bias, std_min_val=std_min_val, device=device,
                       in_features=state_dim + belief_dim, mean_scale=mean_scale)
    module = TensorDictModule(net, in_keys=in_keys, out_keys=["loc", "scale"])
    return ProbabilisticActor(
        module,
        in_keys=["loc", "scale"],
        out_keys=[out_key],
        spec=spec,
        distribution_class=TanhNormal,
        distribution_kwargs={"low": low.to(device) if device else low, "high": high.to(device) if device else high},
        default_interaction_type=InteractionType.DETERMINISTIC,
    )


def make_value_model(
    state_dim: int = 30,
    belief_dim: int = 200,
    hidden_dim: int = 400,
    depth: int = 3,
    *,
    activation: type[nn.Module] = nn.ELU,
    in_keys: Sequence[NestedKey] = ("state", "belief"),
    out_key: NestedKey = "state_value",
    device: torch.device | str | None = None,
) -> TensorDictModule:
    """Dreamer's value model as a ``TensorDictModule``: ``(state, belief) -> state_value`` ``[*B, 1]``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> value = make_value_model(8, 16, hidden_dim=32)
        >>> value(TensorDict({"state": torch.zeros(5, 8), "belief": torch.zeros(5, 16)}, [5]))["state_value"].shape
        torch.Size([5, 1])
    """
    in_keys = list(in_keys)
    if len(in_keys) != 2:
        raise ValueError(f"make_value_model: in_keys must be (state_key, belief_key), got {in_keys}.")
    return TensorDictModule(ValueModel(state_dim, belief_dim, hidden_dim, depth, activation, device),
                            in_keys=in_keys, out_keys=[out_key])


# ------------------------------------------------------------------ tensor-level sampling
_LOW_PRECISION = (torch.bfloat16, torch.float16)


def tanh_normal_sampler(actor: nn.Module, state_key: NestedKey = "state", belief_key: NestedKey = "belief"
                        ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor] | None:
    """A tensor function ``(state, belief, eps=None) -> action`` equal to ``actor``'s reparameterised sample.

    Recognises a ``ProbabilisticActor`` whose first module maps ``(state, belief)`` (either
    order) to ``(loc, scale)`` and whose distribution is TorchRL's ``TanhNormal``; returns
    ``None`` otherwise (callers then run the actor on tensordicts). ``eps`` is the standard
    normal noise (drawn with ``torch.randn`` when ``None``, the same stream as
    ``TanhNormal.rsample``; in float32 when the network's output is bfloat16/float16, under
    autocast, so that the action is float32).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded
        >>> from torchrl.envs.utils import ExplorationType, set_exploration_type
        >>> actor = make_dreamer_actor(Bounded(-1, 1, (2,)), 4, 8, num_cells=16)
        >>> sample = tanh_normal_sampler(actor)
        >>> state, belief = torch.randn(5, 4), torch.randn(5, 8)
        >>> _ = torch.manual_seed(0)
        >>> with set_exploration_type(ExplorationType.RANDOM):
        ...     reference = actor(TensorDict({"state": state, "belief": belief}, [5]))["action"]
        >>> _ = torch.manual_seed(0)
        >>> torch.allclose(sample(state, belief), reference)
        True
    """
    if not isinstance(actor, ProbabilisticActor) or len(actor.module) != 2:
        return None
    head, dist = actor.module[0], actor.module[1]
    if not isinstance(head, TensorDictModule) or set(head.in_keys) != {state_key, belief_key}:
        return None
    if dist.distribution_class is not TanhNormal:
        return None
    kw = dict(dist.distribution_kwargs)
    if set(kw) - {"low", "high", "tanh_loc", "upscale", "safe_tanh", "event_dims"}:
        return None
    if list(head.out_keys[:2]) != ["loc", "scale"] or list(dist.in_keys) != ["loc", "scale"]:
        return None
    swapped = list(head.in_keys) != [state_key, belief_key]
    net = head.module
    low = torch.as_tensor(kw.get("low", -1.0))
    high = torch.as_tensor(kw.get("high", 1.0))
    tanh_loc = bool(kw.get("tanh_loc", False))
    upscale = kw.get("upscale", 5.0)
    tanh = safetanh_noeps if kw.get("safe_tanh", True) else torch.tanh

    trivial = bool((low == -1).all() and (high == 1).all())
    affine: dict = {}  # (device, dtype) -> (half-width, centre), converted once

    def sample(state: torch.Tensor, belief: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
        loc, scale = net(belief, state) if swapped else net(state, belief)
        if tanh_loc:
            loc = upscale * torch.tanh(loc / upscale)
        if eps is None:  # float32 noise under autocast: the action (and its tanh) stays float32
            eps = torch.randn_like(loc, dtype=torch.float32 if loc.dtype in _LOW_PRECISION else None)
        a = tanh(torch.addcmul(loc, eps, scale))
        if trivial:
            return a
        key = (a.device, a.dtype)
        if key not in affine:
            lo, hi = low.to(a), high.to(a)
            affine[key] = ((hi - lo) / 2, (hi + lo) / 2)
        half, mid = affine[key]
        return torch.addcmul(mid, a, half)

    return sample
