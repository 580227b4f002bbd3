"""Assembles a complete RSSM world model from environment specs.

The result has the nesting of TorchRL's Dreamer example
(``WorldModelWrapper(TensorDictSequential(encoder, rssm_rollout, decoder), reward_model)``),
so TorchRL's ``DreamerModelLoss`` and our :class:`~torchrl_rssm.objectives.RSSMLoss`
both run on it.
"""
from __future__ import annotations

import torch
from tensordict.nn import TensorDictModule, TensorDictSequential
from tensordict.utils import NestedKey
from torchrl.modules import WorldModelWrapper

from .decoders import ConvDecoder, MLPDecoder
from .encoders import ConvEncoder, MLPEncoder, min_image_size
from .heads import RewardModel
from .rssm import RSSMPosterior, RSSMPrior, RSSMRollout


class RSSMWorldModel(WorldModelWrapper):
    """A TorchRL ``WorldModelWrapper`` with named access to its parts.

    ``world_model[0]`` is ``TensorDictSequential(encoder, rollout, decoder)`` and
    ``world_model[1]`` the reward module, as in TorchRL's Dreamer example. Build it
    with :func:`make_world_model`.
    """

    @property
    def encoder(self) -> torch.nn.Module:
        return self[0][0].module

    @property
    def rollout(self) -> RSSMRollout:
        return self[0][1]

    @property
    def decoder(self) -> torch.nn.Module:
        return self[0][2].module

    @property
    def reward_model(self) -> torch.nn.Module:
        return self[1].module

    @property
    def obs_key(self) -> NestedKey:
        key = self[0][0].in_keys[0]
        return key[-1] if isinstance(key, tuple) else key

    @property
    def reco_key(self) -> NestedKey:
        return self[0][2].out_keys[0]

    @property
    def reward_key(self) -> NestedKey:
        return self[1].out_keys[0]


def make_world_model(
    observation_spec,
    action_spec,
    *,
    obs_key: str | None = None,
    state_dim: int = 30,
    belief_dim: int = 200,
    hidden_dim: int = 200,
    embed_dim: int | None = None,
    channels: int = 32,
    min_std: float = 0.1,
    reward_key: str = "reward_pred",
    compile_step: bool = False,
    device: torch.device | str | None = None,
) -> RSSMWorldModel:
    """Builds encoder, RSSM, decoder and reward head for the given specs.

    Args:
        observation_spec: the environment's observation ``Composite`` spec (or a
            single spec of the observation); ``pixels`` ``[C, H, W]`` gives the
            conv encoder/decoder, a vector ``observation`` the MLPs. Any channel
            count (1 for grayscale, 3 for RGB); 64x64 is exactly PlaNet's stack,
            other sizes (H, W >= 46, e.g. 96 or 128, square or not) get an
            embedding sized from the image (:meth:`ConvEncoder.output_dim`) and a
            decoder resized to the image (see :class:`ConvDecoder`).
        action_spec: the environment's action spec.
        obs_key: which observation to model (default: ``"pixels"`` if present,
            else ``"observation"``).
        state_dim, belief_dim, hidden_dim: RSSM sizes (PlaNet: 30, 200, 200).
        embed_dim: embedding size for vector observations (pixels: set by the
            conv stack, 1024 for 64x64).
        channels: conv width (PlaNet: 32).
        min_std: lower bound of the latent stds.
        reward_key: where the predicted reward goes, under ``"next"``. Use
            ``"reward"`` for TorchRL's convention (``DreamerModelLoss`` renames the
            true reward to ``true_reward`` first).
        compile_step: compile the RSSM step with ``torch.compile(fullgraph=True)``.
        device: where to create the parameters.

    Examples:
        >>> import torch
        >>> from torchrl.data import Bounded, Composite, Unbounded
        >>> obs = Composite(observation=Unbounded((5,)))
        >>> act = Bounded(-1, 1, (2,))
        >>> wm = make_world_model(obs, act)
        >>> from tensordict import TensorDict
        >>> td = TensorDict({"action": torch.zeros(4, 10, 2),
        ...                  ("next", "observation"): torch.zeros(4, 10, 5)}, [4, 10])
        >>> wm(td)["next", "reco_observation"].shape
        torch.Size([4, 10, 5])
    """
    keys = set(observation_spec.keys()) if hasattr(observation_spec, "keys") else set()
    if obs_key is None:
        obs_key = "pixels" if "pixels" in keys else "observation"
    spec = observation_spec[obs_key] if keys else observation_spec
    if keys and obs_key not in keys:
        raise KeyError(f"make_world_model: obs_key={obs_key!r} not in the observation spec keys {sorted(keys)}.")
    shape = tuple(spec.shape)
    latent_dim = state_dim + belief_dim
    if len(shape) == 3:
        smallest = min_image_size(4)
        if min(shape[-2:]) < smallest:
            raise ValueError(
                f"make_world_model: pixel observation {obs_key!r} in observation_spec has shape {shape}; "
                f"the conv encoder needs [C, H, W] with H, W >= {smallest} (PlaNet's stack: 64). "
                "Render larger images (see torchrl_rssm.envs.make_env(image_size=...))."
            )
        encoder = ConvEncoder(channels=channels, in_channels=shape[0], device=device, image_size=shape[-2:])
        decoder = ConvDecoder(channels=channels, latent_dim=latent_dim, out_channels=shape[0], device=device,
                              image_size=shape[-2:])
        embed_dim = encoder.output_dim()
    elif len(shape) == 1:
        embed_dim = embed_dim or hidden_dim
        encoder = MLPEncoder(shape[0], embed_dim=embed_dim, hidden_dim=hidden_dim, device=device)
        decoder = MLPDecoder(shape[0], latent_dim=latent_dim, hidden_dim=hidden_dim, device=device)
    else:
        raise ValueError(f"make_world_model: observation {obs_key!r} must be [C, H, W] or [obs_dim], got {shape}.")
    prior = RSSMPrior(action_spec, hidden_dim=hidden_dim, rnn_hidden_dim=belief_dim, state_dim=state_dim,
                      scale_lb=min_std, device=device)
    posterior = RSSMPosterior(hidden_dim=hidden_dim, state_dim=state_dim, scale_lb=min_std,
                              rnn_hidden_dim=belief_dim, obs_embed_dim=embed_dim, device=device)
    rollout = RSSMRollout(prior, posterior, compile_step=compile_step)
    transition = TensorDictSequential(
        TensorDictModule(encoder, in_keys=[("next", obs_key)], out_keys=[("next", "encoded_latents")]),
        rollout,
        TensorDictModule(decoder, in_keys=[("next", "state"), ("next", "belief")],
                         out_keys=[("next", f"reco_{obs_key}")]),
    )
    reward = TensorDictModule(
        RewardModel(state_dim, belief_dim, hidden_dim, device=device),
        in_keys=[("next", "state"), ("next", "belief")],
        out_keys=[("next", reward_key)],
    )
    return RSSMWorldModel(transition, reward)
