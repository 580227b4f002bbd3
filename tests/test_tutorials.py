"""The tutorial notebooks run, and the committed ones carry their plots.

- Every ``tutorials/*.ipynb`` is executed with nbclient at tiny size
  (``TORCHRL_RSSM_TUTORIAL_SIZE=tiny``, ``MUJOCO_GL=egl`` in the kernel's environment) in a
  temporary directory; a failing cell fails the test and its traceback is shown.
- Every committed notebook holds at least one image output (a matplotlib PNG), so that
  nobody commits them stripped of the full run's outputs.
- The committed notebooks match their sources in ``tutorials/_src/`` (rebuild with
  ``python tutorials/_build.py --execute`` after editing a source).
"""
from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import pytest

# plain imports, not importorskip: they are in the [test] extra, and a missing one must fail
import nbclient  # noqa: E402
import nbformat  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("[0-9][0-9]_*.ipynb"))
EXPECTED = ["01_world_model", "02_planet_with_torchrl", "03_drop_in", "04_dreamer", "05_dreamerv3"]
CELL_TIMEOUT_S = 300


def _build_module():
    spec = importlib.util.spec_from_file_location("tutorials_build", TUTORIALS / "_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _images(nb) -> int:
    return sum(
        "image/png" in out.get("data", {})
        for cell in nb.cells if cell.cell_type == "code"
        for out in cell.get("outputs", [])
    )


def test_every_tutorial_is_committed():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_tutorial_runs_at_tiny_size(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:  # run what is committed, from a clean state
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    # one torch thread: tiny sizes gain nothing from more, and on a shared 2-core CPU two
    # OpenMP threads can make every op wait for a descheduled thread
    env = dict(os.environ, TORCHRL_RSSM_TUTORIAL_SIZE="tiny", MUJOCO_GL="egl", OMP_NUM_THREADS="1",
               PYDEVD_DISABLE_FILE_VALIDATION="1")
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    start = time.perf_counter()
    try:
        client.execute(env=env)
    except nbclient.exceptions.CellExecutionError as err:
        pytest.fail(f"{path.name}: a cell failed at tiny size:\n{err}", pytrace=False)
    print(f"{path.name}: {time.perf_counter() - start:.1f} s at tiny size")
    assert _images(nb) >= 1, f"{path.name} made no plot at tiny size"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_tutorial_has_plots(path):
    nb = nbformat.read(path, as_version=4)
    executed = [c for c in nb.cells if c.cell_type == "code" and c.get("execution_count")]
    assert executed, f"{path.name} is committed without outputs: run `python tutorials/_build.py --execute`"
    assert _images(nb) >= 1, f"{path.name} holds no image output: commit it with the outputs of a full run"
    size = nb.metadata.get("torchrl_rssm", {}).get("size")
    assert size == "full", f"{path.name} was executed at size {size!r}: commit the outputs of a full run"
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, f"{path.name} is committed with an error output: {errors[0].get('ename')}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_tutorial_matches_its_source(path):
    build = _build_module()
    src = TUTORIALS / "_src" / f"{path.stem}.py"
    assert src.exists(), f"{path.name} has no source {src.relative_to(ROOT)}"
    expected = [(c.cell_type, c.source) for c in build.build(src).cells]
    committed = [(c.cell_type, c.source) for c in nbformat.read(path, as_version=4).cells]
    assert committed == expected, (
        f"{path.name} differs from {src.relative_to(ROOT)}: edit the source and rebuild with "
        "`python tutorials/_build.py --execute`"
    )
