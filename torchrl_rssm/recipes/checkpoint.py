"""Checkpoints: atomic writes kept two deep, checked on load, fallback, RNG states, the saved config.

A checkpoint is a folder holding ``state.pt`` (agent state, counters, RNG states, config),
``replay/`` (:func:`~torchrl_rssm.data.save_replay_buffer`, with its own manifest) and
``manifest.json`` (written last: size and CRC-32 of every file, the checkpoint format, the
agent and the counters). A run's ``<logdir>`` keeps two of them:

* ``checkpoint/``: the newest, ``checkpoint.prev/``: the one before.

:func:`write_checkpoint` writes ``checkpoint.tmp/`` and then renames: ``checkpoint`` becomes
``checkpoint.prev`` and ``checkpoint.tmp`` becomes ``checkpoint``, so a kill at any point
leaves at least one complete checkpoint. :func:`resume_checkpoint` takes the newest folder
that passes every check (files present with their written sizes and CRC-32, the checkpoint
format this package reads, the expected agent, a readable ``state.pt``); when it has to fall
back past a newer one it warns with what that cost (episodes and updates) and moves the bad
folder aside to ``checkpoint.bad`` so the next write keeps the good one. A file that fails is
reported in one line naming it and what is wrong (:class:`CheckpointError`).

RNG states (:func:`get_rng_state` / :func:`set_rng_state`): torch (CPU and CUDA), numpy's
global generator, Python's ``random`` and any ``torch.Generator`` objects passed by name
(:func:`find_generators` collects those held by modules and samplers).
"""
from __future__ import annotations

import json
import random
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import ReplayLoadError, save_replay_buffer
from ..data.replay import verify_manifest, write_manifest
from .config import RunConfig, from_dict

__all__ = ["CHECKPOINT_DIR", "CHECKPOINT_FORMAT", "PREVIOUS_DIR", "CheckpointError", "ConfigMismatchError",
           "check_config", "find_checkpoint", "find_generators", "get_rng_state", "latest_checkpoint",
           "load_state", "recover_checkpoint", "resume_checkpoint", "saved_config", "set_rng_state",
           "verify_checkpoint", "write_checkpoint"]

CHECKPOINT_DIR = "checkpoint"
PREVIOUS_DIR = f"{CHECKPOINT_DIR}.prev"
_TMP_DIR = f"{CHECKPOINT_DIR}.tmp"
_BAD_DIR = f"{CHECKPOINT_DIR}.bad"
_OLD_DIR = f"{CHECKPOINT_DIR}.old"
#: the layout this package writes and reads (manifest, replay stored once per observation)
CHECKPOINT_FORMAT = 2


class ConfigMismatchError(ValueError):
    """A checkpoint was written with a different configuration."""


class CheckpointError(ValueError):
    """A checkpoint cannot be used: a file is missing, truncated or corrupted, or it was written
    by another agent or checkpoint format. The message is one line naming the file."""


# ------------------------------------------------------------------------- RNG states
def find_generators(**objects: Any) -> dict[str, torch.Generator]:
    """The ``torch.Generator`` objects held by ``objects`` (modules, samplers, buffers), by name.

    Looks at each object's attributes, the attributes of every ``nn.Module`` it is or holds
    (and their submodules), and a replay buffer's sampler (``_rng``). Names are
    ``"<keyword>.<path>"``; a generator held twice is named once.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2))
        >>> net[0].noise_rng = g
        >>> list(find_generators(policy=net))
        ['policy.0.noise_rng']
    """
    found: dict[str, torch.Generator] = {}

    def scan(prefix: str, obj: Any) -> None:
        for attr, value in vars(obj).items() if hasattr(obj, "__dict__") else ():
            if isinstance(value, torch.Generator) and all(value is not g for g in found.values()):
                found[f"{prefix}.{attr}"] = value  # a generator shared by two holders is named once

    def scan_module(prefix: str, module: torch.nn.Module) -> None:
        for sub_name, sub in module.named_modules():
            scan(f"{prefix}.{sub_name}" if sub_name else prefix, sub)

    for name, obj in objects.items():
        if obj is None:
            continue
        if isinstance(obj, torch.Generator):
            found[name] = obj
            continue
        if isinstance(obj, torch.nn.Module):
            scan_module(name, obj)
            continue
        scan(name, obj)
        for attr, value in vars(obj).items() if hasattr(obj, "__dict__") else ():
            if isinstance(value, torch.nn.Module):  # e.g. an agent's world model and policy
                scan_module(f"{name}.{attr}", value)
        sampler = getattr(obj, "sampler", None)
        if sampler is not None:
            scan(f"{name}.sampler", sampler)
    return found


def get_rng_state(generators: Mapping[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) RNG states, and those of ``generators`` (by name).

    Examples:
        >>> g = torch.Generator().manual_seed(1)
        >>> state = get_rng_state({"noise": g})
        >>> a = (torch.rand(2), random.random(), np.random.rand(), torch.rand(1, generator=g))
        >>> set_rng_state(state, {"noise": g})
        >>> b = (torch.rand(2), random.random(), np.random.rand(), torch.rand(1, generator=g))
        >>> all(bool(np.all(np.asarray(x) == np.asarray(y))) for x, y in zip(a, b))
        True
    """
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "generators": {name: g.get_state() for name, g in (generators or {}).items()}}


def set_rng_state(rng: dict[str, Any], generators: Mapping[str, torch.Generator] | None = None) -> None:
    """Restores what :func:`get_rng_state` returned (``generators``: the same names)."""
    torch.set_rng_state(rng["torch"].cpu())
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
    saved = rng.get("generators", {})
    missing = sorted(set(generators or {}) - set(saved))
    if missing:
        raise KeyError(f"set_rng_state: no saved state for the generators {missing} (saved: {sorted(saved)}).")
    for name, g in (generators or {}).items():
        g.set_state(saved[name].to(g.get_state().device))


# ------------------------------------------------------------------------- writing
def write_checkpoint(logdir: str | Path, state: dict[str, Any], buffer) -> Path:
    """Writes ``state`` and ``buffer`` to ``<logdir>/checkpoint`` atomically; returns that folder.

    The checkpoint it replaces becomes ``checkpoint.prev`` (the one before that is removed),
    unless it holds the same counters (then it is replaced and ``checkpoint.prev`` stays).
    """
    logdir = Path(logdir)
    final, tmp, prev = logdir / CHECKPOINT_DIR, logdir / _TMP_DIR, logdir / PREVIOUS_DIR
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(state, tmp / "state.pt")
    save_replay_buffer(buffer, tmp / "replay")
    write_manifest(tmp, skip=("replay",), extra={
        "format": CHECKPOINT_FORMAT, "algo": state.get("algo"), "counters": state.get("counters")})
    if final.exists():  # else a fallback left only checkpoint.prev: keep it
        counters = state.get("counters")
        if counters is not None and (_manifest(final) or {}).get("counters") == counters:
            # the same progress again (e.g. the checkpoint at exit right after a periodic one):
            # replace it, so that checkpoint.prev stays an earlier point of the run
            shutil.rmtree(logdir / _OLD_DIR, ignore_errors=True)
            final.rename(logdir / _OLD_DIR)
            tmp.rename(final)
            shutil.rmtree(logdir / _OLD_DIR, ignore_errors=True)
            return final
        shutil.rmtree(prev, ignore_errors=True)
        final.rename(prev)
    tmp.rename(final)
    return final


# ------------------------------------------------------------------------- checking
def _manifest(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def verify_checkpoint(folder: str | Path, algo: str | None = None, replay: bool = True) -> dict[str, Any]:
    """Checks a checkpoint folder's files (and its replay's with ``replay=True``), format and agent.

    Returns its manifest; raises :class:`CheckpointError` (one line naming the file).
    """
    folder = Path(folder)
    if not (folder / "manifest.json").exists() and (folder / "state.pt").exists():
        raise CheckpointError(f"{folder / 'manifest.json'}: missing: the checkpoint was written by an older version "
                              f"of torchrl_rssm (format 1; this one reads {CHECKPOINT_FORMAT}) or not completely.")
    manifest = verify_manifest(folder, CheckpointError)
    if manifest.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{folder / 'manifest.json'}: checkpoint format {manifest.get('format')!r}, this "
                              f"version of torchrl_rssm reads {CHECKPOINT_FORMAT}.")
    if algo is not None and manifest.get("algo") != algo:
        raise CheckpointError(f"{folder / 'state.pt'}: written by the {manifest.get('algo')!r} agent, "
                              f"this run is {algo!r}.")
    if replay:
        try:
            verify_manifest(folder / "replay")
        except ReplayLoadError as err:
            raise CheckpointError(str(err)) from None
    return manifest


def load_state(folder: str | Path, map_location: Any = "cpu", algo: str | None = None,
               replay: bool = True) -> dict[str, Any]:
    """``state.pt`` of a checkpoint folder after :func:`verify_checkpoint`."""
    folder = Path(folder)
    verify_checkpoint(folder, algo=algo, replay=replay)
    try:
        state = torch.load(folder / "state.pt", map_location=map_location, weights_only=False)
    except Exception as err:  # noqa: BLE001 -- torch.load raises many kinds; all mean "cannot read"
        raise CheckpointError(f"{folder / 'state.pt'}: unreadable ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}).") from None
    if not isinstance(state, dict) or "config" not in state:
        raise CheckpointError(f"{folder / 'state.pt'}: not a torchrl_rssm checkpoint (no config).")
    if algo is not None and state.get("algo", algo) != algo:
        raise CheckpointError(f"{folder / 'state.pt'}: written by the {state.get('algo')!r} agent, this run is "
                              f"{algo!r}.")
    return state


def _candidates(logdir: Path) -> list[Path]:
    """Checkpoint folders of a run, newest first (a complete ``.tmp`` is newer than ``checkpoint``)."""
    out = [logdir / CHECKPOINT_DIR]
    tmp = logdir / _TMP_DIR
    if (tmp / "manifest.json").exists() and not (logdir / CHECKPOINT_DIR).exists():
        out.insert(0, tmp)  # killed between the two renames of write_checkpoint
    out.append(logdir / PREVIOUS_DIR)
    return [p for p in out if (p / "state.pt").exists() or (p / "manifest.json").exists()]


def _progress(manifest: dict[str, Any] | None) -> str:
    counters = (manifest or {}).get("counters") or {}
    if not counters:
        return "unknown progress"
    return f"{counters.get('episodes', '?')} episodes, {counters.get('updates', '?')} updates"


def resume_checkpoint(logdir: str | Path, algo: str | None = None, map_location: Any = "cpu",
                      replay: bool = True) -> tuple[Path, dict[str, Any]]:
    """The newest good checkpoint of a run and its ``state.pt``: ``(folder, state)``.

    Falls back past checkpoints that fail (:class:`CheckpointError`) with a warning that
    says what the fallback costs, and moves a failing ``checkpoint/`` aside to
    ``checkpoint.bad/`` (so the next :func:`write_checkpoint` keeps the good one as
    ``checkpoint.prev``). ``replay=False`` checks ``state.pt`` only (evaluation). Raises
    :class:`CheckpointError` (the newest one's reason) when none is good and
    ``FileNotFoundError`` when there is none.
    """
    logdir = Path(logdir)
    candidates = _candidates(logdir)
    if not candidates:
        raise FileNotFoundError(f"resume: no checkpoint in {logdir} ({CHECKPOINT_DIR}/ or {PREVIOUS_DIR}/).")
    errors: list[tuple[Path, CheckpointError]] = []
    for folder in candidates:
        try:
            state = load_state(folder, map_location=map_location, algo=algo, replay=replay)
        except CheckpointError as err:
            errors.append((folder, err))
            continue
        if errors:
            newest = errors[0][0]
            lost = _lost(_manifest(newest), state.get("counters") or {})
            warnings.warn(f"{errors[0][1]} Resuming from {folder} instead ({_progress(_manifest(folder))}): "
                          f"{lost} lost.", RuntimeWarning, stacklevel=2)
            for bad, _ in errors:
                if bad.name == CHECKPOINT_DIR:
                    shutil.rmtree(logdir / _BAD_DIR, ignore_errors=True)
                    bad.rename(logdir / _BAD_DIR)
        if folder.name == _TMP_DIR:  # complete, but the kill fell before its rename
            folder.rename(logdir / CHECKPOINT_DIR)
            folder = logdir / CHECKPOINT_DIR
        return folder, state
    first = errors[0][1]
    more = f" ({len(errors) - 1} older checkpoint(s) failed too)" if len(errors) > 1 else ""
    raise CheckpointError(f"{first}{more}")


def _lost(newest: dict[str, Any] | None, kept: dict[str, Any]) -> str:
    counters = (newest or {}).get("counters")
    if not counters:
        return "the newer checkpoint's progress (unknown: its manifest is unreadable) is"
    parts = [f"{counters.get(k, 0) - kept.get(k, 0)} {k}" for k in ("episodes", "updates") if k in counters]
    return ", ".join(parts) + (" are" if parts else "nothing is")


def latest_checkpoint(logdir: str | Path) -> Path | None:
    """The newest checkpoint folder of a run whose ``state.pt`` passes the checks (no replay
    check), after the same fallback as :func:`resume_checkpoint`; ``None`` if there is none."""
    try:
        return resume_checkpoint(logdir, replay=False)[0]
    except FileNotFoundError:
        return None


def recover_checkpoint(logdir: str | Path) -> Path | None:
    """Same as :func:`latest_checkpoint` (kept for callers of the earlier name)."""
    return latest_checkpoint(logdir)


def find_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder for a run's logdir, a checkpoint folder or its ``state.pt``."""
    given = Path(path)
    if given.is_file():
        return given.parent
    if (given / "manifest.json").is_file() or (given / "state.pt").is_file():
        return given
    if given.is_dir():
        found = latest_checkpoint(given)
        if found is not None:
            return found
    raise FileNotFoundError(f"checkpoint={str(path)!r}: no state.pt found (give a run's logdir, its "
                            f"{CHECKPOINT_DIR}/ folder or {CHECKPOINT_DIR}/state.pt).")


def saved_config(path: str | Path) -> RunConfig:
    """The configuration a checkpoint was written with (``logdir`` set to its run directory)."""
    checkpoint = find_checkpoint(path)
    cfg = from_dict(load_state(checkpoint, replay=False)["config"])
    cfg.logdir = str(checkpoint.parent)
    return cfg


def check_config(cfg: RunConfig, logdir: str | Path) -> None:
    """Refuses to resume with settings that differ from the checkpoint's outside ``RunConfig.RESUMABLE``."""
    checkpoint = latest_checkpoint(logdir)
    if checkpoint is None:
        raise FileNotFoundError(f"resume: no checkpoint at {Path(logdir) / CHECKPOINT_DIR / 'state.pt'}.")
    saved = load_state(checkpoint, replay=False)["config"]
    diff = cfg.mismatches(saved)
    if diff:
        lines = ", ".join(f"{k}: checkpoint={a!r}, now={b!r}" for k, (a, b) in diff.items())
        raise ConfigMismatchError(
            f"The checkpoint in {checkpoint} was written with a different configuration ({lines}). "
            "Resume with the same settings, or start a new run in another logdir."
        )
