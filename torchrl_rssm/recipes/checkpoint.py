"""Checkpoints: atomic writes, recovery after a kill, RNG states, the saved configuration.

A checkpoint is the folder ``<logdir>/checkpoint`` holding ``state.pt`` (agent state,
counters, RNG states, config) and ``replay/`` (:func:`~torchrl_rssm.data.save_replay_buffer`).
It is written under ``checkpoint.tmp`` and renamed into place, the previous one moved aside
to ``checkpoint.old`` first: a kill at any point leaves one complete checkpoint.
"""
from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import save_replay_buffer
from .config import RunConfig, from_dict

__all__ = ["CHECKPOINT_DIR", "ConfigMismatchError", "find_checkpoint", "get_rng_state", "recover_checkpoint",
           "saved_config", "set_rng_state", "write_checkpoint"]

CHECKPOINT_DIR = "checkpoint"


class ConfigMismatchError(ValueError):
    """A checkpoint was written with a different configuration."""


def get_rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) RNG states."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(rng: dict[str, Any]) -> None:
    """Restores what :func:`get_rng_state` returned."""
    torch.set_rng_state(rng["torch"].cpu())
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])


def write_checkpoint(logdir: str | Path, state: dict[str, Any], buffer) -> Path:
    """Writes ``state`` and ``buffer`` to ``<logdir>/checkpoint`` atomically; returns that folder."""
    logdir = Path(logdir)
    final, tmp, old = (logdir / CHECKPOINT_DIR, logdir / f"{CHECKPOINT_DIR}.tmp", logdir / f"{CHECKPOINT_DIR}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(state, tmp / "state.pt")
    save_replay_buffer(buffer, tmp / "replay")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def recover_checkpoint(logdir: str | Path) -> Path | None:
    """``<logdir>/checkpoint``, put back from ``checkpoint.old`` if a kill fell between the two renames."""
    logdir = Path(logdir)
    final, old = logdir / CHECKPOINT_DIR, logdir / f"{CHECKPOINT_DIR}.old"
    if (final / "state.pt").exists():
        return final
    if (old / "state.pt").exists():
        shutil.rmtree(final, ignore_errors=True)
        old.rename(final)
        return final
    return None


def find_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder for a run's logdir, its ``checkpoint`` folder or its ``state.pt``."""
    given = Path(path)
    candidates = [given.parent] if given.is_file() else [given, given / CHECKPOINT_DIR]
    for candidate in candidates:
        if (candidate / "state.pt").is_file():
            return candidate
    if given.is_dir() and recover_checkpoint(given) is not None:
        return given / CHECKPOINT_DIR
    raise FileNotFoundError(f"checkpoint={str(path)!r}: no state.pt found (give a run's logdir, its "
                            f"{CHECKPOINT_DIR}/ folder or {CHECKPOINT_DIR}/state.pt).")


def saved_config(path: str | Path) -> RunConfig:
    """The configuration a checkpoint was written with (``logdir`` set to its run directory)."""
    checkpoint = find_checkpoint(path)
    cfg = from_dict(torch.load(checkpoint / "state.pt", map_location="cpu", weights_only=False)["config"])
    cfg.logdir = str(checkpoint.parent)
    return cfg


def check_config(cfg: RunConfig, logdir: str | Path) -> None:
    """Refuses to resume with settings that differ from the checkpoint's outside ``RunConfig.RESUMABLE``."""
    checkpoint = recover_checkpoint(logdir)
    if checkpoint is None:
        raise FileNotFoundError(f"resume: no checkpoint at {Path(logdir) / CHECKPOINT_DIR / 'state.pt'}.")
    saved = torch.load(checkpoint / "state.pt", map_location="cpu", weights_only=False)["config"]
    diff = cfg.mismatches(saved)
    if diff:
        lines = ", ".join(f"{k}: checkpoint={a!r}, now={b!r}" for k, (a, b) in diff.items())
        raise ConfigMismatchError(
            f"The checkpoint in {checkpoint} was written with a different configuration ({lines}). "
            "Resume with the same settings, or start a new run in another logdir."
        )
