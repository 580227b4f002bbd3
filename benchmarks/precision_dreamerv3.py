"""The DreamerV3 agent's whole update at a preset's size: float32 against bfloat16 autocast, timed in turn.

Builds ``DreamerV3Agent`` for ``--preset`` on ``--env``, collects ``batch_size`` random chunks of
``chunk_length`` steps, and times ``agent.update(batch)`` (world model, actor, critic, their backward
passes and optimiser steps, the slow critic) with ``autocast_dtype="float32"`` and ``"bfloat16"``
alternately; medians after warm-up. There is no TorchRL agent to compare with here
(``bench_dreamerv3.py --bf16`` compares the update with TorchRL's losses under both precisions).

    python benchmarks/precision_dreamerv3.py --preset dreamerv3-quick --threads 1 --json benchmarks/results/precision_dreamerv3-quick.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import git_state  # noqa: E402

from torchrl_rssm.envs import make_env  # noqa: E402
from torchrl_rssm.recipes import preset  # noqa: E402
from torchrl_rssm.recipes.dreamerv3 import DreamerV3Agent  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="dreamerv3-quick")
    parser.add_argument("--env", default="dmc:walker-walk")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = preset(args.preset)
    env = make_env(args.env, from_pixels=False, action_repeat=2 if args.env.startswith("dmc:") else 1,
                   max_episode_steps=4 * cfg.chunk_length, seed=0)
    agent = DreamerV3Agent(cfg, env, torch.device("cpu"))
    env.append_transform(agent.make_tensordict_primer())
    chunks = [env.rollout(cfg.chunk_length, break_when_any_done=False) for _ in range(cfg.batch_size)]
    batch = torch.stack(chunks).exclude("state", "belief", ("next", "state"), ("next", "belief"))
    batch["is_init"][:, 0] = True

    def update(dtype: str) -> None:
        agent.cfg.autocast_dtype = dtype
        agent.update(batch)

    times: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    for dtype in list(times) * 2:  # warm-up
        update(dtype)
    for _ in range(args.repeats):
        for dtype in times:
            start = time.perf_counter()
            update(dtype)
            times[dtype].append((time.perf_counter() - start) * 1e3)
    ms = {dtype: round(statistics.median(t), 1) for dtype, t in times.items()}
    result = {"preset": args.preset, "env": args.env, "batch": [cfg.batch_size, cfg.chunk_length],
              "threads": args.threads, "ms": ms, "bf16_speedup": round(ms["float32"] / ms["bfloat16"], 2),
              "command": "python benchmarks/precision_dreamerv3.py " + " ".join(sys.argv[1:] if argv is None else argv),
              **git_state()}
    print(f"{args.preset} update on {args.env}: float32 {ms['float32']} ms, bfloat16 autocast {ms['bfloat16']} ms "
          f"({result['bf16_speedup']}x)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
