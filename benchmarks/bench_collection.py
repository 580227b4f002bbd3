"""Collection throughput by layout: environments per batch, synchronous and asynchronous.

Rows (``ours_ms`` = ms per environment step, i.e. 1000 / env steps per second, where an env step
is one simulator step: agent steps x action repeat; ``torchrl_ms`` is null: TorchRL has no PlaNet
recipe to collect the same way, so there is no built-in to time against):

- ``collect planner-quick n=<N> sync``: the ``quick`` preset's planner (state vectors, J=256,
  H=12, I=6) acting on a batch of N environments (``SerialEnv``) through a TorchRL ``Collector``.
  The note holds env steps/s and the ratio to N=1: the planner runs once per step for the whole
  batch, so on a compute-bound CPU batching pays only through better-filled matrix products; a
  GPU is where it pays most (one kernel launch sequence for all environments).
- ``collect planner-planet n=<N> sync``: the paper's planner (J=1000, H=12, I=10, K=100) on the
  PlaNet model sizes (from state vectors here, to time the planner rather than rendering).
- ``collect dreamer-actor n=<N> sync``: a Dreamer-style actor (an MLP reading state and belief,
  in TorchRL's ``ProbabilisticActor`` with a ``TanhNormal``) behind the same belief filter.
- ``collect planner-quick n=1 async w=2``: TorchRL's ``MultiAsyncCollector`` with 2 worker
  processes (start-up not timed).
- ``loop planner-quick n=<N> ratio=<r>``: the whole training loop (collection + updates + replay)
  at a fixed ``train_ratio``: env steps per second of the run.

    python benchmarks/bench_collection.py [--quick] [--json PATH] [--device cuda]
"""
from __future__ import annotations

import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import parse_args, make_parser, report, row  # noqa: E402

from tensordict.nn import NormalParamExtractor, TensorDictModule  # noqa: E402
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal  # noqa: E402

from torchrl_rssm.policies import DreamerPolicy  # noqa: E402
from torchrl_rssm.recipes import Trainer, preset  # noqa: E402

PLANET = dict(state_dim=30, belief_dim=200, hidden_dim=200, embed_dim=200, planning_horizon=12, optim_steps=10,
              num_candidates=1000, top_k=100)


def _cfg(name: str, device: str, num_envs: int, steps: int, **kw):
    cfg = preset("quick")
    cfg.logdir = tempfile.mkdtemp(prefix="bench_collection_")
    cfg.progress, cfg.video_every, cfg.test_every, cfg.checkpoint_every = False, 0, 0, 0
    cfg.device, cfg.num_envs, cfg.max_episode_steps = device, num_envs, steps  # num_threads: the preset's (1)
    cfg.chunk_length = min(cfg.chunk_length, steps)
    if name == "planner-planet":
        for k, v in PLANET.items():
            setattr(cfg, k, v)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def _dreamer_actor(trainer: Trainer):
    """A Dreamer-style actor (2 ELU layers, TanhNormal) acting through ``DreamerPolicy``'s belief filter.

    Lighter than ``make_dreamer_actor``'s 4 layers: this row measures collection overhead with a
    cheap policy, against the planner's rows."""
    cfg, spec = trainer.cfg, trainer.env.action_spec
    net = torch.nn.Sequential(MLP(in_features=cfg.state_dim + cfg.belief_dim, out_features=2 * spec.shape[-1],
                                  num_cells=[cfg.actor_hidden_dim] * 2, activation_class=torch.nn.ELU),
                              NormalParamExtractor()).to(trainer.device)

    class Cat(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, state, belief):
            return self.net(torch.cat([state, belief], -1))

    module = TensorDictModule(Cat(net), in_keys=["state", "belief"], out_keys=["loc", "scale"])
    actor = ProbabilisticActor(module, in_keys=["loc", "scale"], out_keys=["action"], distribution_class=TanhNormal,
                               spec=spec.to(trainer.device),
                               distribution_kwargs={"low": spec.space.low.to(trainer.device),
                                                    "high": spec.space.high.to(trainer.device)})
    return DreamerPolicy(trainer.world_model, actor, spec, exploration_noise=0.0,
                         observation_transform=trainer.policy.observation_transform)


def collect_rate(name: str, device: str, num_envs: int, steps: int, batches: int, collector: str = "sync",
                 workers: int = 2) -> float:
    """Env steps per second of ``batches`` collector batches (one untimed warm-up batch)."""
    cfg = _cfg(name, device, num_envs, steps, collector=collector, collector_workers=workers)
    trainer = Trainer(cfg)
    if name == "dreamer-actor":
        trainer.agent.policy = _dreamer_actor(trainer)
    threads = torch.get_num_threads()  # the preset's (1): TorchRL's batched envs reset it on start/close
    coll = trainer.make_collector(seed_rounds=0)
    it = iter(coll)
    next(it)  # warm-up (and, async, the workers' start)
    torch.set_num_threads(threads)  # every row at the same thread count, whatever num_envs
    start = time.perf_counter()
    frames = 0
    for _ in range(batches):
        frames += next(it).numel()
    elapsed = time.perf_counter() - start
    coll.shutdown()
    torch.set_num_threads(threads)
    return frames * trainer.action_repeat / elapsed


def loop_rate(device: str, num_envs: int, steps: int, episodes: int, ratio: float) -> float:
    """Env steps per second of a whole run (seed episodes, updates at ``ratio``, collection)."""
    cfg = _cfg("planner-quick", device, num_envs, steps, train_ratio=ratio, seed_episodes=num_envs,
               episodes=episodes, chunk_length=min(25, steps), buffer_capacity=None)
    trainer = Trainer(cfg)
    start = time.perf_counter()
    out = trainer.train()  # the trainer keeps its num_threads across batched envs (see Trainer.train)
    return out["env_steps"] / (time.perf_counter() - start)


def main() -> None:
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--no-async", action="store_true", help="skip the multi-process row (worker start-up)")
    parser.add_argument("--smoke", action="store_true", help="two rows only (device_check.sh's CPU dry run)")
    args = parse_args(__doc__.splitlines()[0], parser)
    warnings.filterwarnings("ignore")
    dev = args.device
    quick = args.quick
    steps = 10 if quick else 50
    rows = []

    def add(label, rate, base, config, extra=""):
        ratio = "" if base is None else f", {rate / base:.2f}x env steps/s vs n=1"
        rows.append(row(label, 1e3 / rate, None, dev, dict(config, env_steps_per_s=round(rate, 1)),
                        f"{rate:.0f} env steps/s{ratio}{extra}; torchrl: no PlaNet/Dreamer collection recipe"))
        print(f"{label}: {rate:.0f} env steps/s{ratio}", file=sys.stderr, flush=True)

    # (setting, num_envs, timed batches, agent steps per env per batch)
    settings = [("planner-quick", (1, 2, 4, 8), 2 if quick else 4, steps),
                ("dreamer-actor", (1, 8) if quick else (1, 2, 4, 8), 2 if quick else 4, steps),
                ("planner-planet", (1, 4) if quick else (1, 2, 4, 8), 1 if quick else 2, 2 if quick else 10)]
    if args.smoke:
        settings, args.no_async = [("planner-quick", (1, 2), 1, 2)], True
    for name, ns, batches, env_steps in settings:
        base = None
        for n in ns:
            rate = collect_rate(name, dev, n, env_steps, batches)
            base = rate if n == 1 else base
            add(f"collect {name} n={n} sync", rate, None if n == 1 else base,
                dict(setting=name, num_envs=n, collector="sync", steps_per_env_batch=env_steps))
    if not args.no_async:
        rate = collect_rate("planner-quick", dev, 1, steps, 4, collector="async", workers=2)
        add("collect planner-quick n=1 async w=2", rate, None,
            dict(setting="planner-quick", num_envs=1, collector="async", workers=2),
            ", workers' start not timed")
    ratio = 0.1
    base = None
    for n in (() if args.smoke else (1, 8)):
        rate = loop_rate(dev, n, steps if quick else 50, episodes=n if quick else 16, ratio=ratio)
        base = rate if n == 1 else base
        add(f"loop planner-quick n={n} ratio={ratio}", rate, None if n == 1 else base,
            dict(setting="planner-quick", num_envs=n, train_ratio=ratio))
    report(rows, args.json)


if __name__ == "__main__":
    main()
