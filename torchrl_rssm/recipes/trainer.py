"""The trainer core: one loop for every agent (PlaNet, Dreamer) on TorchRL parts.

The loop follows PlaNet's order: ``seed_episodes`` random episodes, then for each of the
``episodes`` agent episodes: fit (the agent's ``update`` on replay chunks), collect one
episode (policy under ``ExplorationType.RANDOM``: exploration noise on), and on their clocks
test (``DETERMINISTIC``, a batch of environments), pictures and a checkpoint. Collection
(environments, TorchRL collectors, worker checks, weight pushes, the thread count) lives in
:mod:`torchrl_rssm.recipes.collection`; what differs between agents, in the agent
(:mod:`torchrl_rssm.recipes.agent`).

Episodes shorter than ``chunk_length`` cannot be trained on (chunks never cross an episode
boundary, and are neither padded nor shortened): a task whose episode limit is below
``chunk_length`` is refused when the trainer is built, and one whose episodes end early
(e.g. CartPole's termination) once the seed episodes are in, if none is long enough, unless
chunks may cross episodes (``cross_episodes``). (The collector's batch is ``max_episode_steps``
agent steps per environment, or ``frames_per_batch`` in all: an "episode" of the schedule is
such a batch, a round; the buffer still splits it on ``done``. A budget in rounds of a fixed
``frames_per_batch`` gives every task the same agent steps, whatever its episode length.)

Checkpoints (agent state, replay buffer, counters, RNG states, each training environment's
simulator generator state before its latest reset, config) are written every
``checkpoint_every`` collected episodes and at exit; ``resume=True`` continues from the last
one and refuses a checkpoint written with a different configuration (fields in
``RunConfig.RESUMABLE`` may change). A resumed CPU run with a sync collector ends bit-equal to
the uninterrupted run, and ``resume=True`` with more ``episodes`` gives the longer run: the fit
after a finished run's last round is recorded as owed and done first (``docs/reliability.md``).
``config.json`` is rewritten with every checkpoint.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import math
import random
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tensordict import TensorDictBase
from torchrl.envs import EnvBase
from torchrl.envs.utils import ExplorationType, set_exploration_type
from tqdm import tqdm

from ..data import load_replay_buffer, make_replay_buffer
from ..envs import env_random_states, set_env_random_states
from ..objectives import NonFiniteInputError
from .agent import Agent
from .checkpoint import (CHECKPOINT_DIR, ConfigMismatchError, check_config, find_checkpoint, find_generators,
                         get_rng_state, resume_checkpoint, saved_config, set_rng_state, write_checkpoint)
from .collection import (TEST_SEED_OFFSET, Collection, EnvFactory, WorkerFailure, check_layout,
                         finished_episode_returns, first_episode_returns, keep_num_threads, make_collector,
                         make_test_env)
from .config import AGENTS, RunConfig
from .distributed import broadcast_parameters, is_distributed
from .tensorboard import RSSMTensorboardLogger

__all__ = ["CHECKPOINT_DIR", "MAX_BUFFER_STEPS", "CollectorFailedError", "ConfigMismatchError", "EpisodeTooShortError",
           "Every", "Trainer", "agent_class", "apply_agent_action_repeat", "find_checkpoint", "load_trainer",
           "resolve_device"]

#: upper bound of the replay capacity sized from the run (the paper's 10^6 steps)
MAX_BUFFER_STEPS = 1_000_000
_CORE_KEYS = ("config", "counters", "rng", "last_test_return", "agent_keys", "algo", "schedule", "env_rng",
              "owed_fit")


class EpisodeTooShortError(ValueError):
    """The task's episodes are shorter than ``chunk_length``: no chunk can be sampled."""


class CollectorFailedError(RuntimeError):
    """The collector (e.g. a worker process) failed; the run's checkpoint holds everything stored."""


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


def agent_class(algo: str) -> type[Agent]:
    """The agent class for ``algo`` (``recipes/<algo>.py`` defines it)."""
    if algo not in AGENTS:
        raise ValueError(f"algo={algo!r}: expected one of {list(AGENTS)}.")
    name = {"planet": "PlaNetAgent", "dreamer": "DreamerAgent", "dreamerv3": "DreamerV3Agent"}[algo]
    return getattr(importlib.import_module(f"{__package__}.{algo}"), name)


def apply_agent_action_repeat(cfg: RunConfig, agent: Callable[..., Agent] | None = None) -> RunConfig:
    """Sets ``cfg.action_repeat`` to the agent's protocol on dm_control tasks when the run sets none
    (DreamerV3: 2 on every domain; PlaNet and Dreamer leave it to ``make_env``'s per-domain table).
    ``agent``: the agent class (default: ``cfg.algo``'s). Anything that measures a run's task (a random
    policy's returns, say) should see the action repeat the run trains at.

    Examples:
        >>> from torchrl_rssm.recipes import preset
        >>> apply_agent_action_repeat(preset("dreamerv3-quick")).action_repeat
        2
        >>> cfg = preset("quick"); cfg.action_repeat = None
        >>> apply_agent_action_repeat(cfg).action_repeat is None   # PlaNet: make_env's table decides (cartpole: 8)
        True
    """
    factory = agent if agent is not None else agent_class(cfg.algo)
    if cfg.action_repeat is None and cfg.env.startswith("dmc:") and getattr(factory, "dmc_action_repeat", None):
        cfg.action_repeat = int(factory.dmc_action_repeat)
    return cfg


class Every:
    """A clock: true when ``count`` is a positive multiple of ``every`` (``every=0``: never).

    Examples:
        >>> test = Every(3)
        >>> [n for n in range(1, 10) if test(n)]
        [3, 6, 9]
        >>> Every(3).crossed(2, 6), Every(3).crossed(3, 5)  # a multiple in (before, count]
        (True, False)
    """

    def __init__(self, every: int):
        self.every = int(every or 0)

    def __call__(self, count: int) -> bool:
        return self.every > 0 and count > 0 and count % self.every == 0

    def crossed(self, before: int, count: int) -> bool:
        """True when a multiple of ``every`` lies in ``(before, count]`` (counts that jump by N)."""
        return self.every > 0 and count > 0 and count // self.every > before // self.every


def _say(message: str) -> None:
    """A status line on stderr (stdout is kept for the result)."""
    tqdm.write(f"torchrl-rssm: {message}", file=sys.stderr)


class Trainer:
    """Builds every part of a run from a :class:`RunConfig` and trains its agent.

    Args:
        cfg: the run's configuration (``cfg.algo`` picks the agent unless ``agent`` is given).
        agent: an agent class (built as ``agent(cfg, env, device)``), a factory with that
            signature, or ``None`` for ``cfg.algo``'s.
        resume: continue from ``<logdir>/checkpoint`` (refused if the configuration differs
            outside ``RunConfig.RESUMABLE``).
        restore_buffer: with ``resume``, also load the replay buffer (evaluation does not need it).
        env_fn: builds the run's environments as ``env_fn(seed)`` instead of ``cfg.env``: a task
            built in code (see :class:`~torchrl_rssm.recipes.collection.EnvFactory`). With the
            ``"async"`` / ``"distributed"`` collector or ``env_backend="parallel"`` it must pickle
            (a module-level function).

    Examples:
        >>> import tempfile
        >>> from torchrl_rssm.envs import make_env
        >>> from torchrl_rssm.recipes import preset
        >>> def my_env(seed):  # any TorchRL env built in code, here make_env's pendulum
        ...     return make_env("gym:Pendulum-v1", from_pixels=False, max_episode_steps=20, seed=seed)
        >>> cfg = preset("tiny"); cfg.logdir = tempfile.mkdtemp(); cfg.progress = False; cfg.video_every = 0
        >>> result = Trainer(cfg, env_fn=my_env).train()
        >>> result["seed_episodes"], result["episodes"], result["env_steps"]
        (2, 1, 60)
    """

    def __init__(self, cfg: RunConfig, agent: Callable[..., Agent] | None = None, resume: bool = False,
                 restore_buffer: bool = True, env_fn: Callable[[int | None], EnvBase] | None = None):
        self.cfg = cfg
        self._restore_buffer = restore_buffer
        if cfg.nan_policy not in ("skip", "raise"):
            raise ValueError(f"nan_policy={cfg.nan_policy!r}: expected 'skip' or 'raise'.")
        check_layout(cfg)
        factory = agent if agent is not None else agent_class(cfg.algo)
        apply_agent_action_repeat(cfg, factory)
        self.device = resolve_device(cfg.device)
        self.buffer_device = resolve_device(cfg.buffer_device)
        self.logdir = Path(cfg.logdir)
        self.checkpoint_dir = self.logdir / CHECKPOINT_DIR
        if resume:
            check_config(cfg, self.logdir)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        torch.manual_seed(cfg.seed)
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)

        self.make_env = EnvFactory(cfg, env_fn)
        self.env = self.make_env(seed=cfg.seed)
        limit = getattr(self.env, "max_episode_steps", None) or cfg.max_episode_steps
        if limit is None:
            raise ValueError(f"env={cfg.env!r} has no episode limit: set max_episode_steps "
                             "(--set max_episode_steps=N, in agent steps).")
        self.episode_steps, self.action_repeat = int(limit), int(getattr(self.env, "action_repeat", 1))
        #: agent steps each environment collects in a round (the schedule's "episodes" count rounds)
        self.round_steps = self.episode_steps if cfg.frames_per_batch is None else cfg.frames_per_batch // cfg.num_envs
        if self.episode_steps < cfg.chunk_length and not cfg.cross_episodes:
            raise EpisodeTooShortError(
                f"env={cfg.env!r}: episodes last at most max_episode_steps={self.episode_steps} agent steps "
                f"(action_repeat={self.action_repeat}), fewer than chunk_length={cfg.chunk_length}: no training "
                f"chunk fits. Let chunks cross episodes (--set cross_episodes=true), set chunk_length <= "
                f"{self.episode_steps} (--set chunk_length=N), or a longer episode.")
        self.agent = factory(cfg, self.env, self.device)
        if is_distributed():  # torchrun: every rank starts from rank 0's weights and averages gradients
            broadcast_parameters(self.agent.networks().values())
            self.agent.process_group = torch.distributed.group.WORLD
        self.env.append_transform(self.agent.make_tensordict_primer())
        self.make_env = self.make_env.with_primer(self.agent.make_tensordict_primer())
        self.buffer = self._make_buffer()
        if not resume and (self.checkpoint_dir / "state.pt").exists():  # every setting is validated by now
            raise FileExistsError(f"{self.checkpoint_dir} holds a checkpoint: pass resume=True (--resume) to "
                                  "continue it, or choose another logdir.")
        #: collected episodes: the random seed episodes, then the agent's (the schedule's ``episodes``)
        self.counters = dict(seed_episodes=0, episodes=0, env_steps=0, updates=0, skipped_updates=0,
                             dropped_episodes=0)
        #: train_ratio's books: agent steps credited and updates owed for them (see updates_due)
        self.schedule = dict(ratio_steps=0, ratio_updates=0)
        self.logger = RSSMTensorboardLogger(exp_name="", log_dir=str(self.logdir))
        self.last_test_return, self.last_loss = float("nan"), float("nan")
        self._buffer_reported = False
        #: the training environments' generator states before their latest reset (exact resume)
        self._env_rng: list | None = None
        #: the last round's fit when the run ended before it (``{"before", "steps"}``): an
        #: extended run (``--resume`` with more episodes) does it first
        self._owed_fit: dict | None = None
        #: a resumed run's RNG states, put back once its collector is built (see :meth:`train`)
        self._resume_rng: dict | None = None
        if resume:
            self.load_checkpoint()  # config.json is rewritten with the next checkpoint, never before
        else:
            self.logger.log_hparams(self.cfg.to_dict())
            self.logdir.mkdir(parents=True, exist_ok=True)
            self._write_config()

    @property
    def policy(self):
        return self.agent.policy

    @property
    def world_model(self):
        return self.agent.world_model

    @property
    def collected(self) -> int:
        """Episodes collected so far, seed episodes included (what the clocks count)."""
        return self.counters["seed_episodes"] + self.counters["episodes"]

    # ------------------------------------------------------------- the loop
    def train(self) -> dict:
        """Runs until ``seed_episodes + episodes`` episodes have been collected.

        Each collection round brings one episode per environment, or ``frames_per_batch`` steps
        (with the ``"async"`` collector, one worker's round); the updates that precede a round
        are :meth:`updates_due` for its steps, and new weights then go to the workers.
        """
        cfg = self.cfg
        check_layout(cfg)
        total = cfg.seed_episodes + cfg.episodes
        test_clock, video_clock, checkpoint_clock = (Every(cfg.test_every), Every(cfg.video_every),
                                                     Every(cfg.checkpoint_every))
        seed_rounds = math.ceil(max(0, cfg.seed_episodes - self.collected) / cfg.num_envs)
        bar = tqdm(total=total, initial=self.collected, disable=not cfg.progress, desc=self.agent.name,
                   unit="episode", dynamic_ncols=True, file=sys.stderr)
        failure = None
        with keep_num_threads() as threads:
            collection = Collection(self.make_collector(seed_rounds), threads, in_process=cfg.collector == "sync")
            envs = getattr(collection.collector, "env", None)  # in this process (sync) only
            try:
                if self._resume_rng is not None:
                    self._resume_collection(collection, envs)
                if self._owed_fit is not None and self.collected < total:  # an extended run
                    before = self._owed_fit["before"]
                    self._fit(collection, self._owed_fit["steps"])
                    if cfg.test_every > 0 and test_clock.crossed(before, self.collected):
                        self.last_test_return = self.test(cfg.test_episodes)  # as after that fit
                batches = iter(collection)
                while self.collected < total:
                    batch = next(batches)  # collect
                    if envs is not None:  # read before the next round's resets: the state they start from
                        self._env_rng = env_random_states(envs)
                    before = self.collected
                    train_return = self._store_episode(batch)
                    self.counters["seed_episodes" if before < cfg.seed_episodes else "episodes"] += \
                        max(1, batch.numel() // self.round_steps)  # one round per env in the batch
                    if cfg.seed_episodes <= self.collected < total:  # fit, before the next round
                        self._fit(collection, (self.collected - before) * self.round_steps)
                    elif cfg.seed_episodes <= self.collected:  # the last round: its fit is owed to an extension
                        self._owed_fit = dict(before=before, steps=(self.collected - before) * self.round_steps)
                    on_clock = test_clock.crossed(before, self.collected)
                    tested = cfg.test_every > 0 and (on_clock or self.collected >= total)
                    if tested:  # test; the final one, if a longer run would not test here (off the clock,
                        # or before the owed fit), leaves the random streams as they were
                        with self._rng_kept(not on_clock or self._owed_fit is not None):
                            self.last_test_return = self.test(cfg.test_episodes)
                    if video_clock.crossed(before, self.collected) and self._can_sample():
                        self.log_predictions()
                    checkpointed = checkpoint_clock.crossed(before, self.collected)
                    if checkpointed:  # checkpoint
                        self.save_checkpoint()
                    self._report(bar, before, train_return, tested or checkpointed or self.collected >= total)
            except WorkerFailure as err:
                failure = err
            finally:
                collection.close()
                bar.close()
                self.save_checkpoint()
                self.logger.experiment.flush()
        if failure is not None:
            raise CollectorFailedError(
                f"collector={cfg.collector!r} failed after {self.collected} episodes ({failure}). Everything "
                f"stored so far ({len(self.buffer):,} steps) is in the checkpoint {self.checkpoint_dir}: continue "
                "with resume=True (--resume).") from (failure.__cause__ or failure)
        return dict(self.counters, test_return=self.last_test_return)

    def _fit(self, collection: Collection, steps: int) -> None:
        """The updates owed for ``steps`` collected agent steps, then the new weights to the workers."""
        self._check_episode_lengths()
        self.update_model(self.updates_due(steps))
        self._owed_fit = None
        collection.push_weights()

    def _generators(self) -> dict[str, torch.Generator]:
        return find_generators(agent=self.agent, buffer=self.buffer)

    @contextlib.contextmanager
    def _rng_kept(self, keep: bool = True):
        """Runs the block on a copy of every RNG state (torch, numpy, random, the parts' generators)."""
        if not keep:
            yield
            return
        generators = self._generators()
        rng = get_rng_state(generators)
        try:
            yield
        finally:
            set_rng_state(rng, generators)

    def _resume_collection(self, collection: Collection, envs: EnvBase | None) -> None:
        """A resumed run's collector continues where the checkpoint's left off.

        Building the collector reset and seeded its environments and probed the policy. The
        environments' generators go back to their state before the uninterrupted run's latest
        reset, and they reset again (the same initial states); the RNG states go back last, so
        nothing drawn since the checkpoint was loaded counts.
        """
        if envs is not None and self._env_rng is not None and set_env_random_states(envs, self._env_rng):
            collection.collector.reset()
        self._set_rng(self._resume_rng)
        self._resume_rng = None

    def _set_rng(self, rng: dict) -> None:
        generators = self._generators()
        saved = rng.get("generators", {})
        set_rng_state(rng, {k: g for k, g in generators.items() if k in saved})  # older checkpoints: none saved

    def _report(self, bar: tqdm, before: int, train_return: float, status_line: bool) -> None:
        """The progress bar, or (``progress=False``) a status line per test and per checkpoint."""
        known = {"ret": train_return, "test": self.last_test_return, "loss": self.last_loss}
        shown = {k: f"{v:.1f}" if k != "loss" else f"{v:.2f}" for k, v in known.items() if v == v}  # NaN: not yet
        bar.update(self.collected - before)
        bar.set_postfix(shown)
        if not self.cfg.progress and status_line:
            cfg, c = self.cfg, self.counters
            where = f"seed episode {c['seed_episodes']}/{cfg.seed_episodes}" if not c["episodes"] else \
                f"episode {c['episodes']}/{cfg.episodes} (after {c['seed_episodes']} seed episodes)"
            _say(f"{where}  env_steps {c['env_steps']}  updates {c['updates']}  "
                 + "  ".join(f"{name} {shown[k]}" for k, name in
                             (("ret", "train_return"), ("test", "test_return"), ("loss", "loss")) if k in shown))

    def _store_episode(self, episode: TensorDictBase) -> float:
        """Adds one collected episode to the replay buffer; drops it if it holds NaN/inf."""
        floats = [v.reshape(-1) for v in episode.values(True, True) if v.is_floating_point()]
        if not bool(torch.isfinite(torch.cat(floats)).all()):  # one sync per episode, at the boundary
            if self.cfg.nan_policy == "raise":
                raise ValueError(f"Collected episode {self.collected} holds NaN/inf values (nan_policy='raise').")
            warnings.warn(f"Episode {self.collected} holds NaN/inf values: not stored (counted in "
                          "dropped_episodes).", RuntimeWarning, stacklevel=2)
            self.counters["dropped_episodes"] += max(1, episode.numel() // self.round_steps)
            return float("nan")
        # [T] (one env) or [N, T] (a batch of envs): the buffer labels each env's row apart, so no
        # stored episode (and no sampled chunk) mixes two environments' steps
        self.buffer.extend(episode.reshape(-1) if episode.ndim <= 1 else episode)
        if not self._buffer_reported:
            self._buffer_reported = True
            _say(f"replay buffer: {self.buffer.describe()}")
        self.counters["env_steps"] += episode.numel() * self.action_repeat
        # mean return of the episodes that ended in this batch (tasks that terminate early end several)
        ret = float(finished_episode_returns(episode).mean())
        self.logger.log_scalar("train/episode_return", ret, step=self.counters["env_steps"])
        self.logger.log_scalar("train/episodes", self.collected + 1, step=self.counters["env_steps"])
        return ret

    def _can_sample(self) -> bool:
        return self.buffer.can_sample()

    def _check_episode_lengths(self) -> None:
        """Refuses (clearly) a buffer where no episode is as long as ``chunk_length`` (chunks that
        cross episodes, ``cross_episodes``, need only ``chunk_length`` steps in all: never refused)."""
        if self.cfg.cross_episodes:
            return
        lengths = self.buffer.episode_lengths()
        if len(lengths) and int(lengths.max()) < self.cfg.chunk_length:
            shown = sorted(set(lengths.tolist()))
            raise EpisodeTooShortError(
                f"env={self.cfg.env!r}: no stored episode is as long as chunk_length={self.cfg.chunk_length} "
                f"(observed episode lengths in agent steps: {shown[:20]}{' ...' if len(shown) > 20 else ''}; "
                f"episodes end early, e.g. by termination). Let chunks cross episodes, the RSSM reset at each "
                f"episode's start (--set cross_episodes=true), or set chunk_length <= {max(shown)} "
                "(--set chunk_length=N).")

    # ------------------------------------------------------------------ fit
    def updates_due(self, steps: int) -> int:
        """Model updates to run before the agent collects ``steps`` more agent steps.

        ``train_ratio=None``: ``updates_per_episode`` per collected round (one episode per
        environment, unless ``frames_per_batch`` sets the round), PlaNet's schedule. Otherwise ``train_ratio`` updates per agent step (one stored
        transition): the fractional remainder is carried, so over a run ``updates = train_ratio x
        agent steps`` to within one update, whatever ``num_envs``, ``collector`` or ``collector_workers``.
        """
        cfg = self.cfg
        if cfg.train_ratio is None:
            return cfg.updates_per_episode * (steps // self.round_steps)
        self.schedule["ratio_steps"] += int(steps)
        owed = math.floor(cfg.train_ratio * self.schedule["ratio_steps"] + 1e-9) - self.schedule["ratio_updates"]
        self.schedule["ratio_updates"] += max(owed, 0)
        return max(owed, 0)

    def update_model(self, num_updates: int) -> dict[str, float]:
        """``num_updates`` agent updates on sampled ``[B, L]`` chunks; returns mean metrics.

        NaN policy: an update whose batch holds NaN/inf (the agent raises
        :class:`~torchrl_rssm.objectives.NonFiniteInputError`) is skipped with a warning and
        counted (``nan_policy="skip"``) or stops the run (``"raise"``).
        """
        if self.cfg.cross_episodes and not self.buffer.can_sample():
            num_updates = 0  # fewer stored steps than one chunk (very short episodes): collect first
        sums: dict[str, torch.Tensor] = {}
        done = 0
        start = time.perf_counter()
        for _ in range(num_updates):
            try:
                metrics = self.agent.update(self.buffer.sample())
            except NonFiniteInputError as err:
                if self.cfg.nan_policy == "raise":
                    raise
                warnings.warn(f"Update skipped: {err}", RuntimeWarning, stacklevel=2)
                self.counters["skipped_updates"] += 1
                continue
            self.counters["updates"] += 1
            done += 1
            for k, v in metrics.items():  # accumulate on the device: no sync inside the loop
                sums[k] = sums.get(k, 0) + v.detach()
        elapsed = time.perf_counter() - start
        metrics = {k: float(v) / max(done, 1) for k, v in sums.items()}
        self.last_loss = metrics.get("loss", self.last_loss)
        step = self.counters["env_steps"]
        for k, v in metrics.items():
            self.logger.log_scalar(k if "/" in k else (f"loss/{k}" if k.startswith("loss") else f"model/{k}"),
                                   v, step=step)
        self.logger.log_scalar("perf/updates_per_s", done / max(elapsed, 1e-9), step=step)
        self.logger.log_scalar("train/updates", self.counters["updates"], step=step)
        self.logger.log_scalar("train/skipped_updates", self.counters["skipped_updates"], step=step)
        return metrics

    # -------------------------------------------------------------- collect
    def make_collector(self, seed_rounds: int):
        """The TorchRL collector of this run's layout (:func:`~torchrl_rssm.recipes.collection.make_collector`)."""
        return make_collector(self.cfg, self.make_env, self.env, self.policy, self.round_steps, seed_rounds,
                              seed=self.cfg.seed + self.collected, device=self.device,
                              storing_device=self.buffer_device)

    # ----------------------------------------------------------------- test
    def make_test_env(self, num_envs: int, from_pixels: bool | None = None, pixels_only: bool = True):
        """``num_envs`` copies of the task in one batch, seeded apart from the training env."""
        make = dataclasses.replace(self.make_env, from_pixels=from_pixels, pixels_only=pixels_only)
        return make_test_env(make, num_envs, seed=self.cfg.seed + TEST_SEED_OFFSET + self.collected)

    @torch.no_grad()
    def rollout_test(self, num_envs: int, from_pixels: bool | None = None, pixels_only: bool = True,
                     callback: Callable | None = None):
        """``num_envs`` noise-free episodes (``DETERMINISTIC``) as one batch; returns the rollout.

        ``callback(env, tensordict)`` is called after every step (``EnvBase.rollout``'s), e.g. for progress.
        """
        with keep_num_threads():
            env = self.make_test_env(num_envs, from_pixels=from_pixels, pixels_only=pixels_only)
            with set_exploration_type(ExplorationType.DETERMINISTIC):
                rollout = env.rollout(self.episode_steps, self.policy, break_when_any_done=False, callback=callback)
            env.close()
        return rollout

    def test(self, num_envs: int) -> float:
        """Mean return of ``num_envs`` noise-free episodes, run as one batch of environments."""
        start = time.perf_counter()
        rollout = self.rollout_test(num_envs)
        elapsed = time.perf_counter() - start
        mean_return = float(first_episode_returns(rollout).mean())
        step = self.counters["env_steps"]
        self.logger.log_scalar("test/return", mean_return, step=step)
        self.logger.log_scalar("perf/env_steps_per_s",
                               rollout.numel() * self.action_repeat / max(elapsed, 1e-9), step=step)
        return mean_return

    def log_predictions(self) -> None:
        """The agent's pictures (reconstructions, open-loop predictions) from a replay batch.

        Runs on a copy of the RNG states: drawing a batch and the model's latent samples here
        leaves the run's random stream (and so its returns) as it would be without pictures.
        """
        generators = find_generators(agent=self.agent, buffer=self.buffer)  # and any the parts hold
        rng = get_rng_state(generators)
        try:
            self.agent.log_predictions(self.buffer.sample(), self.logger, self.counters["env_steps"])
        finally:
            set_rng_state(rng, generators)

    # ----------------------------------------------------------- checkpoint
    def state_dict(self) -> dict:
        agent_state = self.agent.state_dict()
        clash = set(agent_state) & set(_CORE_KEYS)
        if clash:
            raise ValueError(f"{type(self.agent).__name__}.state_dict uses keys reserved by the trainer: {clash}.")
        return {**agent_state, "agent_keys": sorted(agent_state), "algo": self.cfg.algo,
                "config": self.cfg.to_dict(), "counters": dict(self.counters), "rng": get_rng_state(self._generators()),
                "last_test_return": self.last_test_return, "schedule": dict(self.schedule),
                "env_rng": self._env_rng, "owed_fit": self._owed_fit}

    def save_checkpoint(self) -> Path:
        """Writes the checkpoint atomically (and config.json beside it, so they always match)."""
        path = write_checkpoint(self.logdir, self.state_dict(), self.buffer)
        self._write_config()
        return path

    def load_checkpoint(self) -> None:
        # the newest checkpoint that passes every check (else the previous one, with a warning)
        folder, state = resume_checkpoint(self.logdir, algo=self.cfg.algo, map_location=self.device,
                                          replay=self._restore_buffer)
        self.agent.load_state_dict({k: state[k] for k in state["agent_keys"]})
        self.counters.update(state["counters"])
        self.last_test_return = state["last_test_return"]
        self.schedule.update(state["schedule"])
        self._env_rng, self._owed_fit = state.get("env_rng"), state.get("owed_fit")
        if self._restore_buffer:
            self.buffer = load_replay_buffer(folder / "replay", self.buffer)
            if len(self.buffer):  # else at the first write, when the row layout is known
                self._buffer_reported = True
                _say(f"replay buffer: {self.buffer.describe()}, {len(self.buffer):,} steps restored")
        # now (for code that uses the trainer without training), and again once train() has built
        # its collector (which draws from them)
        self._set_rng(state["rng"])
        self._resume_rng = state["rng"]

    def _write_config(self) -> None:
        (self.logdir / "config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2))

    def buffer_capacity(self) -> int:
        """``buffer_capacity``, or the whole run's steps capped at :data:`MAX_BUFFER_STEPS`."""
        cfg = self.cfg
        if cfg.buffer_capacity is not None:
            return int(cfg.buffer_capacity)
        return max(cfg.chunk_length, min((cfg.seed_episodes + cfg.episodes) * self.round_steps, MAX_BUFFER_STEPS))

    def _make_buffer(self):
        # Stored: observations (root and next; pixels as uint8), action, reward, flags. Not the
        # policy's recorded latents or warm-start plan (make_replay_buffer's default exclusions).
        cfg = self.cfg
        return make_replay_buffer(
            capacity=self.buffer_capacity(), batch_size=cfg.batch_size, chunk_length=cfg.chunk_length,
            device=self.device, storage_device=self.buffer_device,
            memmap_dir=str(self.logdir / "replay_memmap") if cfg.buffer_on_disk else None,
            dequantize_bits=cfg.bit_depth if cfg.from_pixels and self.agent.dequantize_pixels else None,
            cross_episodes=cfg.cross_episodes)


def load_trainer(checkpoint: str | Path, device: str | None = None, with_buffer: bool = True,
                 **overrides) -> Trainer:
    """Rebuilds a trainer (agent, buffer, counters) from a run's logdir, checkpoint folder or state.pt.

    ``with_buffer=False`` leaves the replay buffer empty (evaluation does not need it; a pixel
    run's buffer holds gigabytes).
    """
    cfg = saved_config(checkpoint)
    if device is not None:
        cfg.device = device
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return Trainer(cfg, resume=True, restore_buffer=with_buffer)
