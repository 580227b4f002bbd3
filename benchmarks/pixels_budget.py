"""Where a pixel run's time goes: seconds per update and per collected episode, and a run estimate.

Builds the trainer of a preset (default ``quick-pixels``), fills the replay buffer with
random episodes, then times ``--updates`` gradient steps and one collected agent episode
(planning every step), and prints the estimated wall time of the whole run
(``episodes x (updates_per_episode x update + episode)`` plus tests), optionally with a
``torch.profiler`` summary of one update. Sizes can be varied with ``--set`` (the conv
width: ``--set channels=N``, PlaNet's 32).

    python benchmarks/pixels_budget.py                               # the preset as it is
    python benchmarks/pixels_budget.py --set batch_size=8 --set channels=32 --profile
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import torch  # noqa: E402
from torchrl.envs.utils import ExplorationType, set_exploration_type  # noqa: E402

from torchrl_rssm.recipes import Trainer, apply_overrides, preset  # noqa: E402


def measure(name: str, overrides: list[str], updates: int, profile: bool) -> dict:
    cfg = preset(name)
    apply_overrides(cfg, overrides)
    cfg.progress, cfg.video_every, cfg.test_every = False, 0, 0
    logdir = Path(tempfile.mkdtemp(prefix="pixels_budget_"))
    cfg.logdir = str(logdir)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    trainer = Trainer(cfg)
    env = trainer.env
    for _ in range(2):  # random episodes to sample from
        trainer._store_episode(env.rollout(trainer.episode_steps, break_when_any_done=False))
    trainer.update_model(2)  # warm-up
    start = time.perf_counter()
    trainer.update_model(updates)
    per_update = (time.perf_counter() - start) / updates
    steps = min(trainer.episode_steps, 40)
    start = time.perf_counter()
    with set_exploration_type(ExplorationType.RANDOM), torch.no_grad():
        env.rollout(steps, trainer.policy, break_when_any_done=False)
    per_step = (time.perf_counter() - start) / steps
    per_episode = per_step * trainer.episode_steps
    total_eps = cfg.seed_episodes + cfg.episodes
    tests = (cfg.episodes // cfg.test_every + 1) if cfg.test_every else 1
    estimate = (cfg.episodes * (cfg.updates_per_episode * per_update + per_episode)
                + tests * per_step * trainer.episode_steps * 1.5)  # a test batch: ~1.5x one episode
    params = sum(p.numel() for p in trainer.world_model.parameters())
    out = {"preset": name, "overrides": overrides, "channels": cfg.channels, "threads": torch.get_num_threads(),
           "params": params, "s_per_update": round(per_update, 3), "s_per_agent_step": round(per_step, 4),
           "s_per_episode_collect": round(per_episode, 1), "episodes": total_eps,
           "updates_per_episode": cfg.updates_per_episode, "estimated_run_min": round(estimate / 60, 1)}
    if profile:
        from torch.profiler import ProfilerActivity, profile as prof
        with prof(activities=[ProfilerActivity.CPU]) as p:
            trainer.update_model(1)
        out["profile"] = p.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
    trainer.env.close()
    shutil.rmtree(logdir, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick-pixels")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--updates", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    out = measure(args.preset, args.overrides, args.updates, args.profile)
    table = out.pop("profile", None)
    from quick_learning import git_state

    out["command"] = "python benchmarks/pixels_budget.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    out.update(git_state(HERE.parent))
    print(json.dumps(out))
    if table:
        print(table)


if __name__ == "__main__":
    main()
