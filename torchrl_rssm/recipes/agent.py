"""What the trainer core asks of an agent (PlaNet, Dreamer).

The core (:class:`~torchrl_rssm.recipes.trainer.Trainer`) owns everything that is not the
algorithm: environments, the TorchRL collector, replay, the update loop and its NaN policy,
test episodes, logging and checkpoints. An agent owns its networks and optimisers and
answers four things:

* ``policy``: the acting ``TensorDictModule`` (reads the environment's observation and the
  recurrent entries its ``make_tensordict_primer()`` adds; writes ``"action"``). The core runs
  it under ``ExplorationType.RANDOM`` while collecting and ``DETERMINISTIC`` in test episodes.
* ``update(batch)``: one gradient step of everything the agent trains on one replay batch
  ``[B, L]`` (dequantised observations, ``is_init`` set at every chunk start, no recorded
  latents). Returns detached scalar tensors (``loss_*`` terms are logged under ``loss/``,
  the rest under ``model/``); no ``.item()`` inside, so the core syncs once per block.
  Raise :class:`~torchrl_rssm.objectives.NonFiniteInputError` (before any parameter
  changes) to have the core apply its NaN policy (skip and count, or stop).
* ``state_dict()`` / ``load_state_dict()``: models and optimisers (the core adds counters,
  RNG states, the replay buffer and the config).
* ``log_predictions(batch, logger, step)``: optional pictures (the default draws the world
  model's reconstructions and open-loop predictions).

An agent class is built as ``AgentClass(cfg, env, device)`` (``env`` is the training
environment, for its specs); the core then appends ``agent.policy.make_tensordict_primer()``
to every environment it makes.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase

from ..modules import pixels_to_model

__all__ = ["Agent", "build_world_model_and_loss", "log_world_model_predictions", "open_loop_prediction"]


class Agent(ABC):
    """Base class of the agents the trainer core runs.

    Subclasses set ``policy`` and ``world_model`` in ``__init__(cfg, env, device)`` and
    implement :meth:`update`, :meth:`state_dict` and :meth:`load_state_dict`.

    Examples:
        >>> from torchrl_rssm.recipes import preset
        >>> from torchrl_rssm.recipes.planet import PlaNetAgent
        >>> from torchrl_rssm.envs import make_env
        >>> cfg = preset("tiny")
        >>> env = make_env(cfg.env, from_pixels=False, max_episode_steps=5)
        >>> agent = PlaNetAgent(cfg, env, torch.device("cpu"))
        >>> isinstance(agent, Agent), sorted(agent.state_dict())
        (True, ['optimizer', 'world_model'])
    """

    #: name in logs and on the progress bar
    name: str = "agent"
    #: the acting module (with ``make_tensordict_primer()``)
    policy: TensorDictModuleBase
    #: the RSSM world model (``encoder``, ``decoder``, ``rollout``) the default pictures use
    world_model: torch.nn.Module
    #: the observation entry the model reads (``"pixels"`` or ``"observation"``)
    obs_key: str = "observation"

    @abstractmethod
    def update(self, batch: TensorDictBase) -> dict[str, torch.Tensor]:
        """One gradient step on a ``[B, L]`` replay batch; detached scalar metrics."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Models and optimisers."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what :meth:`state_dict` returned."""

    def make_tensordict_primer(self):
        """The primer every environment needs for ``policy`` (its recurrent entries)."""
        return self.policy.make_tensordict_primer()

    @torch.no_grad()
    def log_predictions(self, batch: TensorDictBase, logger, step: int) -> None:
        """Pictures for TensorBoard from a replay batch (default: the world model's)."""
        log_world_model_predictions(self.world_model, self.obs_key, batch, logger, step)


def build_world_model_and_loss(cfg, env, device: torch.device):
    """``(obs_key, world_model, RSSMLoss)`` from the run configuration's world-model and loss fields
    (the part every agent shares: PlaNet trains only this, Dreamer trains an actor and value on top)."""
    from ..modules import make_world_model
    from ..objectives import RSSMLoss

    obs_key = "pixels" if cfg.from_pixels else "observation"
    world_model = make_world_model(
        env.observation_spec, env.action_spec, obs_key=obs_key, state_dim=cfg.state_dim,
        belief_dim=cfg.belief_dim, hidden_dim=cfg.hidden_dim, embed_dim=cfg.embed_dim,
        channels=cfg.conv_channels, min_std=cfg.min_std, compile_step=cfg.compile, device=device,
    )
    loss = RSSMLoss(world_model, free_nats=cfg.free_nats, kl_balance=cfg.kl_balance,
                    overshooting_distance=cfg.overshooting_distance, overshooting_weight=cfg.overshooting_weight,
                    lambda_reward=cfg.lambda_reward)
    return obs_key, world_model, loss


@torch.no_grad()
def open_loop_prediction(world_model, obs_key: str, batch: TensorDictBase,
                         context: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(target, prediction, reconstruction)`` in the model's range for a ``[B, T]`` replay batch.

    The first ``context`` steps are filtered with the posterior (each chunk's first observation
    filtered, as in training) and decoded (``reconstruction``, ``[B, context, ...]``); the rest is
    imagined open loop from the recorded actions. ``prediction`` is both, ``[B, T, ...]``.
    """
    wm, rollout = world_model, world_model.rollout
    target = pixels_to_model(batch.get(("next", obs_key)))
    embedding = wm.encoder(batch.get(("next", obs_key)))
    actions = batch.get("action")
    context = min(context, actions.shape[1] - 1)
    is_init = batch.get("is_init", None)
    root = batch.get(obs_key, None)
    filtered = rollout.observe(embedding[:, :context], actions[:, :context],
                               is_init=None if is_init is None else is_init[:, :context],
                               init_embedding=None if root is None else wm.encoder(root[:, :context]))
    reco = wm.decoder(filtered["state"], filtered["belief"])
    start = {"state": filtered["state"][:, -1], "belief": filtered["belief"][:, -1]}
    imagined = rollout.imagine(start, action=actions[:, context:])
    return target, torch.cat([reco, wm.decoder(imagined["state"], imagined["belief"])], 1), reco


@torch.no_grad()
def log_world_model_predictions(world_model, obs_key: str, batch: TensorDictBase, logger, step: int,
                                context: int = 5, sequences: int = 4) -> None:
    """Reconstructions beside observations, and open-loop predictions beside the truth."""
    target, prediction, reco = open_loop_prediction(world_model, obs_key, batch[:sequences], context)
    if target.ndim == 5:  # pixels [B, T, C, H, W]
        logger.log_images("model/reconstruction", torch.cat([target[:, 0], reco[:, 0]], -1), step=step)
        video = torch.cat([target[0], prediction[0]], -1)  # truth | model, side by side
        logger.log_video("model/open_loop_prediction", video, step=step)
    else:  # vectors [B, T, O]: a heat map of truth over prediction, time along x
        truth, pred = target[0].T, prediction[0].T
        lo, hi = truth.min(), truth.max()
        image = torch.cat([truth, torch.full_like(truth[:1], hi), pred], 0)
        image = ((image - lo) / (hi - lo + 1e-6)).clamp(0, 1)
        image = image.repeat_interleave(6, 0).repeat_interleave(6, 1)
        logger.log_images("model/open_loop_prediction", image[None, None].expand(1, 3, *image.shape), step=step)
