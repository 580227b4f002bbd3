"""DreamerV3's world model as one TensorDict module: encoder, categorical RSSM, decoder, two-hot
reward head and continuation head (Hafner et al. 2023).

:func:`make_world_model_v3` builds it from the environment's specs: a symlog MLP encoder and
an MLP decoder for vector observations (``observation``), DreamerV3's conv encoder and decoder
for ``pixels``. Over a ``[*B, T]`` replay batch it writes TorchRL's DreamerV3 keys under
``"next"`` (``prior_logits``, ``posterior_logits``, ``state``, ``belief``, ``reco_<obs>``,
``reward_logits``, ``reward``, ``continue_pred``, ``continuation``), which
:class:`~torchrl_rssm.objectives.DreamerV3ModelLoss` reads.
"""
from __future__ import annotations

import torch
from tensordict.nn import TensorDictModule, TensorDictSequential
from tensordict.utils import NestedKey

from .heads_v3 import DreamerV3ContinuationHead, DreamerV3RewardHead
from .layers_v3 import DreamerV3ImageDecoder, DreamerV3ImageEncoder, DreamerV3MLP, DreamerV3VectorEncoder
from .rssm_v3 import RSSMPosteriorV3, RSSMPriorV3, RSSMRolloutV3

__all__ = ["DreamerV3WorldModel", "make_world_model_v3"]

_NEXT_LATENT = [("next", "state"), ("next", "belief")]


class DreamerV3WorldModel(TensorDictSequential):
    """``TensorDictSequential(encoder, rollout, decoder, reward, continuation)`` with named parts.

    Build it with :func:`make_world_model_v3`.
    """

    @property
    def encoder(self) -> torch.nn.Module:
        return self.module[0].module

    @property
    def rollout(self) -> RSSMRolloutV3:
        return self.module[1]

    @property
    def decoder(self) -> torch.nn.Module:
        return self.module[2].module

    @property
    def reward_head(self) -> DreamerV3RewardHead:
        return self.module[3].module

    @property
    def continuation_head(self) -> DreamerV3ContinuationHead:
        return self.module[4].module

    @property
    def obs_key(self) -> NestedKey:
        return self.module[0].in_keys[0][-1]

    @property
    def reco_key(self) -> NestedKey:
        return self.module[2].out_keys[0][-1]


def make_world_model_v3(observation_spec, action_dim: int, *, obs_key: str = "observation", belief_dim: int = 512,
                        hidden_dim: int = 512, num_categoricals: int = 32, num_classes: int = 32,
                        unimix: float = 0.01, mlp_layers: int = 2, channels: int = 32,
                        device: torch.device | str | None = None) -> DreamerV3WorldModel:
    """DreamerV3's world model for ``observation_spec[obs_key]`` and ``action_dim``-sized actions.

    Vector observations: a symlog MLP encoder of ``mlp_layers`` x ``hidden_dim`` and an MLP
    decoder (its targets are symlogged by the loss). Pixels ``[C, H, W]``: DreamerV3's conv
    encoder and decoder of ``channels`` base channels. The RSSM is the GRU core of
    :class:`~torchrl_rssm.modules.RSSMPriorV3` with ``num_categoricals`` x ``num_classes``
    latents mixed with ``unimix`` uniform. The reward (two-hot, 255 bins, zero-initialised) and
    continuation heads have ``mlp_layers`` hidden layers.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Composite, Unbounded
        >>> wm = make_world_model_v3(Composite(observation=Unbounded((3,))), 1, belief_dim=16, hidden_dim=16,
        ...                          num_categoricals=4, num_classes=4, mlp_layers=1)
        >>> td = TensorDict({"action": torch.zeros(2, 5, 1), "is_init": torch.zeros(2, 5, 1, dtype=torch.bool),
        ...                  ("next", "observation"): torch.randn(2, 5, 3)}, [2, 5])
        >>> out = wm(td)
        >>> out["next", "state"].shape, out["next", "reco_observation"].shape, out["next", "reward_logits"].shape
        (torch.Size([2, 5, 16]), torch.Size([2, 5, 3]), torch.Size([2, 5, 255]))
    """
    spec = observation_spec[obs_key] if obs_key in observation_spec.keys() else observation_spec
    shape = tuple(spec.shape)
    state_dim = num_categoricals * num_classes
    latent_dim = state_dim + belief_dim
    if len(shape) == 3:  # pixels [C, H, W]
        encoder = DreamerV3ImageEncoder(shape[0], depth=channels, device=device)
        embed_dim = encoder.output_features(shape)
        decoder = DreamerV3ImageDecoder(latent_dim, image_shape=shape, depth=channels, device=device)
    elif len(shape) == 1:
        encoder = DreamerV3VectorEncoder(shape[0], depth=mlp_layers, num_cells=hidden_dim, device=device)
        embed_dim = hidden_dim
        decoder = DreamerV3MLP(latent_dim, shape[0], depth=mlp_layers, num_cells=hidden_dim, device=device)
    else:
        raise ValueError(f"make_world_model_v3: {obs_key!r} must be a vector [O] or an image [C, H, W], got shape "
                         f"{shape}.")
    prior = RSSMPriorV3(action_shape=(action_dim,), hidden_dim=hidden_dim, rnn_hidden_dim=belief_dim,
                        num_categoricals=num_categoricals, num_classes=num_classes, action_dim=action_dim,
                        device=device, unimix=unimix)
    posterior = RSSMPosteriorV3(hidden_dim=hidden_dim, num_categoricals=num_categoricals, num_classes=num_classes,
                                rnn_hidden_dim=belief_dim, obs_embed_dim=embed_dim, device=device, use_rms_norm=True,
                                unimix=unimix)
    reward = DreamerV3RewardHead(latent_dim, depth=mlp_layers, num_cells=hidden_dim, device=device)
    cont = DreamerV3ContinuationHead(latent_dim, depth=mlp_layers, num_cells=hidden_dim, device=device)
    return DreamerV3WorldModel(
        TensorDictModule(encoder, in_keys=[("next", obs_key)], out_keys=[("next", "encoded_latents")]),
        RSSMRolloutV3(prior, posterior),
        TensorDictModule(decoder, in_keys=_NEXT_LATENT, out_keys=[("next", f"reco_{obs_key}")]),
        TensorDictModule(reward, in_keys=_NEXT_LATENT, out_keys=[("next", "reward_logits"), ("next", "reward")]),
        TensorDictModule(cont, in_keys=_NEXT_LATENT, out_keys=[("next", "continue_pred"), ("next", "continuation")]),
    )
