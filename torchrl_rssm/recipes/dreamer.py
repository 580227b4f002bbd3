"""Dreamer on the trainer core: a world model, an actor and a value model, three optimisers.

Only what is Dreamer's lives here (:class:`DreamerAgent`); the loop, replay, tests,
checkpoints and resume are the core's (:mod:`torchrl_rssm.recipes.trainer`), shared with
PlaNet. One update on a replay batch ``[B, L]`` (Hafner et al. 2020, algorithm 1):

1. world model: :class:`~torchrl_rssm.objectives.RSSMLoss` (the same ELBO as PlaNet's);
2. actor: :class:`~torchrl_rssm.objectives.DreamerActorLoss` imagines ``imagination_horizon``
   steps from every posterior latent of the batch (``B x L`` starts, detached) with the actor
   in the loop and maximises the discounted lambda-returns (gradients through the dynamics,
   only the actor's parameters updated);
3. value: :class:`~torchrl_rssm.objectives.DreamerValueLoss` regresses the value of the
   imagined states on those (detached) returns.

Acting: :class:`~torchrl_rssm.policies.DreamerPolicy` (the same belief filter as PlaNet's,
then the actor; a sample plus N(0, 0.3) noise while collecting, the mode in test episodes).
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
from tensordict import TensorDictBase
from torch.distributions import Categorical, Normal

from ..modules import make_dreamer_actor, make_value_model
from ..objectives import DreamerActorLoss, DreamerValueLoss, NonFiniteInputError
from ..planners.action_space import ActionSpace
from ..policies import DreamerPolicy
from .agent import Agent, build_world_model_and_loss, clip_gradients
from .config import Imagination, Returns, RunConfig

__all__ = ["DreamerAgent"]


class DreamerAgent(Agent):
    """Dreamer: the RSSM world model, an actor and a value learned on imagined trajectories.

    Three Adam optimisers (``model_lr`` for the model, ``actor_lr``, ``value_lr``), each with its
    gradient norm clipped at ``grad_clip``. Logged per update: the three losses, the
    imagined lambda-return (``behaviour/imagined_return``), the entropy of the actor's
    Gaussian before the tanh (``behaviour/action_entropy``; a categorical's entropy for
    one-hot actions) and the gradient norm of each network (``grad_norm/...``).

    Args:
        cfg: the run configuration (its ``WorldModel``, ``ModelLoss``, ``Training`` and ``Dreamer``
            sections; ``Imagination`` feeds the actor loss, ``Returns`` its value estimator).
        env: the training environment (its observation and action specs).
        device: where the models live.

    Examples:
        >>> from torchrl_rssm.envs import make_env
        >>> from torchrl_rssm.recipes import preset
        >>> cfg = preset("dreamer-tiny")
        >>> env = make_env(cfg.env, from_pixels=False, max_episode_steps=10)
        >>> agent = DreamerAgent(cfg, env, torch.device("cpu"))
        >>> env.append_transform(agent.make_tensordict_primer())  # doctest: +ELLIPSIS
        TransformedEnv(...)
        >>> batch = env.rollout(8, agent.policy).unsqueeze(0)
        >>> sorted(k for k in agent.update(batch) if k.startswith("loss_"))
        ['loss_actor', 'loss_model_kl', 'loss_model_reco', 'loss_model_reward', 'loss_value']
    """

    name = "Dreamer"

    def __init__(self, cfg: RunConfig, env, device: torch.device):
        if ActionSpace(env.action_spec).discrete:
            raise ValueError(
                f"algo='dreamer': env={cfg.env!r} has discrete actions ({type(env.action_spec).__name__}), and Dreamer "
                "acts with a tanh-Gaussian actor over continuous actions (as in the paper). Use --algo dreamerv3 (a "
                "one-hot actor) or --algo planet (CEM over one-hot actions).")
        self.cfg = cfg
        self.obs_key, self.world_model, self.model_loss = build_world_model_and_loss(cfg, env, device)
        self.actor = make_dreamer_actor(env.action_spec, cfg.state_dim, cfg.belief_dim,
                                        num_cells=cfg.actor_hidden_dim, device=device)
        self.value = make_value_model(cfg.state_dim, cfg.belief_dim, hidden_dim=cfg.value_hidden_dim, device=device)
        self.actor_loss = DreamerActorLoss(self.actor, self.value, self.world_model,
                                           **asdict(cfg.section(Imagination)))
        self.actor_loss.make_value_estimator(**asdict(cfg.section(Returns)))
        self.value_loss = DreamerValueLoss(self.value, gamma=cfg.gamma, time_reduction=cfg.time_reduction)
        self._networks = {"model": self.world_model, "actor": self.actor, "value": self.value}
        lrs = {"model": cfg.model_lr, "actor": cfg.actor_lr, "value": cfg.value_lr}
        self.optimizers = {name: torch.optim.Adam(net.parameters(), lr=lrs[name], eps=cfg.adam_eps)
                           for name, net in self._networks.items()}
        self._params = {name: list(net.parameters()) for name, net in self._networks.items()}
        self.policy = DreamerPolicy(self.world_model, self.actor, env.action_spec,
                                    exploration_noise=cfg.exploration_noise)

    def update(self, batch: TensorDictBase) -> dict[str, torch.Tensor]:
        """One step of each optimiser on a ``[B, L]`` batch (model, then actor and value on its latents)."""
        # Every loss is computed before any step, so a NonFiniteInputError (input or imagined
        # returns) leaves all parameters unchanged for the core's NaN policy.
        model_losses, model_out = self.model_loss.compute(batch)
        model_total = sum(v for k, v in model_losses.items() if k.startswith("loss_"))
        actor_losses, imagined = self.actor_loss(model_out)  # starts: ("next", state/belief), detached
        value_losses, _ = self.value_loss(imagined)
        totals = {"model": model_total, "actor": actor_losses["loss_actor"], "value": value_losses["loss_value"]}
        out: dict[str, torch.Tensor] = {}
        for name, optimizer in self.optimizers.items():
            optimizer.zero_grad(set_to_none=True)
        for name, total in totals.items():  # three separate graphs (the actor loss holds the model out)
            total.backward()
        for name in self.optimizers:
            # under torchrun: averaged over the ranks first (process_group None: one process)
            out[f"grad_norm/{name}"] = clip_gradients(self._params[name], self.cfg.grad_clip, self.process_group)
        # finite losses can still give inf/NaN gradients: check before any step (one host sync), so a
        # skipped update leaves every parameter as it was
        if not bool(torch.isfinite(torch.stack([out[f"grad_norm/{n}"] for n in self.optimizers])).all()):
            raise NonFiniteInputError("DreamerAgent.update: non-finite gradients (NaN or inf) in "
                                      + ", ".join(n for n in self.optimizers
                                                  if not torch.isfinite(out[f"grad_norm/{n}"])) + ".")
        for optimizer in self.optimizers.values():
            optimizer.step()
        out.update({k: v.detach() for k, v in model_losses.items()})
        out["loss_actor"] = totals["actor"].detach()
        out["loss_value"] = totals["value"].detach()
        out["loss"] = model_total.detach()
        out["behaviour/imagined_return"] = imagined.get("lambda_target").mean()
        out["behaviour/action_entropy"] = self._action_entropy(model_out)
        return out

    @torch.no_grad()
    def _action_entropy(self, model_out: TensorDictBase) -> torch.Tensor:
        """Mean entropy of the actor's distribution at the batch's posterior latents (pre-tanh Gaussian)."""
        state, belief = model_out.get(("next", "state")), model_out.get(("next", "belief"))
        params = self.actor.module[0].module(state, belief)  # the network: (loc, scale) or logits
        if isinstance(params, tuple):
            loc, scale = params
            return Normal(loc, scale).entropy().sum(-1).mean()
        return Categorical(logits=params).entropy().mean()

    def networks(self) -> dict[str, torch.nn.Module]:
        return dict(self._networks)

    def state_dict(self) -> dict[str, Any]:
        out = {"world_model": self.world_model.state_dict(), "actor": self.actor.state_dict(),
               "value": self.value.state_dict()}
        out.update({f"optimizer_{name}": opt.state_dict() for name, opt in self.optimizers.items()})
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.world_model.load_state_dict(state["world_model"])
        self.actor.load_state_dict(state["actor"])
        self.value.load_state_dict(state["value"])
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[f"optimizer_{name}"])
