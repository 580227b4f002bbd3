"""The PlaNet pipeline's throughput: collection with the planner, and model updates.

Rows (``ours_ms`` per unit named in the row; ``torchrl_ms`` is null because TorchRL has no
PlaNet recipe to run the same work; the per-action planner comparison against TorchRL's
``CEMPlanner`` is in bench_planner.py):

- ``collect (<preset>)``: ms per agent step of a TorchRL ``Collector`` driving the planning
  policy (filter + CEM + exploration noise) in the real environment; the config holds the
  environment steps per second (agent steps x action repeat).
- ``update (<preset>)``: ms per model update (replay sample + RSSMLoss forward/backward +
  Adam step); the config holds updates per second.

Settings: the ``quick`` preset (state vectors) and the paper's PlaNet setting on
cartpole-swingup from pixels (B=50, L=50, N=1000, H=12, I=10, K=100). ``--quick`` shrinks
the PlaNet row's batch and candidates so it finishes on a 2-core CPU.

    python benchmarks/bench_pipeline.py [--quick] [--json PATH] [--device cuda]
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import parse_args, report, row  # noqa: E402

from torchrl.collectors import Collector  # noqa: E402
from torchrl.envs.utils import ExplorationType  # noqa: E402

from torchrl_rssm.recipes import Trainer, preset  # noqa: E402


DEFAULT_THREADS = torch.get_num_threads()


def measure(name: str, cfg, steps: int, updates: int, device: str) -> list[dict]:
    cfg.device, cfg.progress, cfg.test_every, cfg.video_every, cfg.checkpoint_every = device, False, 0, 0, 0
    cfg.logdir = tempfile.mkdtemp(prefix="bench_pipeline_")
    torch.set_num_threads(DEFAULT_THREADS)  # the preset's num_threads (if any) applies below
    trainer = Trainer(cfg)
    # fill the buffer with random episodes so that updates can sample [B, L] chunks
    collector = Collector(trainer.env, None, frames_per_batch=trainer.episode_steps, total_frames=-1,
                          storing_device=trainer.device)
    for i, episode in enumerate(collector):
        trainer.buffer.extend(episode.to(trainer.device))
        if len(trainer.buffer) >= max(2 * cfg.chunk_length, cfg.batch_size) and i >= 1:
            break
    collector.shutdown()

    trainer.update_model(1)  # warm-up
    times = []
    for _ in range(updates):
        start = time.perf_counter()
        trainer.update_model(1)
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    update_ms = statistics.median(times)

    collector = Collector(trainer.env, trainer.policy, frames_per_batch=steps, total_frames=-1,
                          policy_device=trainer.device, env_device="cpu", storing_device=trainer.device,
                          exploration_type=ExplorationType.RANDOM)
    batches = iter(collector)
    next(batches)  # warm-up (allocations, first planner call)
    start = time.perf_counter()
    next(batches)
    collect_ms = (time.perf_counter() - start) * 1e3 / steps
    collector.shutdown()
    repeat = trainer.action_repeat
    cfg_row = dict(env=cfg.env, from_pixels=cfg.from_pixels, batch=cfg.batch_size, chunk=cfg.chunk_length,
                   candidates=cfg.num_candidates, horizon=cfg.planning_horizon, iterations=cfg.optim_steps, top_k=cfg.top_k,
                   belief=cfg.belief_dim, state=cfg.state_dim, action_repeat=repeat,
                   threads=torch.get_num_threads())
    return [
        row(f"collect ({name})", collect_ms, None, device,
            dict(cfg_row, agent_steps=steps, env_steps_per_s=round(1e3 * repeat / collect_ms, 2)),
            "ms per agent step: Collector + env + filter + CEM + noise; TorchRL has no PlaNet recipe"),
        row(f"update ({name})", update_ms, None, device,
            dict(cfg_row, updates_per_s=round(1e3 / update_ms, 3)),
            "ms per update: replay sample + RSSMLoss fwd/bwd + Adam; TorchRL has no PlaNet recipe"),
    ]


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    warnings.filterwarnings("ignore")
    rows = measure("quick preset, state", preset("quick"), steps=25 if args.quick else 125,
                   updates=args.repeats or (5 if args.quick else 20), device=args.device)
    planet = preset("cartpole-swingup")
    if args.quick:  # the paper's shapes cost ~20 s per update and ~1 s per action on a 2-core CPU
        planet.batch_size, planet.chunk_length, planet.num_candidates, planet.top_k = 8, 16, 200, 20
    name = "PlaNet setting, pixels" + (" (reduced: --quick)" if args.quick else "")
    rows += measure(name, planet, steps=4 if args.quick else 10, updates=args.repeats or (2 if args.quick else 3),
                    device=args.device)
    report(rows, args.json)


if __name__ == "__main__":
    main()
