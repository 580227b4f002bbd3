"""Soak test: a long run over a small, full replay buffer; memory and speed per episode.

Runs a preset (default ``quick``) with a replay buffer that holds only
``--buffer-episodes`` episodes, for ``--episodes`` episodes in all (at least 3x the
episodes that fill it), and records after every episode: the process's resident memory
(RSS, from ``/proc/self/status``), the memory held in tensors (the replay storage, the
agent's parameters and optimiser state; ``torch.cuda.memory_allocated`` on a GPU), and
the updates per second of that episode's gradient steps (wall clock, and CPU seconds per
update, which other processes on a shared machine disturb less).

Goals: after the buffer is full, RSS grows by less than 5%; updates per second do not fall
by more than 10% over the run (mean of the first five training episodes against the last
five). Writes ``results/soak.json`` (with the commit and the command) and ``results/soak.png``.

    python benchmarks/soak.py                                  # quick, buffer of 10 episodes, 50 episodes
    python benchmarks/soak.py --episodes 40 --updates-per-episode 20

The trainer is used as is: a subclass records the figures around its ``_store_episode``
and ``update_model`` steps.
"""
from __future__ import annotations

import argparse
import gc
import json
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

import torch  # noqa: E402

from torchrl_rssm.recipes import Trainer, apply_overrides, preset  # noqa: E402

RSS_GOAL = 0.05
SPEED_GOAL = 0.10


def rss_bytes() -> int:
    """Resident memory of this process (Linux ``/proc/self/status``; 0 where unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _tensor_bytes(obj, seen: set[int]) -> int:
    if isinstance(obj, torch.Tensor):
        storage = obj.untyped_storage()
        key = storage.data_ptr()
        if key in seen or obj.device.type == "meta":
            return 0
        seen.add(key)
        return storage.nbytes()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v, seen) for v in obj)
    if hasattr(obj, "items") and hasattr(obj, "keys"):  # TensorDict
        return sum(_tensor_bytes(v, seen) for v in obj.values(True, True))
    return 0


def tensor_bytes(trainer: Trainer) -> dict[str, int]:
    """Bytes held in tensors by the replay storage and by the agent (parameters, optimiser state)."""
    seen: set[int] = set()
    storage = getattr(trainer.buffer.storage, "_storage", None)
    buffer = _tensor_bytes(storage, seen) if storage is not None else 0
    agent = _tensor_bytes(trainer.agent.state_dict(), seen)
    return {"buffer": buffer, "agent": agent}


class SoakTrainer(Trainer):
    """A :class:`Trainer` that records memory and update speed after every episode."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rows: list[dict] = []

    def _measure(self, row: dict) -> None:
        gc.collect()
        sizes = tensor_bytes(self)
        row.update(buffer_steps=len(self.buffer), rss_mb=rss_bytes() / 2**20,
                   buffer_mb=sizes["buffer"] / 2**20, agent_mb=sizes["agent"] / 2**20,
                   tensor_mb=(sizes["buffer"] + sizes["agent"]) / 2**20)
        if self.device.type == "cuda":
            row["cuda_allocated_mb"] = torch.cuda.memory_allocated(self.device) / 2**20

    def _store_episode(self, episode):
        ret = super()._store_episode(episode)
        row = {"episode": self.collected + 1, "train_return": ret}
        self._measure(row)
        self.rows.append(row)
        return ret

    def update_model(self, num_updates: int):
        wall, cpu = time.perf_counter(), time.process_time()
        metrics = super().update_model(num_updates)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        row = self.rows[-1]
        row.update(updates=num_updates, updates_per_s=num_updates / wall, cpu_ms_per_update=1e3 * cpu / num_updates,
                   loss=metrics.get("loss"))
        self._measure(row)  # after the updates: what the episode's work left behind
        return metrics


def summarise(rows: list[dict], capacity: int) -> dict:
    full = next((r["episode"] for r in rows if r["buffer_steps"] >= capacity), None)
    out: dict = {"buffer_full_at_episode": full}
    if full is not None:
        after = [r for r in rows if r["episode"] >= full]
        base = after[0]["rss_mb"]
        out.update(rss_at_full_mb=round(base, 1), rss_final_mb=round(after[-1]["rss_mb"], 1),
                   rss_max_after_full_mb=round(max(r["rss_mb"] for r in after), 1),
                   rss_growth_after_full=round(after[-1]["rss_mb"] / base - 1, 4),
                   rss_max_growth_after_full=round(max(r["rss_mb"] for r in after) / base - 1, 4),
                   episodes_after_full=len(after) - 1,
                   tensor_mb_at_full=round(after[0]["tensor_mb"], 2),
                   tensor_mb_final=round(after[-1]["tensor_mb"], 2))
        out["rss_goal_met"] = out["rss_growth_after_full"] < RSS_GOAL
    trained = [r for r in rows if "updates_per_s" in r]
    if len(trained) >= 10:
        first, last = trained[:5], trained[-5:]
        ups0, ups1 = statistics.mean(r["updates_per_s"] for r in first), statistics.mean(r["updates_per_s"] for r in last)
        cpu0 = statistics.mean(r["cpu_ms_per_update"] for r in first)
        cpu1 = statistics.mean(r["cpu_ms_per_update"] for r in last)
        out.update(updates_per_s_first5=round(ups0, 2), updates_per_s_last5=round(ups1, 2),
                   updates_per_s_change=round(ups1 / ups0 - 1, 4),
                   cpu_ms_per_update_first5=round(cpu0, 2), cpu_ms_per_update_last5=round(cpu1, 2),
                   cpu_ms_per_update_change=round(cpu1 / cpu0 - 1, 4))
        out["speed_goal_met"] = out["updates_per_s_change"] > -SPEED_GOAL
    return out


def plot(rows: list[dict], summary: dict, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["episode"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(ep, [r["rss_mb"] for r in rows], label="RSS")
    axes[0].set_ylabel("resident memory (MiB)")
    ax = axes[0].twinx()
    ax.plot(ep, [r["tensor_mb"] for r in rows], color="tab:orange", label="tensors (buffer + agent)")
    ax.set_ylabel("tensor memory (MiB)", color="tab:orange")
    trained = [r for r in rows if "updates_per_s" in r]
    axes[1].plot([r["episode"] for r in trained], [r["updates_per_s"] for r in trained])
    axes[1].set_ylabel("updates per second (wall)")
    axes[2].plot([r["episode"] for r in trained], [r["cpu_ms_per_update"] for r in trained], color="tab:green")
    axes[2].set_ylabel("CPU ms per update")
    for a in axes:
        a.set_xlabel("episode")
        if summary.get("buffer_full_at_episode"):
            a.axvline(summary["buffer_full_at_episode"], color="grey", ls="--", lw=1)
    axes[0].set_ylim(0, 1.15 * max(r["rss_mb"] for r in rows))
    ax.set_ylim(0, 1.15 * max(r["tensor_mb"] for r in rows))
    axes[1].set_ylim(bottom=0)
    axes[2].set_ylim(bottom=0)
    fig.suptitle(title + "  (dashed: replay buffer full)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--buffer-episodes", type=int, default=10, help="episodes the replay buffer holds")
    parser.add_argument("--episodes", type=int, default=50, help="episodes in all (seed episodes included)")
    parser.add_argument("--updates-per-episode", type=int, default=None, help="default: the preset's")
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--logdir", type=Path, default=Path("runs/soak"), help="emptied first")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "soak")
    return parser


def main(argv: list[str] | None = None) -> dict:
    from quick_learning import git_state  # noqa: PLC0415 (benchmarks/ is on sys.path when run as a script)

    args = build_parser().parse_args(argv)
    cfg = preset(args.preset)
    apply_overrides(cfg, args.overrides)
    steps = cfg.max_episode_steps
    if steps is None:
        from torchrl_rssm.envs import make_env
        env = make_env(cfg.env, from_pixels=False, action_repeat=cfg.action_repeat)
        steps = int(env.max_episode_steps)
        env.close()
    cfg.buffer_capacity = args.buffer_episodes * steps
    cfg.episodes = args.episodes - cfg.seed_episodes
    if args.updates_per_episode is not None:
        cfg.updates_per_episode = args.updates_per_episode
    cfg.test_every, cfg.video_every, cfg.checkpoint_every = 0, 0, args.checkpoint_every
    cfg.progress = False
    cfg.logdir = str(args.logdir)
    if args.episodes < 3 * args.buffer_episodes:
        raise ValueError(f"--episodes={args.episodes}: a soak runs at least 3x --buffer-episodes "
                         f"({3 * args.buffer_episodes}).")
    shutil.rmtree(args.logdir, ignore_errors=True)

    start = time.perf_counter()
    trainer = SoakTrainer(cfg)
    result = trainer.train()
    wall = time.perf_counter() - start
    summary = summarise(trainer.rows, cfg.buffer_capacity)
    report = {
        "command": "python benchmarks/soak.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        **git_state(ROOT), "preset": args.preset, "config": cfg.to_dict(), "episode_steps": steps,
        "buffer_capacity_steps": cfg.buffer_capacity, "wall_s": round(wall, 1), "threads": torch.get_num_threads(),
        "result": result, "goals": {"rss_growth_after_full_below": RSS_GOAL, "updates_per_s_drop_below": SPEED_GOAL},
        "summary": summary, "per_episode": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}
                                            for r in trainer.rows],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    plot(trainer.rows, summary, args.out.with_suffix(".png"),
         f"soak: {args.preset}, buffer {cfg.buffer_capacity} steps ({args.buffer_episodes} episodes), "
         f"{args.episodes} episodes, {cfg.updates_per_episode} updates/episode")
    for k, v in summary.items():
        print(f"{k}: {v}")
    print(f"wall time {wall / 60:.1f} min; wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")
    return report


if __name__ == "__main__":
    main()
