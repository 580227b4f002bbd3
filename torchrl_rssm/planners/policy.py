"""The acting policy PlaNet runs in the environment: filter, plan, explore.

At env step t (see ``docs/CONTRACT.md``, "Acting (policy) semantics")::

    h_t = belief carried from the previous step (zeros from the primer after a reset)
    if is_init:  h_t = 0, s_t = 0                  (as in training, where episodes start from zeros)
    else:        s_t ~ q(s_t | h_t, e(o_t))        (filter the belief with the new observation)
    a_t = planner(s_t, h_t) + exploration noise, clipped to the action spec
    next belief = f(h_t, s_t, a_t)                 (with the action actually executed)

The policy writes root ``state`` s_t, ``belief`` h_t, ``action`` a_t and
``("next", "belief")``; a TorchRL env step keeps policy-written ``"next"`` entries and
the collector moves them to the root of the following step, exactly as with TorchRL's
recurrent modules (``LSTMModule`` / ``GRUModule``). ``make_tensordict_primer()``
declares ``state`` and ``belief`` (zeros) so that any env + collector carries them.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey
from torch.nn import functional as F
from torchrl.data import TensorSpec, Unbounded
from torchrl.envs.utils import ExplorationType, exploration_type

from ..modules.world_model import RSSMWorldModel
from ._common import ActionSpace, PlannerBase
from .cem import CEMPlanner

# Exploration types under which the noise is added. ``None`` is what
# ``exploration_type()`` returns outside any ``set_exploration_type`` context (plain
# calls); TorchRL collectors run under RANDOM by default. This matches TorchRL's own
# exploration modules (e.g. ``AdditiveGaussianModule``).
_NOISY = (ExplorationType.RANDOM, None)


class PlaNetPolicy(TensorDictModuleBase):
    """PlaNet's acting policy: belief filtering + latent planning + exploration noise.

    Args:
        world_model: a :class:`~torchrl_rssm.modules.RSSMWorldModel` (encoder,
            posterior, prior and reward head are taken from it).
        planner: a :class:`CEMPlanner` / :class:`MPPIPlanner` on the same world model
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
        observation_transform: applied to the observation before the encoder, e.g.
            ``functools.partial(torchrl_rssm.envs.dequantize, bits=5)`` to match the
            dequantised pixels the replay buffer feeds the model in training.
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
        observation_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        **planner_kwargs,
    ):
        super().__init__()
        # applied to the observation before the encoder: give it the preprocessing the replay
        # buffer applies in training (e.g. torchrl_rssm.envs.dequantize), so both see the same inputs
        self.observation_transform = observation_transform
        if not isinstance(world_model, RSSMWorldModel):
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
        if exploration_noise < 0:
            raise ValueError(f"`exploration_noise` must be >= 0, got {exploration_noise}.")
        self.world_model, self.planner = world_model, planner
        self.space = ActionSpace(action_spec if action_spec is not None else planner.action_spec)
        self.exploration_noise = float(exploration_noise)
        self.obs_key = obs_key if obs_key is not None else world_model.obs_key
        self.state_key, self.belief_key, self.is_init_key = state_key, belief_key, is_init_key
        self.action_key = planner.action_key
        rollout = world_model.rollout
        self.state_dim, self.belief_dim = rollout.state_dim, rollout.belief_dim
        warm = [planner.plan_key] if planner.warm_start else []
        self.in_keys = [self.obs_key, belief_key, is_init_key] + warm
        self.out_keys = [state_key, belief_key, self.action_key, ("next", belief_key)] + warm

    def make_tensordict_primer(self):
        """A ``TensorDictPrimer`` declaring ``state`` and ``belief`` (and the warm-start
        plan) with zeros, so that envs and collectors carry them across steps.

        Append it to the env (after ``InitTracker``): ``env.append_transform(policy.make_tensordict_primer())``.
        """
        from torchrl.envs.transforms import TensorDictPrimer

        specs = {self.state_key: Unbounded((self.state_dim,)), self.belief_key: Unbounded((self.belief_dim,))}
        if self.planner.warm_start:
            specs[self.planner.plan_key] = Unbounded((self.planner.planning_horizon, self.space.dim))
        return TensorDictPrimer(specs, expand_specs=True)

    def _explore(self, action: torch.Tensor) -> torch.Tensor:
        """Adds exploration noise in the env's action layout ``[*B, *spec.shape]``."""
        if self.exploration_noise == 0 or exploration_type() not in _NOISY:
            return action
        if not self.space.discrete:
            return self.space.clip(action + self.exploration_noise * torch.randn_like(action))
        batch = action.shape[: action.ndim - len(self.space.spec.shape)]
        swap = torch.rand(batch, device=action.device) < self.exploration_noise  # epsilon-greedy
        random = torch.randint(self.space.dim, batch, device=action.device)
        if self.space.kind == "one_hot":
            random = F.one_hot(random, self.space.dim).to(action.dtype)
            return torch.where(swap.unsqueeze(-1), random, action)
        return torch.where(swap.reshape(*batch, *([1] * len(self.space.spec.shape))),
                           random.reshape(action.shape).to(action.dtype), action)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        batch = tensordict.batch_size
        obs = tensordict.get(self.obs_key, None)
        if obs is None:
            raise KeyError(f"PlaNetPolicy reads the observation from {self.obs_key!r}, which the tensordict lacks.")
        is_init = tensordict.get(self.is_init_key, None)
        if is_init is None:
            raise KeyError(f"PlaNetPolicy needs {self.is_init_key!r} to reset the belief at episode starts: "
                           "add torchrl.envs.InitTracker() to the env.")
        rollout = self.world_model.rollout
        with torch.no_grad():
            p = next(rollout.prior.parameters())
            M = batch.numel()
            belief = tensordict.get(self.belief_key, None)
            if belief is None:  # no primer: the carried belief starts at zeros, like the primer's
                belief = torch.zeros(*batch, self.belief_dim, device=p.device, dtype=p.dtype)
            if belief.shape[len(batch):] != (self.belief_dim,):
                raise ValueError(f"`{self.belief_key}` must have shape [*B, {self.belief_dim}], got "
                                 f"{tuple(belief.shape)}.")
            keep = (~is_init.reshape(M).bool()).to(p.dtype).unsqueeze(-1)  # 0 at episode starts
            h = belief.reshape(M, self.belief_dim).to(p.dtype) * keep
            if self.observation_transform is not None:
                obs = self.observation_transform(obs)
            embedding = self.world_model.encoder(obs).reshape(M, -1)
            _, _, s = rollout.posterior(h, embedding)  # s_t ~ q(s_t | h_t, e(o_t))
            s = s * keep
            tensordict.set(self.state_key, s.reshape(*batch, self.state_dim))
            tensordict.set(self.belief_key, h.reshape(*batch, self.belief_dim))
            self.planner(tensordict)  # writes the planned action (and the warm-start plan)
            action = self._explore(tensordict.get(self.action_key))
            tensordict.set(self.action_key, action)
            # The next belief uses the executed (noisy) action, as the model will see it in the data.
            a = self.space.to_model(action, p.dtype).reshape(M, -1)
            next_belief = rollout.prior.transition(s, h, a)
            tensordict.set(("next", self.belief_key), next_belief.reshape(*batch, self.belief_dim))
        return tensordict
