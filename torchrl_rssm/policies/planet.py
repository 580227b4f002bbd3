"""PlaNet's acting policy: belief filter -> planner -> exploration noise.

At env step t (see ``docs/CONTRACT.md``, "Acting (policy) semantics")::

    s_t, h_t = BeliefFilter(o_t, carried belief, is_init)   (episode start: h_t = f(0, 0, 0))
    a_t = planner(s_t, h_t) + exploration noise, clipped to the action spec
    next belief = f(h_t, s_t, a_t)                           (with the action actually executed)
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torchrl.data import TensorSpec, Unbounded

from ..modules.world_model import RSSMWorldModel
from ..planners.base import PlannerBase
from ..planners.cem import CEMPlanner
from .base import FilterThenAct
from .belief_filter import dequantize_pixels


class PlaNetPolicy(FilterThenAct):
    """PlaNet's acting policy: belief filtering + latent planning + exploration noise.

    Args:
        world_model: a :class:`~torchrl_rssm.modules.RSSMWorldModel` (encoder,
            posterior, prior and reward head are taken from it). Its rollout may be
            DreamerV3's :class:`~torchrl_rssm.modules.RSSMRolloutV3` (categorical latents, a
            two-hot reward head read at its mean; pass ``continuation_model=`` to weight the
            imagined rewards by the continuation head, see
            :class:`~torchrl_rssm.planners.CEMPlanner`).
        planner: a :class:`~torchrl_rssm.planners.CEMPlanner` /
            :class:`~torchrl_rssm.planners.MPPIPlanner` on the same world model
            (default: ``CEMPlanner(world_model, action_spec=action_spec, **planner_kwargs)``
            with PlaNet's sizes).
        action_spec: the env's action spec (default: the planner's).
        exploration_noise: continuous actions: std of the Gaussian noise added to the
            planned action before clipping (PlaNet: 0.3). Discrete actions: the
            probability of replacing the planned action by a uniformly random one.
            Added under ``ExplorationType.RANDOM`` (TorchRL collectors' default) and
            outside any exploration context; not under DETERMINISTIC / MODE / MEAN / MEDIAN
            (use ``set_exploration_type(ExplorationType.DETERMINISTIC)`` for test episodes).

    Keyword Args:
        obs_key: observation key (default: the world model's, ``pixels`` or ``observation``).
        state_key, belief_key, is_init_key: latent and episode-start keys. ``is_init``
            comes from TorchRL's ``InitTracker`` transform, which the env needs.
        observation_transform: applied to the observation before the encoder. Default
            :func:`~torchrl_rssm.policies.dequantize_pixels`: ``uint8`` pixels get the
            5-bit dequantisation the replay buffer applies in training; ``None``: none.
        **planner_kwargs: passed to the default ``CEMPlanner`` (e.g. ``planning_horizon``,
            ``num_candidates``, ``warm_start``); an error with an explicit ``planner``.

    The action is written to the planner's ``action_key``. The policy runs on the world
    model's device: give it tensordicts there (TorchRL collectors do, with ``policy_device``).

    Examples:
        >>> import torch
        >>> from torchrl.envs import GymEnv, InitTracker, TransformedEnv
        >>> from torchrl_rssm.modules import make_world_model
        >>> env = TransformedEnv(GymEnv("Pendulum-v1"), InitTracker())
        >>> wm = make_world_model(env.observation_spec, env.action_spec,
        ...                       state_dim=8, belief_dim=16, hidden_dim=16)
        >>> policy = PlaNetPolicy(wm, action_spec=env.action_spec, planning_horizon=4,
        ...                       optim_steps=2, num_candidates=20, top_k=4)
        >>> env.append_transform(policy.make_tensordict_primer())  # doctest: +ELLIPSIS
        TransformedEnv(...)
        >>> data = env.rollout(3, policy)
        >>> data["belief"].shape, data["next", "belief"].shape
        (torch.Size([3, 16]), torch.Size([3, 16]))
    """

    def __init__(
        self,
        world_model: RSSMWorldModel,
        planner: PlannerBase | None = None,
        action_spec: TensorSpec | None = None,
        exploration_noise: float = 0.3,
        *,
        obs_key: NestedKey | None = None,
        state_key: NestedKey = "state",
        belief_key: NestedKey = "belief",
        is_init_key: NestedKey = "is_init",
        observation_transform: Callable[[torch.Tensor], torch.Tensor] | None = dequantize_pixels,
        **planner_kwargs,
    ):
        if not isinstance(world_model, RSSMWorldModel):  # before a default planner is built on it
            raise TypeError(f"`world_model` must be an RSSMWorldModel (make_world_model), got "
                            f"{type(world_model).__name__}.")
        if planner is None:
            if action_spec is None:
                raise ValueError("`action_spec` is required when no `planner` is given.")
            planner = CEMPlanner(world_model, action_spec=action_spec, state_key=state_key, belief_key=belief_key,
                                 is_init_key=is_init_key, **planner_kwargs)
        elif planner_kwargs:
            raise TypeError(f"planner options {sorted(planner_kwargs)} are only used without a `planner`.")
        if not isinstance(planner, PlannerBase):
            raise TypeError(f"`planner` must be a CEMPlanner or MPPIPlanner, got {type(planner).__name__}.")
        if (planner.state_key, planner.belief_key) != (state_key, belief_key):
            raise ValueError(f"`planner` reads ({planner.state_key!r}, {planner.belief_key!r}) but the policy "
                             f"writes ({state_key!r}, {belief_key!r}): use the same state_key/belief_key.")
        super().__init__(
            world_model, action_spec if action_spec is not None else planner.action_spec, exploration_noise,
            obs_key=obs_key, state_key=state_key, belief_key=belief_key, is_init_key=is_init_key,
            action_key=planner.action_key, observation_transform=observation_transform,
            extra_keys=(planner.plan_key,) if planner.warm_start else (),
        )
        self.planner = planner

    def make_tensordict_primer(self):
        """A ``TensorDictPrimer`` declaring ``state`` and ``belief`` (and the warm-start
        plan) with zeros, so that envs and collectors carry them across steps.

        Append it to the env (after ``InitTracker``): ``env.append_transform(policy.make_tensordict_primer())``.
        """
        extra = {}
        if self.planner.warm_start:
            extra[self.planner.plan_key] = Unbounded((self.planner.planning_horizon, self.space.dim))
        return super().make_tensordict_primer(extra)

    def choose(self, tensordict: TensorDictBase) -> torch.Tensor:
        self.planner(tensordict)  # writes the planned action (and the warm-start plan)
        return tensordict.get(self.action_key)
