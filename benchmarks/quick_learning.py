"""Learning check of the ``quick`` preset: final test return over seeds against a random policy.

Runs ``torchrl-rssm train --seed S`` (the README's main command) for each seed, reads
the final test return (mean of the preset's batched noise-free test episodes) and the
wall time, runs a uniformly random policy for as many episodes on the same task, and
writes ``results/quick_learning.json`` and ``results/quick_learning.md``.

    python benchmarks/quick_learning.py                       # seeds 0 1 2, two at a time
    python benchmarks/quick_learning.py --seeds 0 --jobs 1
    python benchmarks/quick_learning.py --reuse               # keep finished runs under --root

Each run uses one thread (the preset's ``num_threads=1``), so ``--jobs 2`` on a 2-core
machine gives every run a core of its own.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).parent


def train(seed: int, root: Path, reuse: bool) -> dict:
    logdir = root / f"s{seed}"
    result_file = logdir / "result.json"
    if reuse and result_file.exists():
        return json.loads(result_file.read_text())
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "torchrl_rssm.cli", "train", "--seed", str(seed), "--logdir", str(logdir),
         "--no-progress"], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result.update(seed=seed, wall_s=round(time.perf_counter() - start, 1))
    result_file.write_text(json.dumps(result))
    return result


def random_returns(env_name: str, episodes: int, seed: int = 10_000) -> list[float]:
    import torch

    from torchrl_rssm.envs import make_env

    torch.manual_seed(seed)
    returns = []
    for i in range(episodes):
        env = make_env(env_name, from_pixels=False, seed=seed + i)
        returns.append(float(env.rollout(env.max_episode_steps)["next", "reward"].sum()))
    return returns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--root", type=Path, default=Path("runs/quick-learning"))
    parser.add_argument("--reuse", action="store_true", help="reuse finished runs found under --root")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "quick_learning")
    args = parser.parse_args()

    sys.path.insert(0, str(HERE.parent))
    from torchrl_rssm.recipes import preset

    cfg = preset("quick")
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(lambda s: train(s, args.root, args.reuse), args.seeds))
    rand = random_returns(cfg.env, cfg.test_episodes * len(args.seeds))
    ours = [r["test_return"] for r in runs]
    summary = {
        "task": f"{cfg.env} (state vectors, action repeat {cfg.action_repeat})",
        "command": "torchrl-rssm train --seed S", "seeds": args.seeds,
        "ours_final_test_return": [round(x, 1) for x in ours],
        "ours_mean": round(statistics.mean(ours), 1),
        "random_mean": round(statistics.mean(rand), 1), "random_std": round(statistics.stdev(rand), 1),
        "random_episodes": len(rand),
        "wall_s": [r["wall_s"] for r in runs], "episodes": runs[0]["episodes"],
        "env_steps": runs[0]["env_steps"], "jobs": args.jobs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    table = (
        "| task | random policy | ours (final test return, per seed) | mean | wall time per run |\n"
        "|---|---|---|---|---|\n"
        f"| {summary['task']} | {summary['random_mean']} ± {summary['random_std']} "
        f"({len(rand)} episodes) | {', '.join(f'{x:.0f}' for x in ours)} | {summary['ours_mean']} | "
        f"{', '.join(f'{w / 60:.1f}' for w in summary['wall_s'])} min |\n"
    )
    args.out.with_suffix(".md").write_text(table)
    print(table)
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
