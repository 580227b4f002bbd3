"""THE belief filter: one posterior step of ``observe`` per environment step.

Every acting policy of the package (PlaNet's planner, Dreamer's actor) runs it, so that
acting and training filter alike. At env step t (see ``docs/CONTRACT.md``, "Acting
(policy) semantics")::

    h_t = belief carried from the previous step's ("next", "belief")
    if is_init:  h_t = f(0, 0, a=0)                (episode start: the zero latent, a zero action)
    s_t ~ q(s_t | h_t, e(o_t))                     (filter the belief with the observation)
    ... the policy chooses a_t from (s_t, h_t) ...
    next belief = f(h_t, s_t, a_t)                 (with the action actually executed)

Training (:meth:`~torchrl_rssm.modules.RSSMRollout.observe` with ``init_embedding``,
which :class:`~torchrl_rssm.objectives.RSSMLoss` passes) starts episodes from the same
filtered first observation, so the latents a collector records equal the ones training
recomputes on the collected data (a test checks it).

The filter writes root ``state`` s_t and ``belief`` h_t; :meth:`BeliefFilter.advance`
writes ``("next", "belief")``. A TorchRL env step keeps policy-written ``"next"`` entries
and the collector moves them to the root of the following step, as with TorchRL's
recurrent modules (``LSTMModule`` / ``GRUModule``). :meth:`BeliefFilter.make_tensordict_primer`
declares ``state`` and ``belief`` (zeros) so that any env + collector carries them.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey
from torchrl.data import Unbounded

from ..envs.transforms import dequantize
from ..modules.world_model import RSSMWorldModel


def dequantize_pixels(observation: torch.Tensor, bits: int = 5) -> torch.Tensor:
    """The acting policies' default observation transform: ``uint8`` pixels get PlaNet's
    dequantisation (``bits`` = 5, noise included), as the replay buffer gives them to the
    model in training; any other observation is returned unchanged.

    Examples:
        >>> import torch
        >>> dequantize_pixels(torch.full((3, 2, 2), 255, dtype=torch.uint8)).dtype
        torch.float32
        >>> x = torch.randn(4)
        >>> dequantize_pixels(x) is x
        True
    """
    if observation.dtype != torch.uint8:
        return observation
    return dequantize(observation, bits=bits)


class BeliefFilter(TensorDictModuleBase):
    """Filters the carried belief with the current observation (see the module docstring).

    Reads the observation, ``belief`` (optional: zeros, like the primer's, when absent) and
    ``is_init``; writes ``state`` s_t and ``belief`` h_t. Runs without gradients.

    Args:
        world_model: a :class:`~torchrl_rssm.modules.RSSMWorldModel` (encoder, posterior and
            prior are taken from it). Its rollout may be PlaNet's
            :class:`~torchrl_rssm.modules.RSSMRollout` or DreamerV3's
            :class:`~torchrl_rssm.modules.RSSMRolloutV3` (categorical latents: ``state`` is the
            flattened one-hot sample, one posterior step per environment step all the same).

    Keyword Args:
        obs_key: observation key (default: the world model's, ``pixels`` or ``observation``).
        state_key, belief_key, is_init_key: latent and episode-start keys. ``is_init``
            comes from TorchRL's ``InitTracker`` transform, which the env needs.
        observation_transform: applied to the observation before the encoder. Default
            :func:`dequantize_pixels`: ``uint8`` pixels are dequantised to 5 bits as the
            replay buffer does for training (other observations pass unchanged). Give
            ``functools.partial(dequantize_pixels, bits=b)`` for another bit depth, or
            ``None`` for none (the encoder then maps ``uint8`` to ``[-0.5, 0.5)`` without
            dequantisation).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded, Composite, Unbounded
        >>> from torchrl_rssm.modules import make_world_model
        >>> wm = make_world_model(Composite(observation=Unbounded((3,))), Bounded(-1, 1, (1,)),
        ...                       state_dim=4, belief_dim=8, hidden_dim=8)
        >>> belief_filter = BeliefFilter(wm)
        >>> td = TensorDict(observation=torch.randn(2, 3), is_init=torch.ones(2, 1, dtype=torch.bool),
        ...                 batch_size=[2])
        >>> td = belief_filter(td)
        >>> td["state"].shape, td["belief"].shape
        (torch.Size([2, 4]), torch.Size([2, 8]))
        >>> td = belief_filter.advance(td, torch.zeros(2, 1))
        >>> td["next", "belief"].shape
        torch.Size([2, 8])
    """

    def __init__(
        self,
        world_model: RSSMWorldModel,
        *,
        obs_key: NestedKey | None = None,
        state_key: NestedKey = "state",
        belief_key: NestedKey = "belief",
        is_init_key: NestedKey = "is_init",
        observation_transform: Callable[[torch.Tensor], torch.Tensor] | None = dequantize_pixels,
    ):
        super().__init__()
        self._check_world_model(world_model)
        if observation_transform is not None and not callable(observation_transform):
            raise TypeError(f"`observation_transform` must be callable or None, got {observation_transform!r}.")
        self.world_model = world_model
        self.observation_transform = observation_transform
        self.obs_key = obs_key if obs_key is not None else world_model.obs_key
        self.state_key, self.belief_key, self.is_init_key = state_key, belief_key, is_init_key
        rollout = world_model.rollout
        self.state_dim, self.belief_dim = rollout.state_dim, rollout.belief_dim
        self.in_keys = [self.obs_key, belief_key, is_init_key]
        self.out_keys = [state_key, belief_key]

    @staticmethod
    def _check_world_model(world_model) -> None:
        if not isinstance(world_model, RSSMWorldModel):
            raise TypeError(f"`world_model` must be an RSSMWorldModel (make_world_model), got "
                            f"{type(world_model).__name__}.")

    @property
    def rollout(self):
        return self.world_model.rollout

    def make_tensordict_primer(self, extra_specs: dict | None = None):
        """A ``TensorDictPrimer`` declaring ``state`` and ``belief`` (and ``extra_specs``,
        e.g. a planner's warm-start plan) with zeros, so that envs and collectors carry them.

        Append it to the env (after ``InitTracker``): ``env.append_transform(policy.make_tensordict_primer())``.
        """
        from torchrl.envs.transforms import TensorDictPrimer

        specs = {self.state_key: Unbounded((self.state_dim,)), self.belief_key: Unbounded((self.belief_dim,))}
        specs.update(extra_specs or {})
        return TensorDictPrimer(specs, expand_specs=True)

    def filter(self, observation: torch.Tensor, belief: torch.Tensor | None, is_init: torch.Tensor,
               noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The tensor step: ``(s_t, h_t)`` from ``o_t [*B, *obs]``, carried ``belief [*B, D]``
        (``None``: zeros) and ``is_init [*B, 1]``. ``noise [*B, S]`` fixes the posterior sample."""
        rollout = self.rollout
        p = next(rollout.prior.parameters())
        if is_init.ndim < 1 or is_init.shape[-1] != 1:
            raise ValueError(f"`{self.is_init_key}` must have shape [*B, 1] (InitTracker's), got {tuple(is_init.shape)}.")
        batch = is_init.shape[:-1]
        if belief is None:  # no primer: the carried belief starts at zeros, like the primer's
            belief = torch.zeros(*batch, self.belief_dim, device=p.device, dtype=p.dtype)
        if belief.shape[len(batch):] != (self.belief_dim,):
            raise ValueError(f"`{self.belief_key}` must have shape [*B, {self.belief_dim}], got "
                             f"{tuple(belief.shape)}.")
        start = is_init.reshape(*batch, 1).to(device=p.device, dtype=torch.bool)
        h = torch.where(start, rollout.initial_belief(p.device, p.dtype), belief.to(p.dtype))  # h_0 = f(0, 0, 0)
        if self.observation_transform is not None:
            observation = self.observation_transform(observation)
        embedding = self.world_model.encoder(observation).reshape(*batch, -1)
        s = rollout.posterior_sample(h, embedding, noise)  # s_t ~ q(s_t | h_t, e(o_t))
        return s, h

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        obs = tensordict.get(self.obs_key, None)
        if obs is None:
            raise KeyError(f"The belief filter reads the observation from {self.obs_key!r}, which the tensordict "
                           f"lacks (keys: {list(tensordict.keys(True, True))}).")
        is_init = tensordict.get(self.is_init_key, None)
        if is_init is None:
            raise KeyError(f"The belief filter needs {self.is_init_key!r} to start episodes: "
                           "add torchrl.envs.InitTracker() to the env.")
        batch = tensordict.batch_size
        with torch.no_grad():
            s, h = self.filter(obs, tensordict.get(self.belief_key, None), is_init.reshape(*batch, 1))
        tensordict.set(self.state_key, s)
        tensordict.set(self.belief_key, h)
        return tensordict

    def advance(self, tensordict: TensorDictBase, action: torch.Tensor) -> TensorDictBase:
        """Writes ``("next", belief)`` = f(h_t, s_t, a_t) with ``action`` the executed action in the
        model's layout ``[*B, A]`` (one-hot when discrete: ``ActionSpace.to_model``)."""
        rollout = self.rollout
        with torch.no_grad():
            s, h = tensordict.get(self.state_key), tensordict.get(self.belief_key)
            if rollout._fast:
                next_belief = rollout.prior.transition(s, h, action.to(h.dtype))
            else:
                flat = (s.reshape(-1, s.shape[-1]), h.reshape(-1, h.shape[-1]), action.reshape(-1, action.shape[-1]))
                # the belief is the prior's last output: (mean, std, state, belief) or V3's (logits, state, belief)
                next_belief = rollout.prior(*flat)[-1].reshape(h.shape)
        tensordict.set(("next", self.belief_key), next_belief)
        return tensordict
