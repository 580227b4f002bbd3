"""A preset's whole replay buffer, filled: the bytes it holds, measured.

Builds the replay buffer a run of ``--preset`` builds (its capacity: every step of the run, up to
the trainer's cap; its batch, chunk and cross-episode settings), fills it to capacity with
synthetic episodes of the preset's length (random 64x64 RGB frames, or state vectors, in a TorchRL
collector's layout), and reports the bytes the buffer holds (``nbytes``: every stored tensor, the
side store of root observations included), the process's resident memory before and after, and
the bytes the same steps take in TorchRL's plain layout (root and next observations both stored),
measured on one episode.

    python benchmarks/replay_memory.py --preset cartpole-swingup --json benchmarks/results/replay_memory.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import git_state  # noqa: E402
from bench_replay import episode, plain_buffer, stored_bytes  # noqa: E402

from torchrl_rssm.data import make_replay_buffer  # noqa: E402
from torchrl_rssm.recipes import preset  # noqa: E402
from torchrl_rssm.recipes.trainer import MAX_BUFFER_STEPS  # noqa: E402


def resident_bytes() -> int:
    """This process's resident memory (``VmRSS``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cartpole-swingup")
    parser.add_argument("--episode-steps", type=int, default=None,
                        help="agent steps per episode (default: 1000 simulator steps / the preset's action repeat)")
    parser.add_argument("--action-dim", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    cfg = preset(args.preset)
    T = args.episode_steps or 1000 // (cfg.action_repeat or 1)
    capacity = max(cfg.chunk_length, min((cfg.seed_episodes + cfg.episodes) * T, MAX_BUFFER_STEPS))
    g = torch.Generator().manual_seed(0)
    plain = plain_buffer(T, cfg.batch_size, min(cfg.chunk_length, T), "cpu")
    plain.extend(episode(T, cfg.from_pixels, 5, g, args.action_dim).set("episode", torch.zeros(T, dtype=torch.long)))
    plain_per_step = stored_bytes(plain)
    del plain
    before = resident_bytes()
    start = time.perf_counter()
    rb = make_replay_buffer(capacity, cfg.batch_size, cfg.chunk_length, cross_episodes=cfg.cross_episodes,
                            dequantize_bits=cfg.bit_depth if cfg.from_pixels else None)
    while len(rb) < capacity:
        rb.extend(episode(min(T, capacity - len(rb)), cfg.from_pixels, 5, g, args.action_dim))
    fill_s = time.perf_counter() - start
    batch = rb.sample()  # the buffer serves batches when full
    after = resident_bytes()
    result = {
        "preset": args.preset, "observations": "pixels 64x64 RGB uint8" if cfg.from_pixels else "state vectors",
        "episode_steps": T, "capacity_steps": capacity, "stored_steps": len(rb),
        "buffer_bytes": rb.nbytes(), "bytes_per_step": round(rb.nbytes() / len(rb), 1),
        "resident_growth_bytes": after - before,
        "plain_layout_bytes_per_step": round(plain_per_step, 1),
        "plain_layout_bytes": round(plain_per_step * capacity),
        "sample_shape": list(batch.batch_size), "fill_s": round(fill_s, 1),
        "command": "python benchmarks/replay_memory.py " + " ".join(sys.argv[1:] if argv is None else argv),
        **git_state(),
    }
    gb = 1e9
    print(f"{args.preset}: {capacity:,} steps of {result['observations']}: the buffer holds "
          f"{result['buffer_bytes'] / gb:.2f} GB ({result['bytes_per_step']:,.0f} B per step; resident memory grew "
          f"{result['resident_growth_bytes'] / gb:.2f} GB); TorchRL's plain layout: "
          f"{result['plain_layout_bytes'] / gb:.2f} GB ({result['plain_layout_bytes_per_step']:,.0f} B per step)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
