"""DreamerV3's acting policy: the categorical belief filter, then the actor (no added noise).

At env step t::

    h_t = carried belief; at is_init: h_t = f(0, 0, a=0)       (as BeliefFilter)
    z_t ~ q(z_t | h_t, e(o_t))                                  (a one-hot sample per categorical, unimix)
    a_t = actor(z_t, h_t)        (RANDOM: a sample of the actor's distribution; DETERMINISTIC: its mode)
    next belief = f(h_t, z_t, a_t)

DreamerV3 explores through its actor's entropy only, so the policy adds no noise.
:class:`BeliefFilterV3` is :class:`~torchrl_rssm.policies.BeliefFilter` on a
:class:`~torchrl_rssm.modules.DreamerV3WorldModel`: only the posterior sample differs.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey
from torchrl.data import TensorSpec

from ..modules.world_model_v3 import DreamerV3WorldModel
from .base import FilterThenAct
from .belief_filter import BeliefFilter

__all__ = ["BeliefFilterV3", "DreamerV3Policy"]


class BeliefFilterV3(BeliefFilter):
    """The belief filter on DreamerV3's categorical RSSM (see :class:`BeliefFilter`).

    ``uint8`` pixels go to the encoder as they are (DreamerV3's encoder scales them itself),
    so ``observation_transform`` defaults to ``None``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Composite, Unbounded
        >>> from torchrl_rssm.modules import make_world_model_v3
        >>> wm = make_world_model_v3(Composite(observation=Unbounded((3,))), 1, belief_dim=8, hidden_dim=8,
        ...                          num_categoricals=2, num_classes=4, mlp_layers=1)
        >>> td = BeliefFilterV3(wm)(TensorDict(observation=torch.randn(2, 3),
        ...                                    is_init=torch.ones(2, 1, dtype=torch.bool), batch_size=[2]))
        >>> td["state"].shape, td["state"].sum(-1).tolist()  # two one-hots
        (torch.Size([2, 8]), [2.0, 2.0])
    """

    def __init__(self, world_model: DreamerV3WorldModel, *, observation_transform=None, **kwargs):
        super().__init__(world_model, observation_transform=observation_transform, **kwargs)

    @staticmethod
    def _check_world_model(world_model) -> None:
        if not isinstance(world_model, DreamerV3WorldModel):
            raise TypeError(f"`world_model` must be a DreamerV3WorldModel (make_world_model_v3), got "
                            f"{type(world_model).__name__}.")

    def filter(self, observation: torch.Tensor, belief: torch.Tensor | None, is_init: torch.Tensor,
               noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z_t, h_t)``; ``noise`` (``[*B, C]`` uniforms in ``[0, 1)``) fixes the categorical sample."""
        rollout = self.rollout
        prior, posterior = rollout.prior, rollout.posterior
        p = next(prior.parameters())
        if is_init.ndim < 1 or is_init.shape[-1] != 1:
            raise ValueError(f"`{self.is_init_key}` must have shape [*B, 1] (InitTracker's), got {tuple(is_init.shape)}.")
        batch = is_init.shape[:-1]
        if belief is None:
            belief = torch.zeros(*batch, self.belief_dim, device=p.device, dtype=p.dtype)
        if belief.shape[len(batch):] != (self.belief_dim,):
            raise ValueError(f"`{self.belief_key}` must have shape [*B, {self.belief_dim}], got "
                             f"{tuple(belief.shape)}.")
        start = is_init.reshape(*batch, 1).to(device=p.device, dtype=torch.bool)
        zero = rollout.initial((1,), p.device, p.dtype)
        h0 = prior.transition(zero["state"], zero["belief"], zero["state"].new_zeros(1, prior.action_dim))[0]
        h = torch.where(start, h0, belief.to(p.dtype))
        if self.observation_transform is not None:
            observation = self.observation_transform(observation)
        embedding = self.world_model.encoder(observation).reshape(*batch, -1)
        s = posterior.sample(posterior.logits(h, embedding), noise)
        return s, h


class DreamerV3Policy(FilterThenAct):
    """DreamerV3's acting policy: :class:`BeliefFilterV3`, then the actor.

    Args:
        world_model: a :class:`~torchrl_rssm.modules.DreamerV3WorldModel`.
        actor: a TensorDict module reading ``state`` and ``belief`` and writing ``action``
            (:class:`~torchrl_rssm.modules.DreamerV3BoundedNormalActor` or
            :class:`~torchrl_rssm.modules.DreamerV3DiscreteActor`: a sample under
            ``ExplorationType.RANDOM``, the mode under ``DETERMINISTIC``).
        action_spec: the env's action spec; discrete actions are cast to its dtype.

    Keyword Args:
        obs_key, state_key, belief_key, is_init_key, observation_transform, action_key: as
            :class:`~torchrl_rssm.policies.DreamerPolicy`.

    Examples:
        >>> import torch
        >>> from torchrl.envs import GymEnv, InitTracker, TransformedEnv
        >>> from torchrl_rssm.modules import DreamerV3BoundedNormalActor, make_world_model_v3
        >>> env = TransformedEnv(GymEnv("Pendulum-v1"), InitTracker())
        >>> wm = make_world_model_v3(env.observation_spec, 1, belief_dim=8, hidden_dim=8, num_categoricals=2,
        ...                          num_classes=4, mlp_layers=1)
        >>> actor = DreamerV3BoundedNormalActor(16, env.action_spec, depth=1, num_cells=8)
        >>> policy = DreamerV3Policy(wm, actor, env.action_spec)
        >>> env.append_transform(policy.make_tensordict_primer())  # doctest: +ELLIPSIS
        TransformedEnv(...)
        >>> data = env.rollout(3, policy)
        >>> data["action"].shape, data["next", "belief"].shape
        (torch.Size([3, 1]), torch.Size([3, 8]))
    """

    filter_class = BeliefFilterV3

    def __init__(self, world_model: DreamerV3WorldModel, actor: TensorDictModuleBase, action_spec: TensorSpec, *,
                 obs_key: NestedKey | None = None, state_key: NestedKey = "state", belief_key: NestedKey = "belief",
                 is_init_key: NestedKey = "is_init", action_key: NestedKey = "action",
                 observation_transform: Callable[[torch.Tensor], torch.Tensor] | None = None):
        if not isinstance(actor, TensorDictModuleBase) or action_key not in actor.out_keys:
            raise TypeError(f"`actor` must be a TensorDict module writing {action_key!r}, got {type(actor).__name__}.")
        super().__init__(world_model, action_spec, 0.0, obs_key=obs_key, state_key=state_key,
                         belief_key=belief_key, is_init_key=is_init_key, action_key=action_key,
                         observation_transform=observation_transform)
        self.actor = actor

    def choose(self, tensordict: TensorDictBase) -> torch.Tensor:
        action = self.actor(tensordict.select(*self.actor.in_keys, strict=False)).get(self.action_key)
        # the actor's one-hot (float) in the env's layout and dtype (an index for a Categorical spec)
        return self.space.to_env(action, tensordict.batch_size)
