"""Shared by the kill-and-resume tests: run `torchrl-rssm train` in a subprocess and SIGKILL it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch


def train_and_kill_after(logdir: Path, args: list[str], min_episodes: int = 4, timeout_s: float = 150) -> dict:
    """Starts ``torchrl-rssm train --logdir logdir <args>``, SIGKILLs it once a checkpoint holds
    ``min_episodes`` collected episodes (seed episodes included), and returns the last complete checkpoint's state."""
    cmd = [sys.executable, "-m", "torchrl_rssm.cli", "train", "--logdir", str(logdir), "--no-progress", *args]
    env = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state_path = logdir / "checkpoint" / "state.pt"
    deadline = time.time() + timeout_s
    try:
        while time.time() < deadline and proc.poll() is None:
            if state_path.exists():
                try:
                    saved = torch.load(state_path, weights_only=False)
                except Exception:  # being renamed into place right now
                    saved = None
                if saved is not None and saved["counters"]["seed_episodes"] + saved["counters"]["episodes"] >= min_episodes:
                    break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    return torch.load(state_path, weights_only=False)  # the last complete checkpoint


def preset_config(name: str, tmp_path: Path, **overrides):
    """The preset ``name`` with its logdir under ``tmp_path``, no progress bar, and ``overrides``."""
    from torchrl_rssm.recipes import preset

    cfg = preset(name)
    cfg.logdir = str(tmp_path / "run")
    cfg.progress = False
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def tensorboard_tags(logdir: str):
    """``(accumulator, tags)`` of a run's TensorBoard events (images and scalars kept whole)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(logdir, size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc, acc.Tags()
