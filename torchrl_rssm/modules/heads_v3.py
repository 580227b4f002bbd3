"""DreamerV3's heads on the latent (h_t, z_t): two-hot reward and value heads, a continuation
head, and the two actors (a bounded normal for continuous actions, a one-hot categorical with
unimix for discrete ones).

Heads take their inputs as separate tensors (``head(state, belief)``) and concatenate them,
as :class:`~torchrl_rssm.modules.DreamerV3MLP` does, so they wrap into
``TensorDictModule(head, in_keys=["state", "belief"], out_keys=[...])`` with TorchRL's
DreamerV3 keys (``reward_logits``/``reward``, ``state_value_logits``/``state_value``,
``continue_pred``/``continuation``). All take any number of batch dims.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict.nn import (
    InteractionType,
    ProbabilisticTensorDictModule,
    ProbabilisticTensorDictSequential,
    TensorDictModule,
)
from tensordict.utils import NestedKey
from torch import nn
from torchrl.modules.distributions import OneHotCategorical, TruncatedNormal

from .layers_v3 import DreamerV3MLP, dreamer_v3_init
from .rssm_v3 import unimix_probs
from .two_hot import DEFAULT_NUM_BINS, SymExpTwoHot

__all__ = ["DreamerV3BoundedNormalActor", "DreamerV3ContinuationHead", "DreamerV3DiscreteActor",
           "DreamerV3RewardHead", "DreamerV3TwoHotHead", "DreamerV3ValueHead"]


class DreamerV3TwoHotHead(nn.Module):
    """A scalar predicted as a categorical over symexp-spaced bins: ``(logits [*B, bins], value [*B, 1])``.

    The output layer starts at zero (``outscale=0``): all logits equal, so the head predicts
    exactly 0 until it learns (a large random initial prediction would be a large error).
    ``value`` is the decoded expectation (:class:`~torchrl_rssm.modules.SymExpTwoHot`); the
    loss is the two-hot cross entropy of ``logits`` (``head.two_hot.loss(logits, target)``).

    Args:
        in_features: input size (state + belief).
        num_bins: number of bins, at least 2 (DreamerV3: 255).
        depth: hidden layers.
        num_cells: width of the hidden layers.
        outscale: scale of the output layer's initial weights.
        norm_eps: RMSNorm epsilon.
        device: where to create the parameters.

    Examples:
        >>> import torch
        >>> head = DreamerV3TwoHotHead(12, depth=1, num_cells=16)
        >>> logits, value = head(torch.randn(4, 7, 8), torch.randn(4, 7, 4))
        >>> logits.shape, value.shape, bool((value == 0).all())
        (torch.Size([4, 7, 255]), torch.Size([4, 7, 1]), True)
    """

    def __init__(self, in_features: int, num_bins: int = DEFAULT_NUM_BINS, depth: int = 1, num_cells: int = 1024,
                 outscale: float = 0.0, norm_eps: float = 1e-4, device: torch.device | str | None = None):
        super().__init__()
        self.two_hot = SymExpTwoHot(num_bins)  # validates num_bins
        self.mlp = DreamerV3MLP(in_features, num_bins, depth, num_cells, outscale, norm_eps, device)
        if device is not None:
            self.two_hot.to(device)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.mlp(*inputs)
        return logits, self.two_hot(logits)


class DreamerV3RewardHead(DreamerV3TwoHotHead):
    """DreamerV3's reward head: a :class:`DreamerV3TwoHotHead` of 1 hidden layer (the reference's).

    Wrap with ``out_keys=[("next", "reward_logits"), ("next", "reward")]`` for TorchRL's
    ``DreamerV3ModelLoss``.

    Examples:
        >>> import torch
        >>> logits, reward = DreamerV3RewardHead(12, num_cells=16)(torch.randn(5, 12))
        >>> reward.squeeze(-1)
        tensor([0., 0., 0., 0., 0.], grad_fn=<SqueezeBackward1>)
    """


class DreamerV3ValueHead(DreamerV3TwoHotHead):
    """DreamerV3's critic: a :class:`DreamerV3TwoHotHead` of 3 hidden layers (the reference's).

    Wrap with ``out_keys=["state_value_logits", "state_value"]`` for TorchRL's
    ``DreamerV3ValueLoss``.

    Examples:
        >>> import torch
        >>> logits, value = DreamerV3ValueHead(12, num_cells=16)(torch.randn(3, 15, 12))
        >>> value.shape
        torch.Size([3, 15, 1])
    """

    def __init__(self, in_features: int, num_bins: int = DEFAULT_NUM_BINS, depth: int = 3, num_cells: int = 1024,
                 outscale: float = 0.0, norm_eps: float = 1e-4, device: torch.device | str | None = None):
        super().__init__(in_features, num_bins, depth, num_cells, outscale, norm_eps, device)


class DreamerV3ContinuationHead(nn.Module):
    """DreamerV3's continuation head: ``(logits [*B, 1], probability [*B, 1])`` that the episode goes on.

    Trained with binary cross entropy on ``1 - terminated`` (a time limit is not an end).
    Wrap with ``out_keys=[("next", "continue_pred"), ("next", "continuation")]`` (TorchRL's
    keys: the model loss reads the logits, the actor loss the probability).

    Args:
        in_features: input size (state + belief).
        depth: hidden layers (reference: 1).
        num_cells: width of the hidden layers.
        outscale: scale of the output layer's initial weights (reference: 1).
        norm_eps: RMSNorm epsilon.
        device: where to create the parameters.

    Examples:
        >>> import torch
        >>> logits, cont = DreamerV3ContinuationHead(12, num_cells=16)(torch.randn(4, 8), torch.randn(4, 4))
        >>> logits.shape, bool(((cont > 0) & (cont < 1)).all())
        (torch.Size([4, 1]), True)
    """

    def __init__(self, in_features: int, depth: int = 1, num_cells: int = 1024, outscale: float = 1.0,
                 norm_eps: float = 1e-4, device: torch.device | str | None = None):
        super().__init__()
        self.mlp = DreamerV3MLP(in_features, 1, depth, num_cells, outscale, norm_eps, device)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.mlp(*inputs)
        return logits, torch.sigmoid(logits)


# ------------------------------------------------------------------------------------ actors
def _check_actor_args(who: str, in_keys, depth: int, unimix: float | None = None) -> list:
    in_keys = list(in_keys) if in_keys is not None else ["state", "belief"]
    if len(in_keys) != 2:
        raise ValueError(f"{who}: in_keys must be the state and belief keys, in that order; got {in_keys}.")
    if depth < 1:
        raise ValueError(f"{who}: depth must be at least 1, got {depth}.")
    if unimix is not None and not 0 <= unimix < 1:
        raise ValueError(f"{who}: unimix must be in [0, 1), got {unimix!r}.")
    return in_keys


class _DiscreteActorNet(nn.Module):
    """``(state, belief) -> log of unimix probabilities`` (float32); parameter names are TorchRL's."""

    def __init__(self, in_features, out_features, depth, num_cells, norm_eps, unimix, device):
        super().__init__()
        self.backbone = DreamerV3MLP(in_features, None, depth, num_cells, norm_eps=norm_eps, device=device)
        self.logits_head = nn.Linear(num_cells, out_features, device=device)
        dreamer_v3_init(self.logits_head)
        with torch.no_grad():
            self.logits_head.weight.mul_(0.01)  # near-uniform initial policy
        self.unimix = unimix

    def forward(self, state: torch.Tensor, belief: torch.Tensor) -> torch.Tensor:
        logits = self.logits_head(self.backbone(belief, state)).float()
        return unimix_probs(logits, self.unimix).log()


class DreamerV3DiscreteActor(ProbabilisticTensorDictSequential):
    """DreamerV3's discrete policy: a one-hot categorical with ``unimix`` (drop-in for TorchRL's).

    An RMSNorm/SiLU MLP on ``[belief, state]`` (belief first, as TorchRL's) with an output
    layer scaled by 0.01; the probabilities are mixed with ``unimix`` uniform and written as
    log-probabilities (``logits_key``, float32). Calling it writes the logits, a one-hot
    ``action`` and its log-probability; ``get_dist(td).rsample()`` samples straight-through.

    Args:
        in_features: state + belief size.
        out_features: number of actions.
        depth, num_cells, norm_eps: the MLP.
        unimix: uniform fraction in ``[0, 1)`` (DreamerV3: 0.01).
        in_keys: the state and belief keys, in that order.
        action_key, logits_key, log_prob_key: output keys.
        device: where to create the parameters.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> actor = DreamerV3DiscreteActor(12, 3, depth=2, num_cells=16)
        >>> td = actor(TensorDict({"state": torch.randn(4, 5, 8), "belief": torch.randn(4, 5, 4)}, [4, 5]))
        >>> td["action"].shape, bool((td["action"].sum(-1) == 1).all())
        (torch.Size([4, 5, 3]), True)
        >>> bool((td["logits"].exp() >= 0.01 / 3).all())  # unimix floor
        True
    """

    def __init__(self, in_features: int, out_features: int, *, depth: int = 3, num_cells: int = 1024,
                 norm_eps: float = 1e-4, unimix: float = 0.01, in_keys: Sequence[NestedKey] | None = None,
                 action_key: NestedKey = "action", logits_key: NestedKey = "logits",
                 log_prob_key: NestedKey = "action_log_prob", device: torch.device | str | None = None):
        in_keys = _check_actor_args("DreamerV3DiscreteActor", in_keys, depth, unimix)
        super().__init__(
            TensorDictModule(_DiscreteActorNet(in_features, out_features, depth, num_cells, norm_eps, unimix, device),
                             in_keys=in_keys, out_keys=[logits_key]),
            ProbabilisticTensorDictModule(in_keys={"logits": logits_key}, out_keys=[action_key],
                                          distribution_class=OneHotCategorical,
                                          default_interaction_type=InteractionType.RANDOM, return_log_prob=True,
                                          log_prob_key=log_prob_key),
        )


def _bounds(action_spec) -> tuple[torch.Tensor, torch.Tensor]:
    """Finite ``(low, high)`` of a bounded action spec, or a ValueError naming the spec."""
    space = getattr(action_spec, "space", None)
    low, high = getattr(space, "low", None), getattr(space, "high", None)
    if low is None or high is None:
        raise ValueError(
            f"DreamerV3BoundedNormalActor: action_spec must be a bounded continuous spec (torchrl.data.Bounded), "
            f"got {type(action_spec).__name__}."
        )
    low, high = torch.as_tensor(low, dtype=torch.float32), torch.as_tensor(high, dtype=torch.float32)
    width = high - low
    # an Unbounded spec reports +-float32 max: its width overflows to inf
    if not (torch.isfinite(width).all() and (width > 0).all()):
        raise ValueError(
            "DreamerV3BoundedNormalActor: action_spec must have finite bounds with low < high "
            f"(a torchrl.data.Bounded spec), got low={low.tolist()}, high={high.tolist()}."
        )
    return low, high


def _scalar_if_uniform(bound: torch.Tensor, device) -> float | torch.Tensor:
    # a float follows the module to any device; a per-dimension tensor stays where it was created
    return float(bound[0]) if bool((bound == bound[0]).all()) else bound.to(device)


class _BoundedNormalNet(nn.Module):
    """``(state, belief) -> (loc, scale)`` in the spec's units: ``loc = center + radius * tanh(mean)``,
    ``scale = radius * ((maxstd - minstd) * sigmoid(std + 2) + minstd)`` (the reference's bounded normal)."""

    def __init__(self, in_features, low, high, depth, num_cells, minstd, maxstd, outscale, norm_eps, device):
        super().__init__()
        self.action_dim = low.numel()
        self.backbone = DreamerV3MLP(in_features, None, depth, num_cells, norm_eps=norm_eps, device=device)
        self.head = nn.Linear(num_cells, 2 * self.action_dim, device=device)
        dreamer_v3_init(self.head)
        with torch.no_grad():
            self.head.weight.mul_(outscale)
        self.register_buffer("center", ((high + low) / 2).reshape(-1).to(device))
        self.register_buffer("radius", ((high - low) / 2).reshape(-1).to(device))
        self.minstd, self.maxstd = minstd, maxstd

    def forward(self, state: torch.Tensor, belief: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = self.head(self.backbone(belief, state)).float().chunk(2, -1)
        std = (self.maxstd - self.minstd) * torch.sigmoid(std + 2.0) + self.minstd
        return self.center + self.radius * torch.tanh(mean), self.radius * std


class DreamerV3BoundedNormalActor(ProbabilisticTensorDictSequential):
    """DreamerV3's continuous policy: a normal with a ``tanh`` mean and a bounded std, within the spec's bounds.

    In units where the action range is ``[-1, 1]``: mean ``tanh(.)``, std
    ``(maxstd - minstd) * sigmoid(. + 2) + minstd`` (reference: 0.1 .. 1), output layer
    scaled by 0.01; both are then mapped to ``[low, high]`` of ``action_spec``. Samples
    come from a normal truncated to the bounds (TorchRL's ``TruncatedNormal``: in-range
    actions with exact log-probabilities and entropy, and ``rsample``). Writes ``loc``,
    ``scale``, the action and its log-probability.

    Args:
        in_features: state + belief size.
        action_spec: a bounded continuous spec (``torchrl.data.Bounded``); its last dim sizes the output.
        depth, num_cells, norm_eps: the MLP.
        minstd, maxstd: std range in ``[-1, 1]`` units.
        outscale: scale of the output layer's initial weights.
        in_keys: the state and belief keys, in that order.
        action_key, log_prob_key: output keys.
        device: where to create the parameters.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded
        >>> actor = DreamerV3BoundedNormalActor(12, Bounded(-2.0, 2.0, shape=(3,)), depth=2, num_cells=16)
        >>> td = actor(TensorDict({"state": torch.randn(4, 5, 8), "belief": torch.randn(4, 5, 4)}, [4, 5]))
        >>> td["action"].shape, bool((td["action"].abs() <= 2).all())
        (torch.Size([4, 5, 3]), True)
    """

    def __init__(self, in_features: int, action_spec, *, depth: int = 3, num_cells: int = 1024,
                 minstd: float = 0.1, maxstd: float = 1.0, outscale: float = 0.01, norm_eps: float = 1e-4,
                 in_keys: Sequence[NestedKey] | None = None, action_key: NestedKey = "action",
                 log_prob_key: NestedKey = "action_log_prob", device: torch.device | str | None = None):
        in_keys = _check_actor_args("DreamerV3BoundedNormalActor", in_keys, depth)
        if not 0 < minstd <= maxstd:
            raise ValueError(f"DreamerV3BoundedNormalActor: need 0 < minstd <= maxstd, got {minstd}, {maxstd}.")
        low, high = _bounds(action_spec)
        low, high = low.expand(action_spec.shape).reshape(-1), high.expand(action_spec.shape).reshape(-1)
        net = _BoundedNormalNet(in_features, low, high, depth, num_cells, minstd, maxstd, outscale, norm_eps, device)
        super().__init__(
            TensorDictModule(net, in_keys=in_keys, out_keys=["loc", "scale"]),
            ProbabilisticTensorDictModule(in_keys=["loc", "scale"], out_keys=[action_key],
                                          distribution_class=TruncatedNormal,
                                          distribution_kwargs={"low": _scalar_if_uniform(low, device),
                                                               "high": _scalar_if_uniform(high, device),
                                                               "tanh_loc": False},
                                          default_interaction_type=InteractionType.RANDOM, return_log_prob=True,
                                          log_prob_key=log_prob_key),
        )
