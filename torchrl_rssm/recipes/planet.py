"""PlaNet on the trainer core: a world model, a planner policy and one optimiser.

Only what is PlaNet's lives here (:class:`PlaNetAgent`); the loop, replay, tests,
checkpoints and resume are the core's (:mod:`torchrl_rssm.recipes.trainer`).
``PlaNetTrainer`` and ``load_trainer`` keep their old import paths.
"""
from __future__ import annotations

import functools
from typing import Any

import torch
from tensordict import TensorDictBase

from ..envs import dequantize
from ..planners import CEMPlanner, MPPIPlanner
from ..policies import PlaNetPolicy
from .agent import Agent, build_world_model_and_loss
from .config import RunConfig
from .trainer import ConfigMismatchError, Trainer, load_trainer, resolve_device

__all__ = ["ConfigMismatchError", "PlaNetAgent", "PlaNetTrainer", "load_trainer", "resolve_device"]


class PlaNetAgent(Agent):
    """PlaNet: RSSM world model trained with :class:`RSSMLoss`, acting by planning (CEM or MPPI).

    Args:
        cfg: the run configuration (world-model, loss, optimiser and planner fields).
        env: the training environment (its observation and action specs).
        device: where the models live.

    Examples:
        >>> from torchrl_rssm.envs import make_env
        >>> from torchrl_rssm.recipes import preset
        >>> cfg = preset("tiny")
        >>> env = make_env(cfg.env, from_pixels=False, max_episode_steps=10)
        >>> agent = PlaNetAgent(cfg, env, torch.device("cpu"))
        >>> env.append_transform(agent.make_tensordict_primer())  # doctest: +ELLIPSIS
        TransformedEnv(...)
        >>> batch = env.rollout(8, agent.policy).unsqueeze(0)
        >>> sorted(k for k in agent.update(batch) if k.startswith("loss"))
        ['loss', 'loss_model_kl', 'loss_model_reco', 'loss_model_reward']
    """

    name = "PlaNet"

    def __init__(self, cfg: RunConfig, env, device: torch.device):
        self.cfg = cfg
        self.obs_key, self.world_model, self.loss_module = build_world_model_and_loss(cfg, env, device)
        self.optimizer = torch.optim.Adam(self.world_model.parameters(), lr=cfg.lr, eps=cfg.adam_eps)
        self._params = list(self.world_model.parameters())
        # acting sees the same dequantised pixels as training (the replay buffer applies it on sampling)
        observation_transform = functools.partial(dequantize, bits=cfg.bit_depth) if cfg.from_pixels else None
        self.policy = PlaNetPolicy(self.world_model, self._make_planner(env.action_spec), env.action_spec,
                                   exploration_noise=cfg.exploration_noise,
                                   observation_transform=observation_transform)

    def _make_planner(self, action_spec):
        cfg = self.cfg
        kw = dict(action_spec=action_spec, planning_horizon=cfg.planning_horizon, optim_steps=cfg.optim_steps,
                  num_candidates=cfg.num_candidates, top_k=cfg.top_k)
        if cfg.planner == "cem":
            return CEMPlanner(self.world_model, **kw)
        if cfg.planner == "mppi":
            return MPPIPlanner(self.world_model, temperature=cfg.mppi_temperature, **kw)
        raise ValueError(f"planner={cfg.planner!r}: expected 'cem' or 'mppi'.")

    def update(self, batch: TensorDictBase) -> dict[str, torch.Tensor]:
        """One Adam step of the world model on the ELBO of a ``[B, L]`` batch."""
        # Chunks start from the initial latent (PlaNet); the replay buffer stores no recorded latents.
        losses = self.loss_module(batch)  # NonFiniteInputError on NaN/inf input: the core's NaN policy
        total = sum(v for k, v in losses.items() if k.startswith("loss_"))
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(self._params, self.cfg.grad_clip)
        self.optimizer.step()
        out = {k: v.detach() for k, v in losses.items()}
        out["loss"] = total.detach()
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"world_model": self.world_model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.world_model.load_state_dict(state["world_model"])
        self.optimizer.load_state_dict(state["optimizer"])


class PlaNetTrainer(Trainer):
    """The trainer core running a :class:`PlaNetAgent` (``cfg.algo`` is not consulted).

    Examples:
        >>> from torchrl_rssm.recipes import preset, PlaNetTrainer
        >>> cfg = preset("tiny")            # doctest: +SKIP
        >>> PlaNetTrainer(cfg).train()      # doctest: +SKIP
    """

    def __init__(self, cfg: RunConfig, resume: bool = False):
        super().__init__(cfg, PlaNetAgent, resume=resume)
