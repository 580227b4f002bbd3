"""The trainer core: one loop for every agent (PlaNet, Dreamer) on TorchRL parts.

``make_env`` (TorchRL env + transforms), a TorchRL ``Collector`` driving the agent's
policy, the sequence replay buffer (``TensorDictReplayBuffer`` + ``SliceSampler``), the
agent's ``update`` in a loop with the NaN policy, batched noise-free test episodes,
TensorBoard through TorchRL's ``TensorboardLogger``, atomic checkpoints and resume.
What differs between agents lives in the agent (:mod:`torchrl_rssm.recipes.agent`).

The loop follows PlaNet's order: ``seed_episodes`` random episodes, then for each of the
``episodes`` agent episodes: ``updates_per_episode`` gradient steps, collect one episode
(policy under ``ExplorationType.RANDOM``: exploration noise on), and on their clocks test
(``DETERMINISTIC``), pictures and a checkpoint.

Exploration modes: the collector runs the policy under ``RANDOM`` and test/eval episodes
under ``DETERMINISTIC``. The policy is called once more, outside any exploration context,
when the ``Collector`` is built: TorchRL probes it on a reset tensordict to learn its
output entries. That probe is run here under ``DETERMINISTIC`` (it writes no data and
draws no exploration noise), so every call of the policy has a deliberate mode.

Episodes shorter than ``chunk_length`` cannot be trained on (chunks never cross an episode
boundary, and we neither pad nor shorten chunks): a task whose episode limit is below
``chunk_length`` is refused when the trainer is built, and one whose episodes end early
(e.g. CartPole's termination) is refused with the observed lengths once the seed episodes
are in, if none of them is long enough. Lower ``chunk_length`` for such tasks. (The
collector's batch is ``max_episode_steps`` agent steps: for a task whose episodes end
early, an "episode" of the schedule is such a batch, which may hold several episodes; the
buffer still splits them on their ``done`` flags.)

Checkpoints (agent state, replay buffer, counters, RNG states, config) are written every
``checkpoint_every`` episodes and at exit; ``resume=True`` continues from the last one and
refuses a checkpoint written with a different configuration (fields in
``RunConfig.RESUMABLE`` may change). ``config.json`` in the logdir is rewritten with every
checkpoint so it always matches it.
"""
from __future__ import annotations

import functools
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
from torchrl.collectors import Collector, MultiAsyncCollector
from torchrl.envs import ParallelEnv, SerialEnv
from torchrl.envs.utils import ExplorationType, set_exploration_type
from tqdm import tqdm

from ..data import load_replay_buffer, make_replay_buffer
from ..envs import make_env
from ..objectives import NonFiniteInputError
from .agent import Agent
from .checkpoint import (CHECKPOINT_DIR, ConfigMismatchError, check_config, find_checkpoint, get_rng_state,
                         resume_checkpoint, saved_config, set_rng_state, write_checkpoint)
from .config import AGENTS, RunConfig
from .tensorboard import RSSMTensorboardLogger

__all__ = ["CHECKPOINT_DIR", "COLLECTORS", "CollectorFailedError", "ConfigMismatchError", "ENV_BACKENDS",
           "EpisodeTooShortError", "Every", "MAX_BUFFER_STEPS", "Trainer", "agent_class", "build_env",
           "check_layout", "find_checkpoint", "load_trainer", "resolve_device"]

#: upper bound of the replay capacity sized from the run (the paper's 10^6 steps)
MAX_BUFFER_STEPS = 1_000_000
_CORE_KEYS = ("config", "counters", "rng", "last_test_return", "agent_keys", "algo", "schedule")
#: collection layouts (``RunConfig.collector``) and batched-env backends (``RunConfig.env_backend``)
COLLECTORS = ("sync", "async", "distributed")
ENV_BACKENDS = ("serial", "parallel")


class EpisodeTooShortError(ValueError):
    """The task's episodes are shorter than ``chunk_length``: no chunk can be sampled."""


class CollectorFailedError(RuntimeError):
    """The collector (e.g. a worker process) failed; the run's checkpoint holds everything stored."""


def check_layout(cfg: RunConfig) -> None:
    """Clear errors for a bad collection layout (``num_envs``, ``env_backend``, ``collector``, ratios).

    Examples:
        >>> from torchrl_rssm.recipes import preset
        >>> cfg = preset("tiny"); cfg.num_envs = 0
        >>> check_layout(cfg)
        Traceback (most recent call last):
        ...
        ValueError: num_envs=0: expected an integer >= 1 (environments stepped together).
    """
    if not isinstance(cfg.num_envs, int) or isinstance(cfg.num_envs, bool) or cfg.num_envs < 1:
        raise ValueError(f"num_envs={cfg.num_envs!r}: expected an integer >= 1 (environments stepped together).")
    if cfg.env_backend not in ENV_BACKENDS:
        raise ValueError(f"env_backend={cfg.env_backend!r}: expected one of {list(ENV_BACKENDS)}.")
    if cfg.collector not in COLLECTORS:
        raise ValueError(f"collector={cfg.collector!r}: expected one of {list(COLLECTORS)}.")
    if cfg.collector != "sync" and (not isinstance(cfg.collector_workers, int) or cfg.collector_workers < 1):
        raise ValueError(f"collector_workers={cfg.collector_workers!r}: expected an integer >= 1 worker processes.")
    if cfg.train_ratio is not None and not (isinstance(cfg.train_ratio, (int, float)) and cfg.train_ratio >= 0
                                            and math.isfinite(cfg.train_ratio)):
        raise ValueError(f"train_ratio={cfg.train_ratio!r}: expected a finite number >= 0 "
                         "(model updates per collected agent step) or None.")
    if cfg.updates_per_episode < 0:
        raise ValueError(f"updates_per_episode={cfg.updates_per_episode!r}: expected an integer >= 0.")


def build_env(cfg: RunConfig, seed: int | None = None, primer=None, from_pixels: bool | None = None,
              pixels_only: bool = True):
    """One environment of the run (``make_env`` with the run's settings), with a copy of ``primer``.

    A module-level function, so that ``functools.partial(build_env, cfg, primer=...)`` can be sent to
    TorchRL's ``ParallelEnv`` and multi-process collectors; every call appends its own copy of the
    primer (a transform has one parent).
    """
    return make_env(cfg.env, from_pixels=cfg.from_pixels if from_pixels is None else from_pixels,
                    action_repeat=cfg.action_repeat, bit_depth=cfg.bit_depth,
                    max_episode_steps=cfg.max_episode_steps, seed=seed,
                    primers=None if primer is None else primer.clone(),
                    pixels_only=pixels_only, image_size=cfg.image_size, grayscale=cfg.grayscale,
                    env_kwargs=cfg.env_kwargs)


def _batched_env(num_envs: int, backend: str, make: Callable):
    """``num_envs`` copies of ``make()`` as one TorchRL batched env (or ``make()`` itself for one)."""
    if num_envs == 1:
        return make()
    return (SerialEnv if backend == "serial" else ParallelEnv)(num_envs, make)


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
    """The agent class for ``algo`` (``recipes/<algo>.py`` defines ``<Algo>Agent``)."""
    if algo not in AGENTS:
        raise ValueError(f"algo={algo!r}: expected one of {list(AGENTS)}.")
    name = {"planet": "PlaNetAgent", "dreamer": "DreamerAgent"}[algo]
    try:
        module = importlib.import_module(f"{__package__}.{algo}")
    except ModuleNotFoundError as err:
        if err.name != f"{__package__}.{algo}":
            raise
        module = None
    if module is None or not hasattr(module, name):
        raise ValueError(f"algo={algo!r} is not available yet in this version; use algo='planet'.")
    return getattr(module, name)


def _number(x: float) -> str:
    return "-" if x != x else f"{x:.1f}"  # NaN: not measured yet


def first_episode_returns(rollout: TensorDictBase) -> torch.Tensor:
    """Return of each environment's first episode in a ``[T]`` or ``[E, T]`` rollout.

    Test rollouts run ``max_episode_steps`` steps without stopping at ``done`` (a batch of
    environments steps together), so an environment whose episode ends early has started
    another: only rewards up to and including its first ``done`` count.

    Examples:
        >>> from tensordict import TensorDict
        >>> r = torch.ones(2, 4, 1); done = torch.zeros(2, 4, 1, dtype=torch.bool); done[0, 1] = True
        >>> first_episode_returns(TensorDict({("next", "reward"): r, ("next", "done"): done}, [2, 4]))
        tensor([2., 4.])
    """
    reward = rollout.get(("next", "reward"))
    done = rollout.get(("next", "done"), None)
    if done is None:
        return reward.sum(-2).squeeze(-1)
    done = done.to(reward.dtype)
    before_first_done = (done.cumsum(-2) - done) == 0  # steps up to and including the first done
    return (reward * before_first_done).sum(-2).squeeze(-1)


def finished_episode_returns(batch: TensorDictBase) -> torch.Tensor:
    """Returns of the episodes that end in a collected batch (``RewardSum``'s ``episode_reward`` at
    their ``done`` steps); the whole batch's reward per environment row if none ends in it."""
    done = batch.get(("next", "done"), None)
    episode_reward = batch.get(("next", "episode_reward"), None)
    if done is None or episode_reward is None or not bool(done.any()):
        return batch.get(("next", "reward")).sum(-2).reshape(-1)
    return episode_reward[done.expand_as(episode_reward)]


class Every:
    """A clock: true when ``count`` is a positive multiple of ``every`` (``every=0``: never).

    Examples:
        >>> test = Every(3)
        >>> [n for n in range(1, 10) if test(n)]
        [3, 6, 9]
    """

    def __init__(self, every: int):
        self.every = int(every or 0)

    def __call__(self, count: int) -> bool:
        return self.every > 0 and count > 0 and count % self.every == 0

    def crossed(self, before: int, count: int) -> bool:
        """True when a multiple of ``every`` lies in ``(before, count]`` (counts that jump by N).

        Examples:
            >>> Every(3).crossed(2, 6), Every(3).crossed(3, 5), Every(3).crossed(5, 6)
            (True, False, True)
        """
        return self.every > 0 and count > 0 and count // self.every > before // self.every


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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

    Examples:
        >>> from torchrl_rssm.recipes import preset, Trainer
        >>> cfg = preset("tiny")            # doctest: +SKIP
        >>> Trainer(cfg).train()            # doctest: +SKIP
    """

    def __init__(self, cfg: RunConfig, agent: Callable[..., Agent] | None = None, resume: bool = False,
                 restore_buffer: bool = True):
        self.cfg = cfg
        self._restore_buffer = restore_buffer  # False: models and counters only (evaluation)
        if cfg.nan_policy not in ("skip", "raise"):
            raise ValueError(f"nan_policy={cfg.nan_policy!r}: expected 'skip' or 'raise'.")
        check_layout(cfg)
        factory = agent if agent is not None else agent_class(cfg.algo)
        self.device = resolve_device(cfg.device)
        self.buffer_device = resolve_device(cfg.buffer_device)
        self.logdir = Path(cfg.logdir)
        self.checkpoint_dir = self.logdir / CHECKPOINT_DIR
        if resume:
            check_config(cfg, self.logdir)
        elif (self.checkpoint_dir / "state.pt").exists():
            raise FileExistsError(
                f"{self.checkpoint_dir} holds a checkpoint: pass resume=True (--resume) to continue it, "
                "or choose another logdir."
            )
        _seed_everything(cfg.seed)
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)

        self.env = self._make_env(seed=cfg.seed)
        if self.env.max_episode_steps is None:
            raise ValueError(f"env={cfg.env!r} has no episode limit: set max_episode_steps "
                             "(--set max_episode_steps=N, in agent steps).")
        self.episode_steps = int(self.env.max_episode_steps)
        self.action_repeat = int(self.env.action_repeat)
        if self.episode_steps < cfg.chunk_length:
            raise EpisodeTooShortError(
                f"env={cfg.env!r}: episodes last at most max_episode_steps={self.episode_steps} agent steps "
                f"(action_repeat={self.action_repeat}), fewer than chunk_length={cfg.chunk_length}: no training "
                f"chunk fits. Set chunk_length <= {self.episode_steps} (--set chunk_length=N) or a longer episode."
            )
        self.agent = factory(cfg, self.env, self.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:  # torchrun: DDP over the agent's updates
            from .distributed import wrap_ddp

            wrap_ddp(self.agent, self.device)
        self.env.append_transform(self.agent.make_tensordict_primer())
        self.buffer = self._make_buffer()
        self.counters = dict(episodes=0, env_steps=0, updates=0, skipped_updates=0, dropped_episodes=0)
        #: train_ratio's books: agent steps credited and updates owed for them (see update_schedule)
        self.schedule = dict(ratio_steps=0, ratio_updates=0)
        self.logger = RSSMTensorboardLogger(exp_name="", log_dir=str(self.logdir))
        self.last_test_return = float("nan")
        self._buffer_reported = False
        if resume:
            self.load_checkpoint()  # config.json is rewritten with the next checkpoint, never before
        else:
            # TensorBoard's hparams take scalars and strings only (env_kwargs is a dict)
            self.logger.log_hparams({k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
                                     for k, v in self.cfg.to_dict().items()})
            self.logdir.mkdir(parents=True, exist_ok=True)
            self._write_config()

    # ------------------------------------------------------------------ parts
    @property
    def policy(self):
        return self.agent.policy

    @property
    def world_model(self):
        return self.agent.world_model

    def __getattr__(self, name):  # old attribute paths (trainer.loss_module, trainer.optimizer)
        agent = self.__dict__.get("agent")
        if agent is not None and not name.startswith("__"):
            try:
                return getattr(agent, name)
            except AttributeError:
                pass
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _make_env(self, seed: int, primers=None, from_pixels: bool | None = None, pixels_only: bool = True):
        cfg = self.cfg
        return make_env(cfg.env, from_pixels=cfg.from_pixels if from_pixels is None else from_pixels,
                        action_repeat=cfg.action_repeat, bit_depth=cfg.bit_depth,
                        max_episode_steps=cfg.max_episode_steps, seed=seed, primers=primers,
                        pixels_only=pixels_only, image_size=cfg.image_size, grayscale=cfg.grayscale,
                        env_kwargs=cfg.env_kwargs)

    def buffer_capacity(self) -> int:
        """``buffer_capacity``, or the whole run's steps capped at :data:`MAX_BUFFER_STEPS`."""
        cfg = self.cfg
        if cfg.buffer_capacity is not None:
            return int(cfg.buffer_capacity)
        return max(cfg.chunk_length, min((cfg.seed_episodes + cfg.episodes) * self.episode_steps, MAX_BUFFER_STEPS))

    def _make_buffer(self):
        cfg = self.cfg
        # Stored: observations (root and next; pixels as uint8), action, reward, flags. Not the
        # policy's recorded latents or warm-start plan (make_replay_buffer's default exclusions).
        return make_replay_buffer(
            capacity=self.buffer_capacity(), batch_size=cfg.batch_size, chunk_length=cfg.chunk_length,
            device=self.device, storage_device=self.buffer_device,
            memmap_dir=str(self.logdir / "replay_memmap") if cfg.buffer_on_disk else None,
            dequantize_bits=cfg.bit_depth if cfg.from_pixels else None,
        )

    def make_test_env(self, num_envs: int, from_pixels: bool | None = None, pixels_only: bool = True):
        """``num_envs`` copies of the task in one batch, seeded apart from the training env."""
        seed = self.cfg.seed + 10_000 + self.counters["episodes"]

        def make():  # a transform has one parent: every sub-env gets its own primer
            return self._make_env(seed=seed, from_pixels=from_pixels, pixels_only=pixels_only,
                                  primers=self.agent.make_tensordict_primer())

        env = SerialEnv(num_envs, make) if num_envs > 1 else make()
        env.set_seed(seed)
        return env

    def _write_config(self) -> None:
        (self.logdir / "config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2))

    # ------------------------------------------------------------- the loop
    def env_maker(self, from_pixels: bool | None = None, pixels_only: bool = True) -> Callable:
        """A picklable factory of one training environment with the agent's primer (for workers)."""
        return functools.partial(build_env, self.cfg, primer=self.agent.make_tensordict_primer(),
                                 from_pixels=from_pixels, pixels_only=pixels_only)

    def make_collection_env(self):
        """The environments one collector steps: the training env (``num_envs=1``), or a batch of
        ``num_envs`` (``SerialEnv``, or ``ParallelEnv`` with ``env_backend="parallel"``)."""
        if self.cfg.num_envs == 1:
            return self.env
        return _batched_env(self.cfg.num_envs, self.cfg.env_backend, self.env_maker())

    def make_collector(self, seed_rounds: int):
        """The TorchRL collector of this run's layout (``cfg.collector``).

        ``"sync"``: a :class:`~torchrl.collectors.Collector` in this process over
        :meth:`make_collection_env`; each batch is ``[num_envs, T]`` (``[T]`` for one env), one
        episode of ``T = max_episode_steps`` agent steps per environment. ``"async"``: a
        :class:`~torchrl.collectors.MultiAsyncCollector` of ``collector_workers`` processes, each
        stepping its own ``num_envs`` environments; it yields one worker's batch at a time.
        ``seed_rounds`` collection rounds use random actions (split over the workers).
        """
        cfg = self.cfg
        batch = cfg.num_envs * self.episode_steps
        kw = dict(frames_per_batch=batch, total_frames=-1, policy_device=self.device, env_device="cpu",
                  storing_device=self.buffer_device, exploration_type=ExplorationType.RANDOM)
        # TorchRL probes the policy once on a reset tensordict while building the collector:
        # run that probe noise-free (see the module docstring).
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            if cfg.collector == "sync":
                env = self.make_collection_env()
                collector = Collector(env, self.policy, init_random_frames=seed_rounds * batch, **kw)
                env.set_seed(cfg.seed + self.counters["episodes"])
                return collector
            workers = cfg.collector_workers
            make = functools.partial(_batched_env, cfg.num_envs, cfg.env_backend, self.env_maker())
            if cfg.collector == "distributed":
                from torchrl.collectors.distributed import DistributedCollector

                # torch.distributed workers started here (launcher="mp"); on a cluster use
                # launcher="submitit" (SLURM): see docs. frames_per_batch is the total of all workers.
                return DistributedCollector(
                    [make] * workers, self.policy, frames_per_batch=workers * batch, total_frames=2**62,
                    init_random_frames=math.ceil(seed_rounds / workers) * batch * workers, launcher="mp", sync=False,
                    backend="gloo", tcp_port=cfg.distributed_port, policy_device=self.device, env_device="cpu",
                    storing_device=self.buffer_device, exploration_type=ExplorationType.RANDOM)
            collector = MultiAsyncCollector([make] * workers, self.policy,
                                            init_random_frames=math.ceil(seed_rounds / workers) * batch, **kw)
            collector.set_seed(cfg.seed + self.counters["episodes"])
            return collector

    def updates_due(self, steps: int) -> int:
        """Model updates to run before the agent collects ``steps`` more agent steps.

        ``train_ratio=None``: ``updates_per_episode`` per episode to collect (``steps`` /
        ``max_episode_steps`` episodes), PlaNet's schedule. Otherwise ``train_ratio`` updates
        per agent step (one stored transition, i.e. ``action_repeat`` simulator steps): the
        fractional remainder is carried, so over a run ``updates = train_ratio x agent steps``
        to within one update, whatever ``num_envs``, ``collector`` or ``collector_workers``.
        """
        cfg = self.cfg
        if cfg.train_ratio is None:
            return cfg.updates_per_episode * (steps // self.episode_steps)
        self.schedule["ratio_steps"] += int(steps)
        owed = math.floor(cfg.train_ratio * self.schedule["ratio_steps"] + 1e-9) - self.schedule["ratio_updates"]
        self.schedule["ratio_updates"] += max(owed, 0)
        return max(owed, 0)

    def train(self) -> dict:
        """Runs until ``seed_episodes + episodes`` episodes have been collected.

        Each collection round brings ``num_envs`` episodes (one per environment; with the
        ``"async"`` collector, one worker's ``num_envs``); the updates that precede a round
        are :meth:`updates_due` for its steps, and with the ``"async"`` collector the new
        weights are then pushed to the workers (``update_policy_weights_``).
        """
        cfg = self.cfg
        check_layout(cfg)
        total = cfg.seed_episodes + cfg.episodes
        per_round = cfg.num_envs
        test_clock, video_clock, checkpoint_clock = Every(cfg.test_every), Every(cfg.video_every), \
            Every(cfg.checkpoint_every)
        seed_rounds = math.ceil(max(0, cfg.seed_episodes - self.counters["episodes"]) / per_round)
        collector = self.make_collector(seed_rounds)
        bar = tqdm(total=total, initial=self.counters["episodes"], disable=not cfg.progress,
                   desc=self.agent.name, unit="episode", dynamic_ncols=True, file=sys.stderr)
        failed = None
        threads = torch.get_num_threads()
        try:
            iterator = iter(collector)
            while self.counters["episodes"] < total:
                try:
                    episode = next(iterator)
                except Exception as err:  # a worker or an environment failed inside TorchRL's collector
                    failed = err
                    raise
                # TorchRL's batched envs reset the process's thread count when they start and close:
                # keep the run's (small ops under load slow down 10-100x with a second spinning thread)
                if torch.get_num_threads() != threads:
                    torch.set_num_threads(threads)
                train_return = self._store_episode(episode)
                before = self.counters["episodes"]
                per_round = max(1, episode.numel() // self.episode_steps)  # one episode per env in the batch
                self.counters["episodes"] += per_round
                episodes = self.counters["episodes"]
                metrics = {}
                if cfg.seed_episodes <= episodes < total:
                    self._check_episode_lengths()
                    metrics = self.update_model(self.updates_due(per_round * self.episode_steps))
                    if cfg.collector != "sync":
                        # TorchRL's weight push waits for every worker's acknowledgement: a dead
                        # worker would block it forever, so check the collector's processes first
                        dead = [(i, p.exitcode) for i, p in enumerate(getattr(collector, "procs", ()))
                                if not p.is_alive()]
                        if dead:
                            failed = RuntimeError(f"collector worker(s) died (index, exit code): {dead}")
                            raise failed
                        collector.update_policy_weights_()
                tested = cfg.test_every > 0 and (test_clock.crossed(before, episodes) or episodes >= total)
                if tested:
                    self.last_test_return = self.test(cfg.test_episodes)
                if video_clock.crossed(before, episodes) and self._can_sample():
                    self.log_predictions()
                checkpointed = checkpoint_clock.crossed(before, episodes)
                if checkpointed:
                    self.save_checkpoint()
                bar.update(episodes - before)
                loss = metrics.get("loss")  # "-" until there are updates (seed episodes), not "nan"
                bar.set_postfix(ret=f"{train_return:.1f}", test=_number(self.last_test_return),
                                loss="-" if loss is None else f"{loss:.2f}")
                if not cfg.progress and (tested or checkpointed or episodes >= total):
                    _say(f"episode {episodes}/{total}  env_steps {self.counters['env_steps']}  "
                         f"train_return {train_return:.1f}  test_return {self.last_test_return:.1f}  "
                         f"updates {self.counters['updates']}" + (f"  loss {loss:.3f}" if loss is not None else ""))
        finally:
            try:
                collector.shutdown()
            except Exception:  # noqa: BLE001 -- a dead worker must not hide the checkpoint below
                pass
            torch.set_num_threads(threads)
            bar.close()
            self.save_checkpoint()
            self.logger.experiment.flush()
            if failed is not None:
                raise CollectorFailedError(
                    f"collector={cfg.collector!r} failed after {self.counters['episodes']} episodes "
                    f"({type(failed).__name__}: {failed}). Everything stored so far ({len(self.buffer):,} steps) "
                    f"is in the checkpoint {self.checkpoint_dir}: continue with resume=True (--resume)."
                ) from failed
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
            self.counters["dropped_episodes"] += max(1, episode.numel() // self.episode_steps)
            return float("nan")
        # [T] (one env) or [N, T] (a batch of envs): the buffer labels each env's row apart, so no
        # stored episode (and no sampled chunk) mixes two environments' steps
        self.buffer.extend(episode.reshape(-1) if episode.ndim <= 1 else episode)
        if not self._buffer_reported:
            self._buffer_reported = True
            _say(f"replay buffer: {self.buffer.describe()}")
        steps = episode.numel()
        self.counters["env_steps"] += steps * self.action_repeat
        # mean return of the episodes that ended in this batch (tasks that terminate early end several)
        ret = float(finished_episode_returns(episode).mean())
        self.logger.log_scalar("train/episode_return", ret, step=self.counters["env_steps"])
        self.logger.log_scalar("train/episodes", self.counters["episodes"] + 1, step=self.counters["env_steps"])
        return ret

    def _can_sample(self) -> bool:
        lengths = self.buffer.episode_lengths()
        return bool(len(lengths)) and int(lengths.max()) >= self.cfg.chunk_length

    def _check_episode_lengths(self) -> None:
        """Refuses (clearly) a buffer where no episode is as long as ``chunk_length``."""
        lengths = self.buffer.episode_lengths()
        if len(lengths) and int(lengths.max()) < self.cfg.chunk_length:
            shown = sorted(set(lengths.tolist()))
            raise EpisodeTooShortError(
                f"env={self.cfg.env!r}: no stored episode is as long as chunk_length={self.cfg.chunk_length} "
                f"(observed episode lengths in agent steps: {shown[:20]}{' ...' if len(shown) > 20 else ''}; "
                f"episodes end early, e.g. by termination). Set chunk_length <= {max(shown)} "
                "(--set chunk_length=N).")

    def update_model(self, num_updates: int) -> dict[str, float]:
        """``num_updates`` agent updates on sampled ``[B, L]`` chunks; returns mean metrics.

        NaN policy: an update whose batch holds NaN/inf (the agent raises
        :class:`~torchrl_rssm.objectives.NonFiniteInputError`) is skipped with a warning and
        counted (``nan_policy="skip"``) or stops the run (``"raise"``).
        """
        sums: dict[str, torch.Tensor] = {}
        done = 0
        start = time.perf_counter()
        for _ in range(num_updates):
            batch = self.buffer.sample()
            try:
                metrics = self.agent.update(batch)
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
        step = self.counters["env_steps"]
        for k, v in metrics.items():
            self.logger.log_scalar(k if "/" in k else (f"loss/{k}" if k.startswith("loss") else f"model/{k}"),
                                   v, step=step)
        self.logger.log_scalar("perf/updates_per_s", done / max(elapsed, 1e-9), step=step)
        self.logger.log_scalar("train/updates", self.counters["updates"], step=step)
        self.logger.log_scalar("train/skipped_updates", self.counters["skipped_updates"], step=step)
        return metrics

    @torch.no_grad()
    def rollout_test(self, num_envs: int, from_pixels: bool | None = None, pixels_only: bool = True):
        """``num_envs`` noise-free episodes (``DETERMINISTIC``) as one batch; returns the rollout."""
        threads = torch.get_num_threads()
        env = self.make_test_env(num_envs, from_pixels=from_pixels, pixels_only=pixels_only)
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            rollout = env.rollout(self.episode_steps, self.policy, break_when_any_done=False)
        env.close()
        # TorchRL's batched envs reset the process's thread count when they close
        # (torchrl/envs/batched_envs.py): put ours back, or small ops slow down under load.
        torch.set_num_threads(threads)
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
        """The agent's pictures (reconstructions, open-loop predictions) from a replay batch."""
        self.agent.log_predictions(self.buffer.sample(), self.logger, self.counters["env_steps"])

    # ----------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        agent_state = self.agent.state_dict()
        clash = set(agent_state) & set(_CORE_KEYS)
        if clash:
            raise ValueError(f"{type(self.agent).__name__}.state_dict uses keys reserved by the trainer: {clash}.")
        return {
            **agent_state, "agent_keys": sorted(agent_state), "algo": self.cfg.algo,
            "config": self.cfg.to_dict(), "counters": dict(self.counters),
            "rng": get_rng_state(),
            "last_test_return": self.last_test_return, "schedule": dict(self.schedule),
        }

    def save_checkpoint(self) -> Path:
        """Writes the checkpoint atomically (and config.json beside it, so they always match)."""
        path = write_checkpoint(self.logdir, self.state_dict(), self.buffer)
        self._write_config()
        return path

    def load_checkpoint(self) -> None:
        # the newest checkpoint that passes every check (else the previous one, with a warning)
        folder, state = resume_checkpoint(self.logdir, algo=self.cfg.algo, map_location=self.device,
                                          replay=self._restore_buffer)
        keys = state.get("agent_keys") or [k for k in state if k not in _CORE_KEYS]
        self.agent.load_state_dict({k: state[k] for k in keys})
        self.counters.update(state["counters"])
        self.last_test_return = state.get("last_test_return", float("nan"))
        self.schedule.update(state.get("schedule", {}))
        set_rng_state(state["rng"])
        if not self._restore_buffer:
            return
        self.buffer = load_replay_buffer(folder / "replay", self.buffer)
        if len(self.buffer):  # else at the first write, when the row layout is known
            self._buffer_reported = True
            _say(f"replay buffer: {self.buffer.describe()}, {len(self.buffer):,} steps restored")


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
