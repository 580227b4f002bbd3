"""PlaNet on TorchRL parts: seed episodes, then loops of C model updates and one planned episode.

TorchRL moves all the data: ``make_env`` (TorchRL env + transforms), a TorchRL ``Collector``
driving our planning policy, a ``TensorDictReplayBuffer`` with a ``SliceSampler``,
``RSSMLoss`` (a ``LossModule``) and TorchRL's ``TensorboardLogger``. One ``device`` moves
the models, the replay storage and the planner.

Checkpoints (models, optimiser, replay buffer, counters, RNG state, config) are written
every ``checkpoint_every`` episodes and at exit; ``resume=True`` continues from the last one
and refuses a checkpoint written with a different configuration.
"""
from __future__ import annotations

import functools
import json
import random
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from tensordict import TensorDictBase
from torchrl.collectors import Collector
from torchrl.envs import SerialEnv
from torchrl.envs.utils import ExplorationType, set_exploration_type
from tqdm import tqdm

from ..data import load_replay_buffer, make_replay_buffer, save_replay_buffer
from ..envs import dequantize, make_env
from ..modules import make_world_model, pixels_to_model
from ..objectives import NonFiniteInputError, RSSMLoss
from ..planners import CEMPlanner, MPPIPlanner, PlaNetPolicy
from .config import PlaNetConfig, from_dict
from .logging import RSSMTensorboardLogger

CHECKPOINT_DIR = "checkpoint"


class ConfigMismatchError(ValueError):
    """A checkpoint was written with a different configuration."""


def resolve_device(device: str) -> torch.device:
    """Parses ``device`` and checks that it exists on this machine (clear error otherwise)."""
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device={device!r} is not a valid torch device (use 'cpu', 'cuda' or 'cuda:N').") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r}: CUDA is not available on this machine "
                             f"(torch {torch.__version__}); use device='cpu'.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s) present.")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={device!r}: MPS is not available on this machine; use device='cpu'.")
    return dev


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class PlaNetTrainer:
    """Builds every part of a PlaNet run from a :class:`PlaNetConfig` and trains it.

    Examples:
        >>> from torchrl_rssm.recipes import preset, PlaNetTrainer
        >>> cfg = preset("tiny")            # doctest: +SKIP
        >>> PlaNetTrainer(cfg).train()      # doctest: +SKIP
    """

    def __init__(self, cfg: PlaNetConfig, resume: bool = False):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.logdir = Path(cfg.logdir)
        self.checkpoint_dir = self.logdir / CHECKPOINT_DIR
        if resume:
            self._check_config_matches_checkpoint()
        elif (self.checkpoint_dir / "state.pt").exists():
            raise FileExistsError(
                f"{self.checkpoint_dir} holds a checkpoint: pass resume=True (--resume) to continue it, "
                "or choose another logdir."
            )
        _seed_everything(cfg.seed)
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)

        self.env = self._make_env(seed=cfg.seed)
        self.obs_key = "pixels" if cfg.from_pixels else "observation"
        self.world_model = make_world_model(
            self.env.observation_spec, self.env.action_spec, obs_key=self.obs_key,
            state_dim=cfg.state_dim, belief_dim=cfg.belief_dim, hidden_dim=cfg.hidden_dim,
            embed_dim=cfg.embed_dim, min_std=cfg.min_std, compile_step=cfg.compile, device=self.device,
        )
        self.loss_module = RSSMLoss(
            self.world_model, free_nats=cfg.free_nats, kl_balance=cfg.kl_balance,
            overshooting_distance=cfg.overshooting_distance, overshooting_weight=cfg.overshooting_weight,
            lambda_reward=cfg.reward_weight,
        )
        self.optimizer = torch.optim.Adam(self.world_model.parameters(), lr=cfg.lr, eps=cfg.adam_eps)
        # acting sees the same dequantised pixels as training (the replay buffer applies it on sampling)
        observation_transform = functools.partial(dequantize, bits=cfg.bit_depth) if cfg.from_pixels else None
        self.policy = PlaNetPolicy(self.world_model, self._make_planner(), self.env.action_spec,
                                   exploration_noise=cfg.exploration_noise,
                                   observation_transform=observation_transform)
        self.env.append_transform(self.policy.make_tensordict_primer())
        self.episode_steps = int(self.env.max_episode_steps)
        self.action_repeat = int(self.env.action_repeat)
        self.buffer = make_replay_buffer(
            capacity=cfg.buffer_capacity, batch_size=cfg.batch_size, chunk_length=cfg.chunk_length,
            device=self.device, memmap_dir=str(self.logdir / "replay_memmap") if cfg.buffer_on_disk else None,
            dequantize_bits=cfg.bit_depth if cfg.from_pixels else None,
            # the model reads ("next", pixels) only: storing the root copy too would double memory
            exclude_keys=["pixels"] if cfg.from_pixels else [],
        )
        self.counters = dict(episodes=0, env_steps=0, updates=0, skipped_updates=0, dropped_episodes=0)
        self.logger = RSSMTensorboardLogger(exp_name="", log_dir=str(self.logdir))
        self.last_test_return = float("nan")
        if resume:
            self.load_checkpoint()
        else:
            self.logger.log_hparams(self.cfg.to_dict())
            self.logdir.mkdir(parents=True, exist_ok=True)
            (self.logdir / "config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2))

    # ------------------------------------------------------------------ parts
    def _make_env(self, seed: int, primers=None, from_pixels: bool | None = None, pixels_only: bool = True):
        cfg = self.cfg
        return make_env(cfg.env, from_pixels=cfg.from_pixels if from_pixels is None else from_pixels,
                        action_repeat=cfg.action_repeat, bit_depth=cfg.bit_depth,
                        max_episode_steps=cfg.max_episode_steps, seed=seed, primers=primers,
                        pixels_only=pixels_only)

    def _make_planner(self):
        cfg = self.cfg
        kw = dict(action_spec=self.env.action_spec, planning_horizon=cfg.horizon, optim_steps=cfg.optim_steps,
                  num_candidates=cfg.candidates, top_k=cfg.top_k)
        if cfg.planner == "cem":
            return CEMPlanner(self.world_model, **kw)
        if cfg.planner == "mppi":
            return MPPIPlanner(self.world_model, temperature=cfg.mppi_temperature, **kw)
        raise ValueError(f"planner={cfg.planner!r}: expected 'cem' or 'mppi'.")

    def make_test_env(self, num_envs: int, from_pixels: bool | None = None, pixels_only: bool = True):
        """``num_envs`` copies of the task in one batch, seeded apart from the training env."""
        seed = self.cfg.seed + 10_000 + self.counters["episodes"]
        def make():  # a transform has one parent: every sub-env gets its own primer
            return self._make_env(seed=seed, from_pixels=from_pixels, pixels_only=pixels_only,
                                  primers=self.policy.make_tensordict_primer())

        env = SerialEnv(num_envs, make) if num_envs > 1 else make()
        env.set_seed(seed)
        return env

    # ------------------------------------------------------------- the loop
    def train(self) -> dict:
        """Runs until ``seed_episodes + episodes`` episodes have been collected."""
        cfg = self.cfg
        total = cfg.seed_episodes + cfg.episodes
        seed_frames = max(0, cfg.seed_episodes - self.counters["episodes"]) * self.episode_steps
        collector = Collector(
            self.env, self.policy, frames_per_batch=self.episode_steps, total_frames=-1,
            init_random_frames=seed_frames, policy_device=self.device, env_device="cpu",
            storing_device=self.device, exploration_type=ExplorationType.RANDOM,
        )
        self.env.set_seed(cfg.seed + self.counters["episodes"])
        bar = tqdm(total=total, initial=self.counters["episodes"], disable=not cfg.progress,
                   desc="PlaNet", unit="episode", dynamic_ncols=True)
        try:
            for episode in collector:
                if self.counters["episodes"] >= total:
                    break
                train_return = self._store_episode(episode)
                self.counters["episodes"] += 1
                episodes = self.counters["episodes"]
                metrics = {}
                if episodes >= cfg.seed_episodes and episodes < total:
                    metrics = self.update_model(cfg.updates_per_episode)
                if cfg.test_every and (episodes % cfg.test_every == 0 or episodes == total):
                    self.last_test_return = self.test(cfg.test_episodes)
                if cfg.video_every and episodes % cfg.video_every == 0 and len(self.buffer):
                    self.log_predictions()
                if cfg.checkpoint_every and episodes % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
                bar.update(1)
                bar.set_postfix(ret=f"{train_return:.1f}", test=f"{self.last_test_return:.1f}",
                                loss=f"{metrics.get('loss', float('nan')):.2f}")
                if episodes >= total:
                    break
        finally:
            collector.shutdown()
            bar.close()
            self.save_checkpoint()
            self.logger.experiment.flush()
        return dict(self.counters, test_return=self.last_test_return)

    def _store_episode(self, episode: TensorDictBase) -> float:
        """Adds one collected episode to the replay buffer; drops it if it holds NaN/inf."""
        floats = [v.reshape(-1) for v in episode.values(True, True) if v.is_floating_point()]
        if not bool(torch.isfinite(torch.cat(floats)).all()):  # one sync per episode, at the boundary
            if self.cfg.nan_policy == "raise":
                raise ValueError(f"Collected episode {self.counters['episodes']} holds NaN/inf values "
                                 "(nan_policy='raise').")
            warnings.warn(f"Episode {self.counters['episodes']} holds NaN/inf values: not stored "
                          "(counted in dropped_episodes).", RuntimeWarning, stacklevel=2)
            self.counters["dropped_episodes"] += 1
            return float("nan")
        self.buffer.extend(episode.reshape(-1).to(self.device))
        steps = episode.numel()
        self.counters["env_steps"] += steps * self.action_repeat
        ret = float(episode["next", "reward"].sum())
        self.logger.log_scalar("train/episode_return", ret, step=self.counters["env_steps"])
        self.logger.log_scalar("train/episodes", self.counters["episodes"] + 1, step=self.counters["env_steps"])
        return ret

    def update_model(self, num_updates: int) -> dict[str, float]:
        """``num_updates`` gradient steps on sampled ``[B, L]`` chunks; returns mean diagnostics."""
        cfg = self.cfg
        params = list(self.world_model.parameters())
        sums: dict[str, torch.Tensor] = {}
        done = 0
        start = time.perf_counter()
        for _ in range(num_updates):
            # Chunks start from the initial latent (PlaNet): the latents recorded while acting
            # come from older parameters.
            batch = self.buffer.sample().exclude("state", "belief")
            try:
                losses = self.loss_module(batch)
            except NonFiniteInputError as err:
                if cfg.nan_policy == "raise":
                    raise
                warnings.warn(f"Update skipped: {err}", RuntimeWarning, stacklevel=2)
                self.counters["skipped_updates"] += 1
                continue
            total = sum(v for k, v in losses.items() if k.startswith("loss_"))
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            self.optimizer.step()
            self.counters["updates"] += 1
            done += 1
            for k, v in losses.items():  # accumulate on the device: no sync inside the loop
                sums[k] = sums.get(k, 0) + v.detach()
            sums["loss"] = sums.get("loss", 0) + total.detach()
        elapsed = time.perf_counter() - start
        metrics = {k: float(v) / max(done, 1) for k, v in sums.items()}
        step = self.counters["env_steps"]
        for k, v in metrics.items():
            self.logger.log_scalar(f"loss/{k}" if k.startswith("loss") else f"model/{k}", v, step=step)
        self.logger.log_scalar("perf/updates_per_s", done / max(elapsed, 1e-9), step=step)
        self.logger.log_scalar("train/updates", self.counters["updates"], step=step)
        self.logger.log_scalar("train/skipped_updates", self.counters["skipped_updates"], step=step)
        return metrics

    @torch.no_grad()
    def test(self, num_envs: int) -> float:
        """Mean return of ``num_envs`` noise-free episodes, run as one batch of environments."""
        threads = torch.get_num_threads()
        env = self.make_test_env(num_envs)
        start = time.perf_counter()
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            rollout = env.rollout(self.episode_steps, self.policy, break_when_any_done=False)
        elapsed = time.perf_counter() - start
        env.close()
        # TorchRL's batched envs reset the process's thread count when they close
        # (torchrl/envs/batched_envs.py): put ours back, or small ops slow down under load.
        torch.set_num_threads(threads)
        mean_return = float(rollout["next", "reward"].sum(-2).mean())
        step = self.counters["env_steps"]
        self.logger.log_scalar("test/return", mean_return, step=step)
        self.logger.log_scalar("perf/env_steps_per_s",
                               rollout.numel() * self.action_repeat / max(elapsed, 1e-9), step=step)
        return mean_return

    # ------------------------------------------------------------- pictures
    @torch.no_grad()
    def log_predictions(self, context: int = 5, sequences: int = 4) -> None:
        """Reconstructions beside observations, and open-loop predictions beside the truth."""
        batch = self.buffer.sample().exclude("state", "belief")[:sequences]
        wm, rollout = self.world_model, self.world_model.rollout
        target = pixels_to_model(batch.get(("next", self.obs_key)))
        embedding = wm.encoder(batch.get(("next", self.obs_key)))
        actions = batch.get("action")
        context = min(context, actions.shape[1] - 1)
        is_init = batch.get("is_init", None)
        filtered = rollout.observe(embedding[:, :context], actions[:, :context],
                                   is_init=None if is_init is None else is_init[:, :context])
        reco = wm.decoder(filtered["state"], filtered["belief"])
        start = {"state": filtered["state"][:, -1], "belief": filtered["belief"][:, -1]}
        imagined = rollout.imagine(start, action=actions[:, context:])
        prediction = torch.cat([reco, wm.decoder(imagined["state"], imagined["belief"])], 1)
        step = self.counters["env_steps"]
        if target.ndim == 5:  # pixels [B, T, C, H, W]
            self.logger.log_images("model/reconstruction", torch.cat([target[:, 0], reco[:, 0]], -1), step=step)
            video = torch.cat([target[0], prediction[0]], -1)  # truth | model, side by side
            self.logger.log_video("model/open_loop_prediction", video, step=step)
        else:  # vectors [B, T, O]: a heat map of truth over prediction, time along x
            truth, pred = target[0].T, prediction[0].T
            lo, hi = truth.min(), truth.max()
            image = torch.cat([truth, torch.full_like(truth[:1], hi), pred], 0)
            image = ((image - lo) / (hi - lo + 1e-6)).clamp(0, 1)
            image = image.repeat_interleave(6, 0).repeat_interleave(6, 1)
            self.logger.log_images("model/open_loop_prediction", image[None, None].expand(1, 3, *image.shape), step=step)

    # ----------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        return {
            "config": self.cfg.to_dict(), "world_model": self.world_model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "counters": dict(self.counters),
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
            "last_test_return": self.last_test_return,
        }

    def save_checkpoint(self) -> Path:
        """Writes the checkpoint atomically: a kill during the write leaves the previous one intact."""
        tmp = self.logdir / (CHECKPOINT_DIR + ".tmp")
        old = self.logdir / (CHECKPOINT_DIR + ".old")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        torch.save(self.state_dict(), tmp / "state.pt")
        save_replay_buffer(self.buffer, tmp / "replay")
        shutil.rmtree(old, ignore_errors=True)
        if self.checkpoint_dir.exists():
            self.checkpoint_dir.rename(old)
        tmp.rename(self.checkpoint_dir)
        shutil.rmtree(old, ignore_errors=True)
        return self.checkpoint_dir

    def _check_config_matches_checkpoint(self) -> None:
        path = self.checkpoint_dir / "state.pt"
        if not path.exists():
            old = self.logdir / (CHECKPOINT_DIR + ".old")  # killed between the two renames
            if (old / "state.pt").exists():
                old.rename(self.checkpoint_dir)
            else:
                raise FileNotFoundError(f"resume: no checkpoint at {path}.")
        saved = torch.load(path, map_location="cpu", weights_only=False)["config"]
        diff = self.cfg.mismatches(saved)
        if diff:
            lines = ", ".join(f"{k}: checkpoint={a!r}, now={b!r}" for k, (a, b) in diff.items())
            raise ConfigMismatchError(
                f"The checkpoint in {self.checkpoint_dir} was written with a different configuration ({lines}). "
                "Resume with the same settings, or start a new run in another logdir."
            )

    def load_checkpoint(self) -> None:
        state = torch.load(self.checkpoint_dir / "state.pt", map_location=self.device, weights_only=False)
        self.world_model.load_state_dict(state["world_model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.counters.update(state["counters"])
        self.last_test_return = state.get("last_test_return", float("nan"))
        rng = state["rng"]
        torch.set_rng_state(rng["torch"].cpu())
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
        self.buffer = load_replay_buffer(self.checkpoint_dir / "replay", self.buffer)


def load_trainer(checkpoint: str | Path, device: str | None = None, **overrides) -> PlaNetTrainer:
    """Rebuilds a trainer (models, buffer, counters) from a checkpoint directory or its run directory."""
    path = Path(checkpoint)
    if path.name != CHECKPOINT_DIR and (path / CHECKPOINT_DIR).exists():
        path = path / CHECKPOINT_DIR
    if not (path / "state.pt").exists():
        raise FileNotFoundError(f"checkpoint={str(checkpoint)!r}: no state.pt found (expected <logdir>/checkpoint).")
    saved = torch.load(path / "state.pt", map_location="cpu", weights_only=False)["config"]
    cfg = from_dict(saved)
    cfg.logdir = str(path.parent)
    if device is not None:
        cfg.device = device
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return PlaNetTrainer(cfg, resume=True)

