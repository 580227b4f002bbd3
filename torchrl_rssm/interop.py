"""TorchRL interop: finding networks inside TorchRL's world models, and ``to_dreamer_env``.

TorchRL's Dreamer example keeps its networks inside tensordict modules: a ``DreamerEnv``
steps ``world_model = WorldModelWrapper(transition, reward)`` where ``transition`` wraps an
``RSSMPrior`` (``(state, belief, action) -> (_, _, state, belief)``) and ``reward`` a head on
``(state, belief)``, possibly followed by a probabilistic module that samples the reward
from its ``loc``. This package's losses and planners run those networks as plain tensor
functions; the functions here find them, in one place:

- :func:`find_dreamer_env_prior`, :func:`find_dreamer_env_reward`: the prior and the reward
  head of a ``DreamerEnv`` (or of its ``world_model``);
- :func:`find_mean_head`: the network giving the mean of a ``(state, belief)`` head (reward
  or value), as ``head(state, belief)``;
- :func:`find_rollout_prior`: the prior of the ``RSSMRollout`` (this package's or TorchRL's)
  inside a world model;
- :func:`to_dreamer_env`: the other way round, this package's world model as TorchRL's
  ``DreamerEnv``, so that TorchRL's own Dreamer losses and planners run on it.

Every finder returns ``None`` when the layout is not the expected one; the callers say
what they expected.
"""
from __future__ import annotations

import torch
from tensordict.nn import ProbabilisticTensorDictModule, TensorDictModule, TensorDictSequential
from tensordict.utils import NestedKey, unravel_key
from torch import nn

from .modules.rssm import RSSMRollout

__all__ = [
    "find_dreamer_env_prior", "find_dreamer_env_reward", "find_mean_head", "find_rollout_prior", "strip_next",
    "to_dreamer_env",
]


def _leaves(module: nn.Module) -> list[nn.Module]:
    """The modules of a (nested) ``TensorDictSequential`` in order; any other module alone."""
    if isinstance(module, TensorDictSequential):
        return [leaf for m in module.module for leaf in _leaves(m)]
    return [module]


def strip_next(key: NestedKey) -> NestedKey:
    """``("next", "x") -> "x"``: a key relative to ``"next"`` (any other key unchanged).

    Examples:
        >>> strip_next(("next", "reward")), strip_next(("next", "a", "b")), strip_next("reward")
        ('reward', ('a', 'b'), 'reward')
    """
    key = unravel_key(key)
    if isinstance(key, tuple) and len(key) > 1 and key[0] == "next":
        return key[1:] if len(key) > 2 else key[1]
    return key


def _world_model_of(model) -> nn.Module | None:
    """``model.world_model`` for a model-based env, else ``model`` itself."""
    from torchrl.envs import EnvBase

    return getattr(model, "world_model", None) if isinstance(model, EnvBase) else model


def _part(world_model, index: int) -> nn.Module | None:
    try:
        return world_model[index]
    except (TypeError, IndexError, KeyError):
        return None


class _SwapArgs(nn.Module):
    """A head whose module reads ``(belief, state)``, called as ``head(state, belief)``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, state: torch.Tensor, belief: torch.Tensor) -> torch.Tensor:
        return self.net(belief, state)


def find_mean_head(module: nn.Module, state_key: NestedKey = "state", belief_key: NestedKey = "belief",
                   out_key: NestedKey | None = None) -> nn.Module | None:
    """The network giving the mean of a ``(state, belief)`` head, called as ``head(state, belief)``.

    Accepts a ``TensorDictModule`` on ``(state, belief)`` (either order) with one output, or
    TorchRL's Dreamer layout: that module writing ``loc``, followed by a probabilistic module
    that draws the output from it (the head's mean is ``loc``, for TorchRL's Normal heads).
    With ``out_key``, the head's final output must be that key (``"next"`` ignored). Returns
    ``None`` for any other layout.

    Examples:
        >>> import torch
        >>> from tensordict.nn import TensorDictModule
        >>> class Head(torch.nn.Module):
        ...     def forward(self, belief, state):
        ...         return belief.sum(-1, keepdim=True) - state.sum(-1, keepdim=True)
        >>> head = find_mean_head(TensorDictModule(Head(), ["belief", "state"], ["reward"]), out_key="reward")
        >>> head(torch.ones(2, 3), torch.zeros(2, 4))  # called as (state, belief)
        tensor([[-3.],
                [-3.]])
    """
    leaves = _leaves(module)
    head = leaves[0]
    if not isinstance(head, TensorDictModule) or set(head.in_keys) != {state_key, belief_key}:
        return None
    if len(leaves) == 1:
        last = head
    elif len(leaves) == 2:
        last = leaves[1]
        if not (isinstance(last, ProbabilisticTensorDictModule) and list(last.in_keys) == list(head.out_keys[:1])):
            return None
    else:
        return None
    if out_key is not None and strip_next(last.out_keys[0]) != strip_next(out_key):
        return None
    net = head.module
    return _SwapArgs(net) if list(head.in_keys) != [state_key, belief_key] else net


def find_dreamer_env_prior(model, state_key: NestedKey = "state", belief_key: NestedKey = "belief",
                           action_key: NestedKey = "action") -> nn.Module | None:
    """The prior network of TorchRL's ``DreamerEnv`` layout, or ``None``.

    ``model`` is a ``DreamerEnv``, its ``world_model`` (``WorldModelWrapper(transition,
    reward)``) or the transition itself. The transition must hold exactly one module: a
    ``TensorDictModule`` reading ``(state, belief, action)`` and writing ``(_, _, state,
    belief)`` (the last two possibly under ``"next"``), as TorchRL's Dreamer example builds
    it. The network found is called ``prior(state, belief, action) -> (mean, std, state,
    belief)``.

    Examples:
        >>> from torchrl.data import Bounded, Composite, Unbounded
        >>> from torchrl_rssm.modules import make_world_model
        >>> wm = make_world_model(Composite(observation=Unbounded((5,))), Bounded(-1, 1, (2,)), state_dim=8,
        ...                       belief_dim=16, hidden_dim=32)
        >>> find_dreamer_env_prior(to_dreamer_env(wm)) is wm.rollout.prior
        True
    """
    world_model = _world_model_of(model)
    if world_model is None:
        return None
    transition = _part(world_model, 0)
    if transition is None:  # not indexable: a bare transition module
        transition = world_model
    leaves = _leaves(transition)
    if len(leaves) != 1:
        return None
    prior = leaves[0]
    if (isinstance(prior, TensorDictModule) and list(prior.in_keys) == [state_key, belief_key, action_key]
            and len(prior.out_keys) == 4 and [strip_next(k) for k in prior.out_keys[2:]] == [state_key, belief_key]):
        return prior.module
    return None


def find_dreamer_env_reward(model, state_key: NestedKey = "state", belief_key: NestedKey = "belief",
                            reward_key: NestedKey | None = None) -> nn.Module | None:
    """The reward head's mean, ``reward(state, belief)``, of TorchRL's ``DreamerEnv`` layout, or ``None``.

    ``model`` is a ``DreamerEnv`` or its ``world_model``; the head is ``world_model[1]`` as
    :func:`find_mean_head` accepts it (with ``reward_key``, it must write that key).

    Examples:
        >>> from torchrl.data import Bounded, Composite, Unbounded
        >>> from torchrl_rssm.modules import make_world_model
        >>> wm = make_world_model(Composite(observation=Unbounded((5,))), Bounded(-1, 1, (2,)), state_dim=8,
        ...                       belief_dim=16, hidden_dim=32)
        >>> find_dreamer_env_reward(to_dreamer_env(wm), reward_key=("next", "reward")) is wm.reward_model
        True
    """
    world_model = _world_model_of(model)
    reward = None if world_model is None else _part(world_model, 1)
    if reward is None:
        return None
    return find_mean_head(reward, state_key, belief_key, reward_key)


def find_rollout_prior(world_model: nn.Module) -> nn.Module | None:
    """The prior network of the first ``RSSMRollout`` inside ``world_model``, or ``None``.

    Finds this package's :class:`~torchrl_rssm.modules.RSSMRollout` (its ``prior``) and
    TorchRL's ``RSSMRollout`` (its ``rssm_prior``'s module): the transition that latent
    overshooting steps.

    Examples:
        >>> from torchrl.data import Bounded, Composite, Unbounded
        >>> from torchrl_rssm.modules import make_world_model
        >>> wm = make_world_model(Composite(observation=Unbounded((5,))), Bounded(-1, 1, (2,)), state_dim=8,
        ...                       belief_dim=16, hidden_dim=32)
        >>> find_rollout_prior(wm) is wm.rollout.prior
        True
    """
    for module in world_model.modules():
        if isinstance(module, RSSMRollout):
            return module.prior
        prior = getattr(module, "rssm_prior", None)  # TorchRL's RSSMRollout
        if prior is not None:
            return getattr(prior, "module", prior)
    return None


def to_dreamer_env(world_model, action_spec=None, *, reward_key: NestedKey = "reward"):
    """This package's world model as TorchRL's ``DreamerEnv`` (its Dreamer example's layout).

    ``DreamerEnv(WorldModelWrapper(SafeSequential(SafeModule(prior, ["state", "belief",
    "action"] -> ["_", "_", "state", "belief"])), SafeModule(reward, ["state", "belief"] ->
    reward_key)))`` with the world model's own networks (shared, not copied), so that
    TorchRL's ``DreamerActorLoss``, ``CEMPlanner``, ... run on it.

    Args:
        world_model: an :class:`~torchrl_rssm.modules.RSSMWorldModel`.
        action_spec: the env's action spec (default: unbounded, the prior's action size).
        reward_key: where the reward module writes.

    Examples:
        >>> from torchrl.data import Bounded, Composite, Unbounded
        >>> from torchrl_rssm.modules import make_world_model
        >>> wm = make_world_model(Composite(observation=Unbounded((5,))), Bounded(-1, 1, (2,)), state_dim=8,
        ...                       belief_dim=16, hidden_dim=32)
        >>> env = to_dreamer_env(wm, Bounded(-1, 1, (2,)))
        >>> type(env).__name__
        'DreamerEnv'
    """
    from torchrl.data import Composite, Unbounded
    from torchrl.envs.model_based.dreamer import DreamerEnv
    from torchrl.modules import SafeModule, SafeSequential, WorldModelWrapper

    prior = world_model.rollout.prior
    S, D = world_model.rollout.state_dim, world_model.rollout.belief_dim
    transition = SafeSequential(SafeModule(prior, in_keys=["state", "belief", "action"],
                                           out_keys=["_", "_", "state", "belief"]))
    reward = SafeModule(world_model.reward_model, in_keys=["state", "belief"], out_keys=[reward_key])
    device = next(prior.parameters()).device
    env = DreamerEnv(WorldModelWrapper(transition, reward), prior_shape=torch.Size([S]),
                     belief_shape=torch.Size([D]), device=device)
    env.observation_spec = Composite(state=Unbounded((S,)), belief=Unbounded((D,)), device=device)
    env.state_spec = Composite(state=Unbounded((S,)), belief=Unbounded((D,)), device=device)
    env.action_spec = action_spec if action_spec is not None else Unbounded((prior.action_dim,), device=device)
    env.reward_spec = Unbounded((1,), device=device)
    return env
