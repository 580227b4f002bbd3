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
* ``networks()``: the trained modules by name (the default: ``world_model``); under
  ``torchrun`` the core copies rank 0's weights to every rank from them.

Under ``torchrun`` the core sets the agent's ``process_group``, and the agent averages its
gradients over it by clipping them with :func:`clip_gradients` (all-reduce, then clip): one
gradient-averaging path for every agent.

An agent class is built as ``AgentClass(cfg, env, device)`` (``env`` is the training
environment, for its specs); the core then appends ``agent.policy.make_tensordict_primer()``
to every environment it makes.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase

from ..modules import make_world_model, pixels_to_model
from ..objectives import RSSMLoss
from .config import ModelLoss, WorldModel
from .distributed import average_gradients

__all__ = ["Agent", "build_world_model_and_loss", "clip_gradients", "log_world_model_predictions",
           "open_loop_prediction"]


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
    #: set by the trainer under ``torchrun``: gradients are averaged over it (:func:`clip_gradients`)
    process_group: Any = None
    #: whether replayed ``uint8`` pixels are dequantised to floats in ``[-0.5, 0.5)`` (else kept ``uint8``)
    dequantize_pixels: bool = True
    #: the action repeat on DMC tasks when the run sets none (``None``: the PlaNet paper's per domain)
    dmc_action_repeat: int | None = None

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

    def networks(self) -> dict[str, torch.nn.Module]:
        """The trained modules by name (what ``torchrun`` ranks must hold alike)."""
        return {"world_model": self.world_model}

    @torch.no_grad()
    def log_predictions(self, batch: TensorDictBase, logger, step: int) -> None:
        """Pictures for TensorBoard from a replay batch (default: the world model's)."""
        log_world_model_predictions(self.world_model, self.obs_key, batch, logger, step)


def clip_gradients(params: list[torch.Tensor], max_norm: float, group: Any = None) -> torch.Tensor:
    """Averages the gradients over ``group``'s ranks (the agent's ``process_group``; ``None``: one
    process, nothing to average), then clips their norm.

    Every agent clips through this function, so every agent averages its gradients the same way.
    Returns the total norm before clipping (as ``torch.nn.utils.clip_grad_norm_``).
    """
    average_gradients(params, group)
    return torch.nn.utils.clip_grad_norm_(params, max_norm)


def build_world_model_and_loss(cfg, env, device: torch.device):
    """``(obs_key, world_model, RSSMLoss)`` from the run configuration's :class:`WorldModel` and
    :class:`ModelLoss` sections (the part every agent shares: PlaNet trains only this, Dreamer
    trains an actor and value on top)."""
    obs_key = "pixels" if cfg.from_pixels else "observation"
    world_model = make_world_model(env.observation_spec, env.action_spec, obs_key=obs_key, device=device,
                                   **asdict(cfg.section(WorldModel)))
    loss = RSSMLoss(world_model, **asdict(cfg.section(ModelLoss)))
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
    else:  # vectors [B, T, O]: one labelled line panel per observation entry
        image = plot_open_loop(target[0], prediction[0], context)
        logger.log_images("model/open_loop_prediction", image[None], step=step)


def plot_open_loop(truth: torch.Tensor, prediction: torch.Tensor, context: int, max_panels: int = 8) -> torch.Tensor:
    """A labelled ``[3, H, W]`` uint8 plot of vector observations ``[T, O]``: truth against the model.

    One panel per observation entry (the first ``max_panels``): the truth in white, the model in
    orange (filtered over the first ``context`` steps, then open loop), a grey line where the
    open-loop prediction starts.

    Examples:
        >>> plot_open_loop(torch.zeros(10, 3), torch.ones(10, 3), context=5).shape
        torch.Size([3, 230, 320])
    """
    from PIL import Image, ImageDraw

    truth, prediction = truth.detach().float().cpu(), prediction.detach().float().cpu()
    steps, entries = truth.shape
    panels = min(entries, max_panels)
    width, panel_h, top = 320, 70, 20
    left, right = 52, 8
    image = Image.new("RGB", (width, top + panels * panel_h), (24, 24, 24))
    draw = ImageDraw.Draw(image)
    draw.text((4, 4), "truth", fill=(235, 235, 235))
    draw.text((44, 4), "model", fill=(255, 150, 40))
    draw.text((90, 4), f"| filtered {context} steps, then open loop", fill=(150, 150, 150))

    def x_of(t: float) -> float:
        return left + (width - left - right) * t / max(steps - 1, 1)

    for k in range(panels):
        y0 = top + k * panel_h
        both = torch.cat([truth[:, k], prediction[:, k]])
        lo, hi = float(both.min()), float(both.max())
        span = hi - lo if hi - lo > 1e-6 else 1.0

        def y_of(v: float) -> float:
            return y0 + panel_h - 8 - (panel_h - 16) * (v - lo) / span  # noqa: B023 -- this panel's range

        draw.rectangle([left, y0 + 4, width - right, y0 + panel_h - 4], outline=(70, 70, 70))
        draw.line([(x_of(context - 0.5), y0 + 4), (x_of(context - 0.5), y0 + panel_h - 4)], fill=(110, 110, 110))
        for series, colour in ((truth[:, k], (235, 235, 235)), (prediction[:, k], (255, 150, 40))):
            draw.line([(x_of(t), y_of(float(v))) for t, v in enumerate(series)], fill=colour, width=1)
        draw.text((4, y0 + panel_h // 2 - 6), f"obs[{k}]", fill=(200, 200, 200))
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()
