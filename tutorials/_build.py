"""Builds the tutorial notebooks from their sources and, optionally, executes them.

The notebooks are written as plain Python files in ``tutorials/_src/`` with
``# %% [markdown]`` / ``# %%`` cell markers (the "percent" format), which diff and
review well; this script turns each into ``tutorials/<name>.ipynb``.

    python tutorials/_build.py                       # rebuild the notebooks, outputs cleared
    python tutorials/_build.py --execute             # rebuild and run them at full size (commit this)
    python tutorials/_build.py --execute --threads 1 # the same on a small shared CPU
    python tutorials/_build.py --execute --size tiny 01_world_model   # a quick check of one

Execution uses nbclient with ``TORCHRL_RSSM_TUTORIAL_SIZE`` set to ``--size`` and
``MUJOCO_GL=egl`` in the kernel's environment, in a temporary working directory (the
notebooks write TensorBoard logs under ``runs/``), and prints how long each took.
The test suite (``tests/test_tutorials.py``) executes them the same way at tiny size.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
SRC = HERE / "_src"
SIZE_VAR = "TORCHRL_RSSM_TUTORIAL_SIZE"
KERNEL = {"display_name": "Python 3", "language": "python", "name": "python3"}
_MARKER = re.compile(r"^# %%(?P<md> \[markdown\])?[^\n]*$", re.M)


def sources() -> list[Path]:
    return sorted(SRC.glob("[0-9][0-9]_*.py"))


def parse(text: str) -> list:
    """Splits a percent-format file into notebook cells (markdown cells lose their ``# ``)."""
    cells = []
    marks = list(_MARKER.finditer(text))
    for i, m in enumerate(marks):
        body = text[m.end(): marks[i + 1].start() if i + 1 < len(marks) else len(text)].strip("\n")
        if m.group("md"):
            lines = [re.sub(r"^# ?", "", line) for line in body.splitlines()]
            cells.append(nbformat.v4.new_markdown_cell("\n".join(lines).strip("\n")))
        elif body.strip():
            cells.append(nbformat.v4.new_code_cell(body))
    return cells


def build(src: Path) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = parse(src.read_text())
    nb.metadata["kernelspec"] = dict(KERNEL)
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def execute(nb: nbformat.NotebookNode, size: str, timeout: int = 1200, cwd: str | Path | None = None,
            threads: int | None = None):
    """Runs ``nb`` in a fresh kernel with the size switch set; returns (notebook, seconds).

    ``threads`` sets ``OMP_NUM_THREADS`` (torch's CPU threads) in the kernel. On a small CPU
    shared with other jobs, 1 avoids OpenMP oversubscription, which can make every
    parallel op wait for a descheduled thread (10x slower updates were seen on 2 cores).
    Raises ``nbclient.exceptions.CellExecutionError`` when a cell fails.
    """
    from nbclient import NotebookClient

    env = dict(os.environ)
    env[SIZE_VAR] = size
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    env.setdefault("MUJOCO_GL", "egl")
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    with tempfile.TemporaryDirectory(prefix="tutorial_") as tmp:
        client = NotebookClient(nb, timeout=timeout, kernel_name=KERNEL["name"],
                                resources={"metadata": {"path": str(cwd or tmp)}})
        start = time.perf_counter()
        client.execute(env=env)  # passed on to the kernel manager: the kernel's environment
    return nb, time.perf_counter() - start


def strip_volatile(nb: nbformat.NotebookNode) -> None:
    """Drops per-run metadata (execution timestamps) so that reruns diff cleanly."""
    for cell in nb.cells:
        cell.metadata.pop("execution", None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebooks to build (e.g. 01_world_model); default: all")
    parser.add_argument("--execute", action="store_true", help="run the notebooks and keep their outputs")
    parser.add_argument("--size", default="full", choices=["tiny", "full"], help="value of " + SIZE_VAR)
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per cell")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS for the kernel (1 on a shared 2-core CPU; default: torch's)")
    parser.add_argument("--out-dir", type=Path, default=HERE, help="where the .ipynb files go")
    args = parser.parse_args(argv)

    srcs = [s for s in sources() if not args.names or any(n in s.stem for n in args.names)]
    if not srcs:
        print(f"no sources in {SRC} match {args.names}", file=sys.stderr)
        return 1
    for src in srcs:
        nb = build(src)
        if args.execute:
            nb, seconds = execute(nb, args.size, args.timeout, threads=args.threads)
            strip_volatile(nb)
            nb.metadata["torchrl_rssm"] = {"size": args.size, "seconds": round(seconds), "threads": args.threads}
            print(f"{src.stem}: executed at size={args.size} in {seconds:.0f} s")
        out = args.out_dir / f"{src.stem}.ipynb"
        out.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, out)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
