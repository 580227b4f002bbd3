"""Collection: the run's environments, batched environments, TorchRL collectors and their checks.

Written once here and used by the trainer for training and test episodes alike:

* :class:`EnvFactory`: one environment of the run (:func:`~torchrl_rssm.envs.make_env` with the
  run's settings, or a function of the user's, ``env_fn(seed)``), with its own copy of the
  agent's primer and an :class:`~torchrl_rssm.envs.EnvRandomState` (the simulator's generator
  state before each reset, which a checkpoint keeps for an exact resume). Picklable (with a
  picklable ``env_fn``), so TorchRL's ``ParallelEnv`` and multi-process collectors can build it
  in their workers.
* :func:`batched_env`: ``num_envs`` copies as one ``SerialEnv`` / ``ParallelEnv``;
  :func:`make_test_env` is the same batching, seeded apart from training.
* :func:`make_collector`: the TorchRL collector of the run's layout (``collector``:
  ``"sync"``, ``"async"``, ``"distributed"``); :class:`Collection` iterates it, checks its
  workers are alive, pushes new weights to them and reports a failure as :class:`WorkerFailure`.
* :func:`finished_episode_returns` (collected batches) and :func:`first_episode_returns` (test
  rollouts, which run past an episode's end): returns counted once per episode.
* :class:`keep_num_threads`: TorchRL's batched environments reset the process's thread count
  when they start and close (``torchrl/envs/batched_envs.py``); the run's count is put back
  (small ops under load slow down 10-100x with a second spinning thread).

Exploration modes: collectors run the policy under ``ExplorationType.RANDOM``. TorchRL probes
the policy once on a reset tensordict while building a collector, to learn its output
entries; that probe runs here under ``DETERMINISTIC`` (it writes no data and draws no
exploration noise), so every call of the policy has a deliberate mode.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator

import torch
from tensordict import TensorDictBase
from torchrl.collectors import Collector, MultiAsyncCollector
from torchrl.envs import EnvBase, ParallelEnv, SerialEnv, TransformedEnv
from torchrl.envs.utils import ExplorationType, set_exploration_type

from ..envs import EnvRandomState, make_env
from .config import Env, RunConfig

__all__ = ["COLLECTORS", "ENV_BACKENDS", "Collection", "EnvFactory", "WorkerFailure", "batched_env", "check_layout",
           "finished_episode_returns", "first_episode_returns", "keep_num_threads", "make_collector", "make_test_env"]

#: collection layouts (``RunConfig.collector``) and batched-env backends (``RunConfig.env_backend``)
COLLECTORS = ("sync", "async", "distributed")
ENV_BACKENDS = ("serial", "parallel")
#: test environments are seeded this far from the training environments
TEST_SEED_OFFSET = 10_000


class WorkerFailure(RuntimeError):
    """The collector (an environment, or a worker process) failed; the cause is chained."""


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
    if cfg.frames_per_batch is not None and cfg.frames_per_batch % cfg.num_envs:
        raise ValueError(f"frames_per_batch={cfg.frames_per_batch!r}: expected a multiple of num_envs={cfg.num_envs} "
                         "(every environment steps the same number of agent steps in a round).")
    if cfg.updates_per_episode < 0:
        raise ValueError(f"updates_per_episode={cfg.updates_per_episode!r}: expected an integer >= 0.")


@dataclasses.dataclass
class EnvFactory:
    """One environment of the run, with its own copy of ``primer`` (a transform has one parent).

    Args:
        cfg: the run's configuration (its :class:`~torchrl_rssm.recipes.config.Env` section).
        env_fn: builds the environment instead, as ``env_fn(seed)``: e.g. a task built in code.
            It should return what :func:`~torchrl_rssm.envs.make_env` returns (a
            ``TransformedEnv`` with ``InitTracker`` and ``StepCounter``, and the attributes
            ``action_repeat`` and ``max_episode_steps``; without them, ``action_repeat`` is 1
            and ``cfg.max_episode_steps`` is the episode limit).
        primer: the agent's ``make_tensordict_primer()`` (copied into every environment).
        from_pixels, pixels_only: override the run's observation for test videos (``make_env`` only).

    Examples:
        >>> from torchrl_rssm.recipes import preset
        >>> env = EnvFactory(preset("tiny"))(seed=0)
        >>> env.max_episode_steps, "observation" in env.observation_spec.keys()
        (20, True)
    """

    cfg: RunConfig
    env_fn: Callable[[int | None], EnvBase] | None = None
    primer: object | None = None
    from_pixels: bool | None = None
    pixels_only: bool = True

    def with_primer(self, primer) -> EnvFactory:
        return dataclasses.replace(self, primer=primer)

    def __call__(self, seed: int | None = None) -> EnvBase:
        if self.env_fn is None:
            kw = dataclasses.asdict(self.cfg.section(Env))
            name = kw.pop("env")
            if self.from_pixels is not None:
                kw["from_pixels"] = self.from_pixels
            env = make_env(name, seed=seed, primers=None if self.primer is None else self.primer.clone(),
                           pixels_only=self.pixels_only, **kw)
            # the simulator's generator state before each reset, for an exact resume (reads only)
            return env.append_transform(EnvRandomState())
        if self.from_pixels is not None or not self.pixels_only:
            raise ValueError("env_fn: rendering extra pixels (a video of a state-vector run) needs the run's own "
                             "make_env; give env_fn an environment that renders them itself.")
        env = self.env_fn(seed)
        if not isinstance(env, EnvBase):
            raise TypeError(f"env_fn(seed) returned {type(env).__name__}: expected a TorchRL environment (EnvBase).")
        if self.primer is not None:
            if not isinstance(env, TransformedEnv):
                env = TransformedEnv(env)
            env.append_transform(self.primer.clone())
        if not isinstance(env, TransformedEnv):
            env = TransformedEnv(env)
        return env.append_transform(EnvRandomState())


def batched_env(num_envs: int, backend: str, make: Callable[[], EnvBase]) -> EnvBase:
    """``num_envs`` copies of ``make()`` as one TorchRL batched env (``make()`` itself for one)."""
    if num_envs == 1:
        return make()
    return (SerialEnv if backend == "serial" else ParallelEnv)(num_envs, make)


def make_test_env(make: EnvFactory, num_envs: int, seed: int) -> EnvBase:
    """``num_envs`` copies of the task in one ``SerialEnv`` batch, every copy seeded with ``seed``
    and the batch then seeded as a whole (sub-env ``i`` gets ``seed + i``)."""
    env = batched_env(num_envs, "serial", lambda: make(seed=seed))
    env.set_seed(seed)
    return env


def first_episode_returns(rollout: TensorDictBase) -> torch.Tensor:
    """Return of each environment's first episode in a ``[T]`` or ``[E, T]`` rollout.

    Test rollouts run ``max_episode_steps`` steps without stopping at ``done`` (a batch of
    environments steps together), so only rewards up to and including the first ``done`` count.

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


class keep_num_threads:
    """Puts the process's torch thread count back to what it was on entry (TorchRL's batched envs
    reset it when they start and close).

    Examples:
        >>> with keep_num_threads() as threads:
        ...     torch.set_num_threads(threads.count + 1)
        >>> torch.get_num_threads() == threads.count
        True
    """

    def __init__(self):
        self.count = torch.get_num_threads()

    def restore(self) -> None:
        if torch.get_num_threads() != self.count:
            torch.set_num_threads(self.count)

    def __enter__(self) -> keep_num_threads:
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


def make_collector(cfg: RunConfig, make: EnvFactory, env: EnvBase, policy, round_steps: int, seed_rounds: int,
                   seed: int, device: torch.device, storing_device: torch.device):
    """The TorchRL collector of the run's layout (``cfg.collector``).

    ``"sync"``: a :class:`~torchrl.collectors.Collector` in this process over ``env`` (one
    environment) or a batch of ``num_envs`` built by ``make``; each batch is ``[num_envs, T]``
    (``[T]`` for one env), ``T = round_steps`` agent steps per environment (one episode, unless
    ``frames_per_batch`` sets another round).
    ``"async"``: a :class:`~torchrl.collectors.MultiAsyncCollector` of ``collector_workers``
    processes, each stepping its own ``num_envs`` environments; it yields one worker's batch at a
    time. ``"distributed"``: TorchRL's ``DistributedCollector`` (``launcher="mp"``).
    ``seed_rounds`` collection rounds use random actions (split over the workers).
    """
    batch = cfg.num_envs * round_steps
    kw = dict(frames_per_batch=batch, total_frames=-1, policy_device=device, env_device="cpu",
              storing_device=storing_device, exploration_type=ExplorationType.RANDOM)
    with set_exploration_type(ExplorationType.DETERMINISTIC):  # TorchRL's probe: noise-free
        if cfg.collector == "sync":
            envs = env if cfg.num_envs == 1 else batched_env(cfg.num_envs, cfg.env_backend, make)
            collector = Collector(envs, policy, init_random_frames=seed_rounds * batch, **kw)
            envs.set_seed(seed)
            if cfg.num_envs > 1:
                # the collector reset the batch before it was seeded (its sub-environments unseeded): the
                # seeded simulators then step from other states than the observations it holds. Reset
                # again, so that the first stored observations are those of the seeded initial states.
                # (One environment is built with the seed, so its first reset is already the seeded one.)
                collector.reset()
            return collector
        workers = cfg.collector_workers
        make_batch = _BatchFactory(cfg.num_envs, cfg.env_backend, make)
        if cfg.collector == "distributed":
            from torchrl.collectors.distributed import DistributedCollector

            # torch.distributed workers started here (launcher="mp"); on a cluster use
            # launcher="submitit" (SLURM). frames_per_batch is the total of all workers.
            return DistributedCollector(
                [make_batch] * workers, policy, frames_per_batch=workers * batch, total_frames=2**62,
                init_random_frames=math.ceil(seed_rounds / workers) * batch * workers, launcher="mp", sync=False,
                backend="gloo", tcp_port=cfg.distributed_port, policy_device=device, env_device="cpu",
                storing_device=storing_device, exploration_type=ExplorationType.RANDOM)
        collector = MultiAsyncCollector([make_batch] * workers, policy,
                                        init_random_frames=math.ceil(seed_rounds / workers) * batch, **kw)
        collector.set_seed(seed)
        return collector


@dataclasses.dataclass
class _BatchFactory:
    """``batched_env(num_envs, backend, make)`` as a picklable callable (for worker processes)."""

    num_envs: int
    backend: str
    make: EnvFactory

    def __call__(self) -> EnvBase:
        return batched_env(self.num_envs, self.backend, self.make)


class Collection:
    """Iterates a TorchRL collector for the trainer: batches out, the thread count kept, workers
    checked before every weight push, any failure raised as :class:`WorkerFailure`."""

    def __init__(self, collector, threads: keep_num_threads, in_process: bool):
        self.collector, self.threads, self.in_process = collector, threads, in_process

    def __iter__(self) -> Iterator[TensorDictBase]:
        iterator = iter(self.collector)
        while True:
            try:
                batch = next(iterator)
            except Exception as err:  # a worker or an environment failed inside TorchRL's collector
                raise WorkerFailure(f"{type(err).__name__}: {err}") from err
            self.threads.restore()
            yield batch

    def push_weights(self) -> None:
        """Sends the policy's new weights to the worker processes (nothing to do in-process).

        TorchRL's weight push waits for every worker's acknowledgement: a dead worker would block
        it forever, so the collector's processes are checked first.
        """
        if self.in_process:
            return
        dead = [(i, p.exitcode) for i, p in enumerate(getattr(self.collector, "procs", ())) if not p.is_alive()]
        if dead:
            raise WorkerFailure(f"collector worker(s) died (index, exit code): {dead}")
        self.collector.update_policy_weights_()

    def close(self) -> None:
        try:
            self.collector.shutdown()
        except Exception:  # noqa: BLE001 -- a dead worker must not hide what the caller does next
            pass
        self.threads.restore()
