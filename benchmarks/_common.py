"""Shared helpers for the benchmark scripts (timing, JSON rows, command line).

Every script times this package and the TorchRL built-in doing the same work in
one process and writes rows of the form::

    {"name": str, "ours_ms": float, "torchrl_ms": float | None, "speedup": float | None,
     "device": str, "config": {...}, "note": str}

with ``speedup = torchrl_ms / ours_ms`` (medians after warm-up).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def _sync(device: torch.device | str | None) -> None:
    # CUDA work is asynchronous: time the kernels, not their launch.
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], Any], warmup: int = 2, repeats: int = 5,
              device: torch.device | str | None = None) -> float:
    """Median wall time of ``fn()`` in milliseconds, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def device_name(device: torch.device | str = "cpu") -> str:
    """A human-readable name of the device the numbers were taken on."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def row(name: str, ours_ms: float, torchrl_ms: float | None, device: str,
        config: dict, note: str = "") -> dict:
    """One JSON row; ``speedup`` is ``torchrl_ms / ours_ms`` or ``None``."""
    speedup = None if torchrl_ms is None or ours_ms <= 0 else torchrl_ms / ours_ms
    return {"name": name, "ours_ms": ours_ms, "torchrl_ms": torchrl_ms, "speedup": speedup,
            "device": device, "config": config, "note": note}


def write_json(rows: list[dict], path: str | None) -> None:
    """Writes the rows as a JSON list (nothing when ``path`` is ``None``)."""
    if path:
        with open(path, "w") as f:
            json.dump(rows, f, indent=2)


def print_rows(rows: list[dict]) -> None:
    """A plain table of the rows with their ratios."""
    for r in rows:
        tr = "n/a" if r["torchrl_ms"] is None else f"{r['torchrl_ms']:.2f}"
        sp = "n/a" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        note = f"  ({r['note']})" if r["note"] else ""
        print(f"{r['name']:<48} ours {r['ours_ms']:>10.2f} ms  torchrl {tr:>10} ms  speedup {sp:>7}{note}")


def make_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the common ``--quick``, ``--json`` and ``--device`` flags."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats (CI-class machines)")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the rows as JSON to PATH")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    return parser
