"""Dreamer's acting policy: belief filter -> actor -> exploration noise.

At env step t::

    s_t, h_t = BeliefFilter(o_t, carried belief, is_init)   (the same filter as PlaNet's policy)
    a_t = actor(s_t, h_t)          (RANDOM: a sample of the action distribution; DETERMINISTIC: its mode)
    a_t = a_t + N(0, 0.3^2), clipped to the spec   (RANDOM / no context only; epsilon-greedy if discrete)
    next belief = f(h_t, s_t, a_t)                  (with the action actually executed)

The actor is any TensorDict module reading ``state`` and ``belief`` and writing ``action``,
typically a TorchRL ``ProbabilisticActor`` with ``TanhNormal``, which follows
``exploration_type()`` by itself.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey
from torchrl.data import Composite, TensorSpec

from ..modules.world_model import RSSMWorldModel
from .base import FilterThenAct
from .belief_filter import dequantize_pixels


class DreamerPolicy(FilterThenAct):
    """Dreamer's acting policy: belief filtering + the actor + exploration noise.

    Args:
        world_model: a :class:`~torchrl_rssm.modules.RSSMWorldModel`.
        actor: a TensorDict module reading ``state_key`` and ``belief_key`` and writing
            ``action_key`` (e.g. a TorchRL ``ProbabilisticActor`` with ``TanhNormal``: it
            samples under ``ExplorationType.RANDOM`` and gives its mode under DETERMINISTIC).
        action_spec: the env's action spec (default: the actor's ``spec`` when it has one).
        exploration_noise: continuous: std of the Gaussian noise added to the actor's action
            before clipping (Dreamer: 0.3); discrete: epsilon of epsilon-greedy. Added under
            ``ExplorationType.RANDOM`` and outside any exploration context only.

    Keyword Args:
        obs_key, state_key, belief_key, is_init_key, observation_transform: as
            :class:`~torchrl_rssm.policies.BeliefFilter`.
        action_key: where the actor writes the action.

    Examples:
        >>> import torch
        >>> from tensordict.nn import NormalParamExtractor, TensorDictModule
        >>> from torch import nn
        >>> from torchrl.envs import GymEnv, InitTracker, TransformedEnv
        >>> from torchrl.modules import ProbabilisticActor, TanhNormal
        >>> from torchrl_rssm.modules import make_world_model
        >>> env = TransformedEnv(GymEnv("Pendulum-v1"), InitTracker())
        >>> wm = make_world_model(env.observation_spec, env.action_spec, state_dim=8, belief_dim=16, hidden_dim=16)
        >>> net = nn.Sequential(nn.Linear(24, 2), NormalParamExtractor())
        >>> module = TensorDictModule(lambda s, h: net(torch.cat([s, h], -1)), in_keys=["state", "belief"],
        ...                           out_keys=["loc", "scale"])
        >>> actor = ProbabilisticActor(module, in_keys=["loc", "scale"], out_keys=["action"],
        ...                            distribution_class=TanhNormal, spec=env.action_spec,
        ...                            distribution_kwargs={"low": -2.0, "high": 2.0})
        >>> policy = DreamerPolicy(wm, actor)
        >>> env.append_transform(policy.make_tensordict_primer())  # doctest: +ELLIPSIS
        TransformedEnv(...)
        >>> data = env.rollout(3, policy)
        >>> data["action"].shape, data["next", "belief"].shape
        (torch.Size([3, 1]), torch.Size([3, 16]))
    """

    def __init__(
        self,
        world_model: RSSMWorldModel,
        actor: TensorDictModuleBase,
        action_spec: TensorSpec | None = None,
        exploration_noise: float = 0.3,
        *,
        obs_key: NestedKey | None = None,
        state_key: NestedKey = "state",
        belief_key: NestedKey = "belief",
        is_init_key: NestedKey = "is_init",
        action_key: NestedKey = "action",
        observation_transform: Callable[[torch.Tensor], torch.Tensor] | None = dequantize_pixels,
    ):
        if not isinstance(actor, TensorDictModuleBase):
            raise TypeError(f"`actor` must be a TensorDict module reading ({state_key!r}, {belief_key!r}) and "
                            f"writing {action_key!r} (e.g. a ProbabilisticActor), got {type(actor).__name__}.")
        missing = [k for k in (state_key, belief_key) if k not in actor.in_keys]
        if missing or action_key not in actor.out_keys:
            raise ValueError(f"`actor` must read {state_key!r} and {belief_key!r} and write {action_key!r}; it "
                             f"reads {list(actor.in_keys)} and writes {list(actor.out_keys)}.")
        if action_spec is None:
            spec = getattr(actor, "spec", None)
            if isinstance(spec, Composite):
                spec = spec.get(action_key, None)
            action_spec = spec
        if action_spec is None:
            raise ValueError("`action_spec` is required when the actor has no `spec` (e.g. env.action_spec).")
        super().__init__(world_model, action_spec, exploration_noise, obs_key=obs_key, state_key=state_key,
                         belief_key=belief_key, is_init_key=is_init_key, action_key=action_key,
                         observation_transform=observation_transform)
        self.actor = actor

    def choose(self, tensordict: TensorDictBase) -> torch.Tensor:
        # the actor runs on a selection of its inputs: its other outputs (loc, scale, log-prob) stay
        # out of the collected data
        inputs = tensordict.select(*self.actor.in_keys, strict=False)
        return self.actor(inputs).get(self.action_key)
