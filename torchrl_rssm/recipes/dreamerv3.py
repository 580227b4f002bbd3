"""DreamerV3 on the trainer core: a categorical world model, an actor and a two-hot critic with a slow critic.

Only what is DreamerV3's lives here (:class:`DreamerV3Agent`); the loop, replay, tests,
checkpoints and resume are the core's (:mod:`torchrl_rssm.recipes.trainer`). One update on a
replay batch ``[B, L]`` (Hafner et al. 2023):

1. world model: :class:`~torchrl_rssm.objectives.DreamerV3ModelLoss` with the paper's settings
   (dynamics / representation KL 0.5 / 0.1 with 1 free nat over the summed categoricals, symlog
   reconstruction of vectors, two-hot reward, continuation learned from ``terminated`` only);
2. actor: :class:`~torchrl_rssm.objectives.DreamerV3ActorLoss` imagines ``imagination_steps``
   from every posterior latent of the batch; returns normalised by the EMA of their 5th-95th
   percentile range; entropy bonus; gradients through the model for continuous actions,
   REINFORCE for discrete ones (the paper's choice per action type);
3. critic: :class:`~torchrl_rssm.objectives.DreamerV3ValueLoss`, two-hot on 255 bins, regularised
   towards a slow copy updated by an EMA (rate ``slow_critic_tau``) after every update.

Three Adam optimisers (the paper's: ``model_lr`` with clip ``grad_clip`` for the model,
``actor_critic_lr`` with clip ``actor_critic_grad_clip`` for actor and critic), or with
``optimizer="laprop"`` one TorchRL ``DreamerV3Optimizer`` over all three (the current reference
code's: LaProp with adaptive gradient clipping ``agc`` and ``warmup_steps`` of warm-up, at ``model_lr``). Acting:
:class:`~torchrl_rssm.policies.DreamerV3Policy` (the categorical belief filter, then a sample
of the actor while collecting, its mode in test episodes).

Replayed pixels stay ``uint8`` (DreamerV3's encoder and loss scale them by 1/255), and on DMC
tasks without an explicit ``action_repeat`` the run uses 2 (DreamerV3's protocol).
"""
from __future__ import annotations

from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModule
from torchrl.envs.model_based.dreamer import DreamerEnv
from torchrl.modules import WorldModelWrapper
from torchrl.objectives import SoftUpdate

from ..modules import (DreamerV3BoundedNormalActor, DreamerV3DiscreteActor, DreamerV3ValueHead,
                       make_world_model_v3)
from ..objectives import NonFiniteInputError
from ..objectives.dreamer_v3 import DreamerV3ActorLoss, DreamerV3ModelLoss, DreamerV3ValueLoss
from ..planners.action_space import ActionSpace
from ..policies import DreamerV3Policy
from .agent import Agent, clip_gradients, plot_open_loop
from .config import RunConfig

__all__ = ["DreamerV3Agent"]

_LATENT = ["state", "belief"]


class DreamerV3Agent(Agent):
    """DreamerV3: categorical RSSM world model, actor and two-hot critic learned in imagination.

    Logged per update: every model loss term, ``loss_actor``, ``loss_critic``; the return
    normalisation's EMA percentiles and scale (``behaviour/return_p5``, ``behaviour/return_p95``,
    ``behaviour/return_scale``), the mean imagined lambda-return (``behaviour/imagined_return``),
    the actor's entropy on the imagined states (``behaviour/action_entropy``) and the gradient
    norm of each network (``grad_norm/model``, ``grad_norm/actor``, ``grad_norm/critic``).

    Args:
        cfg: the run configuration (``WorldModel``'s ``belief_dim``, ``hidden_dim``, ``channels``;
            ``Training``'s ``model_lr``, ``adam_eps``, ``grad_clip``; the ``DreamerV3`` section).
        env: the training environment (its observation and action specs).
        device: where the models live.

    Examples:
        >>> from torchrl_rssm.envs import make_env
        >>> from torchrl_rssm.recipes import preset
        >>> cfg = preset("dreamerv3-tiny")
        >>> env = make_env(cfg.env, from_pixels=False, max_episode_steps=10)
        >>> agent = DreamerV3Agent(cfg, env, torch.device("cpu"))
        >>> env.append_transform(agent.make_tensordict_primer())  # doctest: +ELLIPSIS
        TransformedEnv(...)
        >>> batch = env.rollout(8, agent.policy).unsqueeze(0)
        >>> sorted(k for k in agent.update(batch) if k.startswith("loss_"))  # doctest: +NORMALIZE_WHITESPACE
        ['loss_actor', 'loss_critic', 'loss_model_continue', 'loss_model_dynamic', 'loss_model_reco',
         'loss_model_representation', 'loss_model_reward']
    """

    name = "DreamerV3"
    dequantize_pixels = False
    dmc_action_repeat = 2

    def __init__(self, cfg: RunConfig, env, device: torch.device):
        self.cfg = cfg
        self.device = torch.device(device)
        self.obs_key = "pixels" if cfg.from_pixels else "observation"
        self.space = ActionSpace(env.action_spec)
        self.world_model = make_world_model_v3(
            env.observation_spec, self.space.dim, obs_key=self.obs_key, belief_dim=cfg.belief_dim,
            hidden_dim=cfg.hidden_dim, num_categoricals=cfg.num_categoricals, num_classes=cfg.num_classes,
            unimix=cfg.unimix, mlp_layers=cfg.mlp_layers, channels=cfg.channels, device=device)
        wm, rollout = self.world_model, self.world_model.rollout
        latent = rollout.state_dim + rollout.belief_dim
        if self.space.discrete:
            self.actor = DreamerV3DiscreteActor(latent, self.space.dim, depth=cfg.mlp_layers, num_cells=cfg.hidden_dim,
                                                unimix=cfg.unimix, device=device)
        else:
            self.actor = DreamerV3BoundedNormalActor(latent, env.action_spec, depth=cfg.mlp_layers,
                                                     num_cells=cfg.hidden_dim, device=device)
        self.critic = TensorDictModule(DreamerV3ValueHead(latent, depth=cfg.mlp_layers, num_cells=cfg.hidden_dim,
                                                          device=device),
                                       in_keys=_LATENT, out_keys=["state_value_logits", "state_value"])
        # imagination: the world model's own prior and reward head, with root keys
        imagination = DreamerEnv(
            WorldModelWrapper(TensorDictModule(rollout.prior, in_keys=[*_LATENT, "action"], out_keys=["_", *_LATENT]),
                              TensorDictModule(wm.reward_head, in_keys=_LATENT, out_keys=["reward_logits", "reward"])),
            prior_shape=(rollout.state_dim,), belief_shape=(rollout.belief_dim,))
        continuation = TensorDictModule(wm.continuation_head, in_keys=_LATENT, out_keys=["continue_pred", "continuation"])
        self.model_loss = DreamerV3ModelLoss.from_paper(wm, unimix=cfg.unimix, reco_symlog=not cfg.from_pixels,
                                                        continue_target_scale=1.0 - 1.0 / cfg.continuation_horizon,
                                                        detach_output=not cfg.replay_value_weight)
        self.model_loss.set_keys(pixels=self.obs_key, reco_pixels=wm.reco_key)
        self.actor_loss = DreamerV3ActorLoss.from_paper(
            self.actor, self.critic, imagination, continuation_model=continuation,
            imagination_horizon=cfg.imagination_steps, entropy_bonus=cfg.entropy_bonus,
            use_reinforce=self.space.discrete or cfg.actor_gradient == "reinforce")
        self.value_loss = DreamerV3ValueLoss.from_paper(self.critic, actor_loss=self.actor_loss)
        self.slow_critic = SoftUpdate(self.value_loss, tau=cfg.slow_critic_tau)
        self._networks = {"model": wm, "actor": self.actor, "critic": self.critic}
        self._params = {name: list(net.parameters()) for name, net in self._networks.items()}
        if cfg.optimizer == "laprop":
            # imported here: torchrl.trainers takes seconds to import, and only this choice needs it
            from torchrl.trainers.algorithms.dreamer_v3 import DreamerV3Optimizer

            every = [p for params in self._params.values() for p in params]
            self.optimizers = {"all": DreamerV3Optimizer(every, lr=cfg.model_lr, agc=cfg.agc,
                                                         warmup_steps=cfg.warmup_steps)}
            self._clip = dict.fromkeys(self._networks, float("inf"))  # norms only: the optimiser clips
        else:
            lrs = {"model": cfg.model_lr, "actor": cfg.actor_critic_lr, "critic": cfg.actor_critic_lr}
            self._clip = {"model": cfg.grad_clip, "actor": cfg.actor_critic_grad_clip,
                          "critic": cfg.actor_critic_grad_clip}
            self.optimizers = {name: torch.optim.Adam(self._params[name], lr=lrs[name], eps=cfg.adam_eps)
                               for name in self._networks}
        self.policy = DreamerV3Policy(wm, self.actor, env.action_spec)

    @property
    def process_group(self):
        """Set by the trainer under ``torchrun``: gradients are averaged over it, and the return
        percentiles are taken over every rank's imagined returns (one batch of ``W x B`` chunks)."""
        return self.actor_loss.process_group

    @process_group.setter
    def process_group(self, group) -> None:
        self.actor_loss.process_group = group

    # ------------------------------------------------------------------ update
    def _losses(self, batch: TensorDictBase) -> tuple[dict[str, torch.Tensor], TensorDictBase]:
        model_losses, posterior = self.model_loss(batch)
        state, belief = posterior.get(("next", "state")), posterior.get(("next", "belief"))
        starts = TensorDict({"state": state.detach().reshape(-1, state.shape[-1]),
                             "belief": belief.detach().reshape(-1, belief.shape[-1])}, [batch.numel()])
        actor_losses, imagined = self.actor_loss(starts)
        value_losses, _ = self.value_loss(imagined)
        critic_total = value_losses["loss_value"]
        if self.cfg.replay_value_weight:  # the critic on the replayed posterior states (trains the representation)
            replay = posterior.get("next").select(*_LATENT)
            replay.set("bootstrap", imagined.get("lambda_target")[:, 0, 0].reshape(batch.batch_size))
            replay.set("next", batch.get("next").select("reward", "done", "terminated"))
            replay_loss = self.value_loss.replay_value_loss(replay, horizon=self.cfg.continuation_horizon)["loss_replay_value"]
            critic_total = critic_total + self.cfg.replay_value_weight * replay_loss
        model_total = sum(v.squeeze() for v in model_losses.values())
        totals = {"model": model_total, "actor": actor_losses["loss_actor"], "critic": critic_total}
        out = {k: v.detach().squeeze() for k, v in model_losses.items()}
        out.update({
            "loss_actor": totals["actor"].detach(), "loss_critic": critic_total.detach(),
            "loss": model_total.detach(),
            "behaviour/return_p5": actor_losses["return_low"], "behaviour/return_p95": actor_losses["return_high"],
            "behaviour/return_scale": actor_losses["return_scale"],
            "behaviour/imagined_return": imagined.get("lambda_target").mean(),
            "behaviour/action_entropy": actor_losses["actor_entropy"],
            "behaviour/continuation": actor_losses["continuation_mean"],
        })
        return totals, out

    def update(self, batch: TensorDictBase) -> dict[str, torch.Tensor]:
        """One step of each optimiser on a ``[B, L]`` batch, then the slow critic's EMA step."""
        floats = [v.reshape(-1) for v in batch.values(True, True) if v.is_floating_point()]
        if floats and not bool(torch.isfinite(torch.cat(floats)).all()):
            raise NonFiniteInputError("DreamerV3Agent.update: non-finite values (NaN or inf) in the batch.")
        # the return normalisation's EMA moves inside the actor loss: put it back if the update is skipped
        retnorm = {k: v.clone() for k, v in self.actor_loss.retnorm.state_dict().items()}
        try:
            # bfloat16: the forward passes under autocast (matmuls in bf16; the two-hot, KL and return
            # arithmetic cast to float32 inside the losses); backward outside it, as torch recommends
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.autocast_dtype == "bfloat16"):
                totals, out = self._losses(batch)
            for optimizer in self.optimizers.values():
                optimizer.zero_grad(set_to_none=True)
            sum(totals.values()).backward()  # each loss reaches only its own network (the others are held out)
            for name in self._networks:  # under torchrun: averaged over the ranks first
                out[f"grad_norm/{name}"] = clip_gradients(self._params[name], self._clip[name], self.process_group)
            # one host sync: non-finite losses give non-finite gradient norms
            bad = [n for n in self._networks if not torch.isfinite(out[f"grad_norm/{n}"])]
            if bad:
                raise NonFiniteInputError("DreamerV3Agent.update: non-finite gradients (NaN or inf) in "
                                          + ", ".join(bad) + ".")
        except NonFiniteInputError:
            self.actor_loss.retnorm.load_state_dict(retnorm)
            for optimizer in self.optimizers.values():
                optimizer.zero_grad(set_to_none=True)
            raise
        for optimizer in self.optimizers.values():
            optimizer.step()
        self.slow_critic.step()
        return out

    # ------------------------------------------------------------------ state
    def networks(self) -> dict[str, torch.nn.Module]:
        return dict(self._networks)

    def state_dict(self) -> dict[str, Any]:
        out = {"world_model": self.world_model.state_dict(), "actor": self.actor.state_dict(),
               "critic": self.critic.state_dict(),
               "slow_critic": self.value_loss.target_value_model_params.state_dict(),
               "return_norm": self.actor_loss.retnorm.state_dict()}
        out.update({f"optimizer_{name}": opt.state_dict() for name, opt in self.optimizers.items()})
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.world_model.load_state_dict(state["world_model"])
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.value_loss.target_value_model_params.load_state_dict(state["slow_critic"])
        self.actor_loss.retnorm.load_state_dict(state["return_norm"])
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[f"optimizer_{name}"])

    # ------------------------------------------------------------------ pictures
    @torch.no_grad()
    def log_predictions(self, batch: TensorDictBase, logger, step: int, context: int = 5, sequences: int = 4) -> None:
        """Open-loop predictions beside the truth (filtered ``context`` steps, then imagined from the actions)."""
        batch = batch[:sequences]
        wm, rollout = self.world_model, self.world_model.rollout
        target = batch.get(("next", self.obs_key))
        actions = batch.get("action").float()
        context = min(context, actions.shape[1] - 1)
        is_init = batch.get("is_init", None)
        filtered = rollout.observe(wm.encoder(target[:, :context]), actions[:, :context],
                                   is_init=None if is_init is None else is_init[:, :context])
        start = {"state": filtered["state"][:, -1], "belief": filtered["belief"][:, -1]}
        imagined = rollout.imagine(start, action=actions[:, context:])
        prediction = torch.cat([wm.decoder(filtered["state"], filtered["belief"]),
                                wm.decoder(imagined["state"], imagined["belief"])], 1)
        if target.ndim == 5:  # pixels [B, T, C, H, W]: uint8 -> [0, 1], as the decoder's targets
            truth = target.float() / 255.0 if not target.is_floating_point() else target
            logger.log_images("model/reconstruction", torch.cat([truth[:, 0], prediction[:, 0]], -1).clamp(0, 1),
                              step=step)
            logger.log_video("model/open_loop_prediction", torch.cat([truth[0], prediction[0]], -1).clamp(0, 1),
                             step=step)
        else:
            logger.log_images("model/open_loop_prediction", plot_open_loop(target[0], prediction[0], context)[None],
                              step=step)
