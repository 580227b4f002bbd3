"""The one shape every acting policy has: filter the belief, choose an action, explore, advance.

At env step t::

    s_t, h_t = BeliefFilter(o_t, carried belief, is_init)   (episode start: h_t = f(0, 0, 0))
    a_t = choose(s_t, h_t)                                   (PlaNet: a planner; Dreamer: the actor)
    a_t = exploration(a_t)                                   (RANDOM / no context only)
    next belief = f(h_t, s_t, a_t)                           (with the action actually executed)

Subclasses say only how they choose (:meth:`FilterThenAct.choose`).
"""
from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey
from torchrl.data import TensorSpec

from ..modules.world_model import RSSMWorldModel
from ..planners.action_space import ActionSpace
from .belief_filter import BeliefFilter, dequantize_pixels
from .exploration import ExplorationNoise


class FilterThenAct(TensorDictModuleBase):
    """Base of :class:`~torchrl_rssm.policies.PlaNetPolicy` and :class:`~torchrl_rssm.policies.DreamerPolicy`.

    Runs the shared :class:`BeliefFilter`, then :meth:`choose` (without gradients), then
    :class:`ExplorationNoise`, and writes ``("next", belief)`` from the executed action.

    Args:
        world_model: the :class:`~torchrl_rssm.modules.RSSMWorldModel` the filter runs.
        action_spec: the env's action spec.
        exploration_noise: std of the Gaussian noise (continuous) or epsilon (discrete).

    Keyword Args:
        obs_key, state_key, belief_key, is_init_key, observation_transform: as
            :class:`BeliefFilter`.
        action_key: where the action goes.
        extra_keys: entries the choice reads and writes besides the latents (e.g. a warm-start plan).
    """

    #: the belief filter the policy runs (DreamerV3's categorical model has its own)
    filter_class: type = BeliefFilter

    def __init__(
        self,
        world_model: RSSMWorldModel,
        action_spec: TensorSpec,
        exploration_noise: float = 0.3,
        *,
        obs_key: NestedKey | None = None,
        state_key: NestedKey = "state",
        belief_key: NestedKey = "belief",
        is_init_key: NestedKey = "is_init",
        action_key: NestedKey = "action",
        observation_transform: Callable[[torch.Tensor], torch.Tensor] | None = dequantize_pixels,
        extra_keys: tuple[NestedKey, ...] = (),
    ):
        super().__init__()
        self.belief_filter = self.filter_class(world_model, obs_key=obs_key, state_key=state_key, belief_key=belief_key,
                                          is_init_key=is_init_key, observation_transform=observation_transform)
        self.space = ActionSpace(action_spec)
        self.exploration = ExplorationNoise(self.space, exploration_noise)
        self.obs_key = self.belief_filter.obs_key
        self.state_key, self.belief_key, self.is_init_key = state_key, belief_key, is_init_key
        self.action_key = action_key
        self.state_dim, self.belief_dim = self.belief_filter.state_dim, self.belief_filter.belief_dim
        self.in_keys = [self.obs_key, belief_key, is_init_key, *extra_keys]
        self.out_keys = [state_key, belief_key, action_key, ("next", belief_key), *extra_keys]

    # the world model is the filter's (one registration: no duplicated parameters in state_dict)
    @property
    def world_model(self) -> RSSMWorldModel:
        return self.belief_filter.world_model

    @property
    def observation_transform(self):
        return self.belief_filter.observation_transform

    @property
    def exploration_noise(self) -> float:
        return self.exploration.scale

    @exploration_noise.setter
    def exploration_noise(self, value: float) -> None:
        if value < 0:
            raise ValueError(f"`exploration_noise` must be >= 0, got {value}.")
        self.exploration.scale = float(value)

    def make_tensordict_primer(self, extra_specs: dict | None = None):
        """A ``TensorDictPrimer`` declaring ``state`` and ``belief`` with zeros (see :class:`BeliefFilter`).

        Append it to the env (after ``InitTracker``): ``env.append_transform(policy.make_tensordict_primer())``.
        """
        return self.belief_filter.make_tensordict_primer(extra_specs)

    @abstractmethod
    def choose(self, tensordict: TensorDictBase) -> torch.Tensor:
        """The action for the filtered latents ``tensordict[state_key]``, ``tensordict[belief_key]``."""

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        self.belief_filter(tensordict)  # s_t, h_t
        with torch.no_grad():
            action = self.exploration(self.choose(tensordict))
        tensordict.set(self.action_key, action)
        # the next belief uses the executed (noisy) action, as the model will see it in the data
        model_action = self.space.to_model(action, tensordict.get(self.belief_key).dtype)
        return self.belief_filter.advance(tensordict, model_action)
