"""Runs every ``benchmarks/bench_*.py`` script and collects their rows into one report.

Each script runs in its own subprocess (``--json`` to a temporary file, ``--quick`` and
``--device`` passed through; a full run adds ``--compile --floor`` to ``bench_planner.py`` and
``--floor --whole-step`` to ``bench_dreamer.py``),
so a script that crashes or hangs cannot take the others down. The rows of all scripts are written to

- ``benchmarks/results/<device>.json``: rows plus versions (torch, torchrl, tensordict,
  this package, Python) and the machine, and the status of every script;
- ``benchmarks/results/<device>.md``: the markdown table the README shows (operation,
  ours ms, TorchRL ms, ratio, device, what was measured), versions above it.

``<device>`` is a slug such as ``cpu`` or ``cuda-h100``. With ``--quick`` the files are
``<device>-quick.json`` / ``<device>-quick.md``, so a quick check never overwrites the
full results. A script that fails (non-zero exit, timeout, no or malformed JSON) is
reported, the others still run, and ``run_all`` exits with status 1.

    python benchmarks/run_all.py [--quick] [--device cuda] [--only world_model,loss]
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import cpu_model, git_state  # noqa: E402

ROW_KEYS = ("name", "ours_ms", "torchrl_ms", "speedup", "device", "config", "note")
# Extra flags of a full (not --quick) run: the planner's compiled and model-evaluation rows,
# Dreamer's arithmetic-only and whole-training-step rows.
FULL_RUN_ARGS = {"bench_planner.py": ["--compile", "--floor"], "bench_dreamer.py": ["--floor", "--whole-step"]}


# ------------------------------------------------------------------ machine facts
def device_slug(device: str) -> str:
    """``cpu`` -> ``cpu``; ``cuda`` on an H100 -> ``cuda-h100``; unknown GPUs -> ``cuda-<model>``."""
    if not str(device).startswith("cuda"):
        return re.sub(r"[^a-z0-9]+", "-", str(device).lower()).strip("-") or "cpu"
    import torch

    if not torch.cuda.is_available():
        return "cuda"
    name = torch.cuda.get_device_name(torch.device(device))
    return "cuda-" + gpu_model(name)


def gpu_model(name: str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"h100"``, ``"Tesla V100-SXM2-16GB"`` -> ``"v100"``."""
    noise = {"nvidia", "geforce", "tesla", "rtx", "quadro", "amd", "radeon", "instinct", "pcie", "nvl"}
    tokens = [t for t in re.split(r"[^a-z0-9]+", name.lower()) if t]
    tokens = [t for t in tokens if t not in noise and not re.fullmatch(r"\d+gb|hbm\d*e?|sxm\d*", t)]
    return tokens[0] if tokens else "gpu"


def versions() -> dict:
    import tensordict
    import torch
    import torchrl

    out = {"python": platform.python_version(), "torch": torch.__version__,
           "torchrl": torchrl.__version__, "tensordict": tensordict.__version__}
    try:
        from importlib.metadata import version

        out["torchrl_rssm"] = version("torchrl_rssm")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        out["torchrl_rssm"] = "source"
    return out


def machine(device: str) -> dict:
    import torch

    out = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "platform": platform.platform(), "hostname": platform.node()}
    try:
        with open("/proc/meminfo") as f:
            kb = int(next(line.split()[1] for line in f if line.startswith("MemTotal")))
        out["memory_gib"] = round(kb / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        pass
    if str(device).startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.device(device))
        out.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
    return out


# ------------------------------------------------------------------- one script
def _valid_rows(rows) -> str | None:
    """An error message when the JSON is not a list of benchmark rows, else None."""
    if not isinstance(rows, list) or not rows:
        return "the JSON is not a non-empty list of rows"
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            return f"row {i} is not an object"
        missing = [k for k in ROW_KEYS if k not in r]
        if missing:
            return f"row {i} ({r.get('name', '?')!r}) lacks {missing}"
        if not isinstance(r["ours_ms"], (int, float)):
            return f"row {i} ({r['name']!r}): ours_ms is {r['ours_ms']!r}, not a number"
    return None


def run_script(script: Path, args: argparse.Namespace) -> dict:
    """Runs one benchmark script; returns its status, rows and the tail of its output."""
    with tempfile.TemporaryDirectory(prefix="bench_") as tmp:
        out_json = Path(tmp) / "rows.json"
        cmd = [sys.executable, str(script), "--json", str(out_json), "--device", args.device]
        if args.quick:
            cmd.append("--quick")
        else:
            cmd += FULL_RUN_ARGS.get(script.name, [])
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        print(f"\n=== {script.name}: {' '.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        tail: deque[str] = deque(maxlen=40)
        status, error = "ok", None
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                cwd=str(HERE.parent), bufsize=1)

        def pump() -> None:  # stream the script's output as it runs, keep the tail
            assert proc.stdout is not None
            for line in proc.stdout:
                print(f"  | {line}", end="", flush=True)
                tail.append(line.rstrip("\n"))

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            proc.wait(timeout=args.timeout or None)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            status, error = "timeout", f"killed after {args.timeout:.0f} s"
        reader.join(timeout=5)
        seconds = time.perf_counter() - start
        rows = []
        if status == "ok" and proc.returncode != 0:
            status, error = "error", f"exit status {proc.returncode}"
        if status == "ok":
            try:
                rows = json.loads(out_json.read_text())
                error = _valid_rows(rows)
            except FileNotFoundError:
                error = "exited 0 but wrote no JSON (--json)"
            except json.JSONDecodeError as err:
                error = f"malformed JSON: {err}"
            if error:
                status, rows = "invalid", []
    for r in rows:
        r["script"] = script.name
    result = {"script": script.name, "status": status, "returncode": proc.returncode,
              "seconds": round(seconds, 1), "rows": len(rows), "error": error,
              "output_tail": None if status == "ok" else "\n".join(tail)}
    verdict = f"ok, {len(rows)} row(s)" if status == "ok" else f"FAILED ({status}: {error})"
    print(f"=== {script.name}: {verdict} in {seconds:.1f} s", flush=True)
    return {"result": result, "rows": rows}


# ----------------------------------------------------------------------- report
def _ms(x) -> str:
    if x is None:
        return "n/a"
    return f"{x:.3f}" if x < 1 else f"{x:.2f}" if x < 100 else f"{x:.1f}" if x < 1000 else f"{x:,.0f}"


def markdown(report: dict) -> str:
    v, m = report["versions"], report["machine"]
    hw = m.get("gpu") or f"{m['cpu']}, {m['cpu_count']} cores"
    lines = [
        f"Benchmarks on `{report['device']}` ({hw}){' — quick sizes' if report['quick'] else ''}: "
        f"torch {v['torch']}, torchrl {v['torchrl']}, tensordict {v['tensordict']}, Python {v['python']}; "
        f"{report['date']}.",
        "Medians of repeated runs after warm-up, ours and TorchRL's built-in in the same process; "
        "ratio = TorchRL ms / ours ms (above 1: ours is faster).",
        "",
        "| operation | ours (ms) | TorchRL (ms) | ratio | device | what was measured |",
        "|---|---:|---:|---:|---|---|",
    ]
    for r in report["rows"]:
        ratio = "n/a" if r.get("speedup") is None else f"{r['speedup']:.2f}x"
        note = str(r.get("note") or "").replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {r['name']} | {_ms(r['ours_ms'])} | {_ms(r.get('torchrl_ms'))} | {ratio} | "
                     f"{r.get('device', '')} | {note} |")
    failed = [s for s in report["scripts"] if s["status"] != "ok"]
    if failed:
        lines += ["", "Failed scripts (no rows):", ""]
        lines += [f"- `{s['script']}`: {s['status']} ({s['error']})" for s in failed]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick to every script (small sizes)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (passed to every script)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (passed to every script)")
    parser.add_argument("--only", default=None,
                        help="comma-separated substrings: run only the scripts whose names contain one")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds before a script is killed (default: 900 with --quick, none otherwise)")
    parser.add_argument("--out-dir", type=Path, default=HERE / "results", help="where the JSON and table go")
    args = parser.parse_args(argv)
    if args.timeout is None:
        args.timeout = 900.0 if args.quick else 0.0

    scripts = sorted(HERE.glob("bench_*.py"))
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        scripts = [s for s in scripts if any(w in s.name for w in wanted)]
    if not scripts:
        print(f"run_all: no benchmarks/bench_*.py scripts matched (only={args.only!r}).", file=sys.stderr)
        return 1

    slug = device_slug(args.device)
    start = time.perf_counter()
    outcomes = [run_script(s, args) for s in scripts]
    report = {
        "device": slug, "quick": args.quick,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        **git_state(),
        "versions": versions(), "machine": machine(args.device),
        "total_seconds": round(time.perf_counter() - start, 1),
        "scripts": [o["result"] for o in outcomes],
        "rows": [r for o in outcomes for r in o["rows"]],
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{slug}-quick" if args.quick else slug
    json_path, md_path = args.out_dir / f"{stem}.json", args.out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(markdown(report))

    print("\n" + markdown(report))
    failed = [s for s in report["scripts"] if s["status"] != "ok"]
    print(f"wrote {json_path} and {md_path} ({len(report['rows'])} rows from {len(scripts)} scripts "
          f"in {report['total_seconds']:.0f} s)")
    for s in failed:
        print(f"\nFAILED {s['script']}: {s['status']} ({s['error']}); last output:\n{s['output_tail']}",
              file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
