"""Shared helpers for the benchmark scripts: timing, JSON rows, command-line flags.

Every script times this package and TorchRL's built-in doing the same work in the
same process and writes rows of
``{"name", "ours_ms", "torchrl_ms", "speedup", "device", "config", "note"}``
where ``speedup = torchrl_ms / ours_ms`` (medians after warm-up).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch


def make_parser(description: str) -> argparse.ArgumentParser:
    """The flags every benchmark takes: --quick, --json PATH, --device, --repeats, --threads."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small sizes, for CI-class machines")
    parser.add_argument("--json", type=Path, default=None, help="write the rows as JSON to this path")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--repeats", type=int, default=None, help="timed repetitions (default: per script)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    return parser


def parse_args(description: str, parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """Parses the common flags, applies --threads and checks that --device exists."""
    parser = parser or make_parser(description)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available on this machine")
    return args


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def median_ms(fn: Callable[[], object], warmup: int = 2, repeats: int = 7, device: str = "cpu") -> float:
    """Median wall-clock milliseconds of ``fn()`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return cpu


def device_name(device: str = "cpu") -> str:
    if str(device).startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def row(name: str, ours_ms: float, torchrl_ms: float | None, device: str, config: dict, note: str = "") -> dict:
    speedup = (torchrl_ms / ours_ms) if torchrl_ms is not None else None
    return {"name": name, "ours_ms": round(ours_ms, 3),
            "torchrl_ms": None if torchrl_ms is None else round(torchrl_ms, 3),
            "speedup": None if speedup is None else round(speedup, 3),
            "device": device_name(device), "config": config, "note": note}


def print_rows(rows: list[dict]) -> None:
    print(f"{'operation':<46} {'ours ms':>10} {'torchrl ms':>11} {'speedup':>8}")
    for r in rows:
        t = "n/a" if r["torchrl_ms"] is None else f"{r['torchrl_ms']:.2f}"
        s = "n/a" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        print(f"{r['name']:<46} {r['ours_ms']:>10.2f} {t:>11} {s:>8}" + (f"  ({r['note']})" if r["note"] else ""))


def write_json(rows: list[dict], path: str | Path | None) -> None:
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rows, indent=2))
        print(f"wrote {path}")


def report(rows: list[dict], path: str | Path | None) -> None:
    """Prints the rows as a table and writes them as JSON when a path is given."""
    print_rows(rows)
    write_json(rows, path)


def git_state(path: Path = Path(__file__).resolve().parents[1]) -> dict:
    """The commit checked out at ``path`` and whether tracked files (results aside) differ from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True,
                              check=True).stdout.strip()
    try:
        # outputs under benchmarks/results do not make the code dirty (earlier runs rewrite them)
        return {"commit": git("rev-parse", "HEAD"),
                "dirty": bool(git("status", "--porcelain", "--untracked-files=no", "--", ".",
                                  ":(exclude)benchmarks/results"))}
    except (subprocess.CalledProcessError, FileNotFoundError):
        return {"commit": None, "dirty": None}
