"""Checkpoints that survive faults: two deep, checked on load, fallback with what it cost; RNG states."""
from __future__ import annotations

import os
import random
import warnings
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from tensordict import TensorDict  # noqa: E402

from torchrl_rssm.data import make_replay_buffer  # noqa: E402
from torchrl_rssm.recipes.checkpoint import (CHECKPOINT_DIR, PREVIOUS_DIR, CheckpointError,  # noqa: E402
                                             find_generators, get_rng_state, load_state, resume_checkpoint,
                                             set_rng_state, write_checkpoint)


def _episode(ep: int, n: int = 10) -> TensorDict:
    g = torch.Generator().manual_seed(ep)
    frames = torch.randint(0, 256, (n + 1, 3, 8, 8), generator=g, dtype=torch.uint8)
    t = torch.arange(n)
    return TensorDict({"pixels": frames[:-1], ("next", "pixels"): frames[1:], "action": torch.randn(n, 2),
                       "is_init": (t == 0).unsqueeze(-1), ("next", "done"): (t == n - 1).unsqueeze(-1)}, [n])


def _run(logdir: Path, checkpoints: int = 3, algo: str = "planet"):
    """A fake run: one episode and 5 updates between checkpoints; returns the buffer."""
    rb = make_replay_buffer(200, batch_size=2, chunk_length=4)
    for k in range(1, checkpoints + 1):
        rb.extend(_episode(k))
        state = {"algo": algo, "config": {"algo": algo}, "counters": {"episodes": k, "updates": 5 * k},
                 "weights": torch.full((3,), float(k))}
        write_checkpoint(logdir, state, rb)
    return rb


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_kept_two_deep(tmp_path):
    _run(tmp_path, checkpoints=3)
    dirs = sorted(p.name for p in tmp_path.iterdir())
    assert dirs == [CHECKPOINT_DIR, PREVIOUS_DIR]
    assert load_state(tmp_path / CHECKPOINT_DIR)["counters"]["episodes"] == 3
    assert load_state(tmp_path / PREVIOUS_DIR)["counters"]["episodes"] == 2


def test_truncated_state_pt_is_named_and_resume_falls_back_with_what_was_lost(tmp_path):
    _run(tmp_path)
    _truncate(tmp_path / CHECKPOINT_DIR / "state.pt")
    with pytest.raises(CheckpointError) as err:
        load_state(tmp_path / CHECKPOINT_DIR)
    message = str(err.value)
    assert "\n" not in message and "checkpoint/state.pt: truncated" in message
    with pytest.warns(RuntimeWarning, match=r"state.pt: truncated.*Resuming from .*checkpoint.prev.*"
                                            r"1 episodes, 5 updates (are )?lost"):
        folder, state = resume_checkpoint(tmp_path, algo="planet")
    assert folder.name == PREVIOUS_DIR and state["counters"] == {"episodes": 2, "updates": 10}
    assert torch.equal(state["weights"], torch.full((3,), 2.0))
    assert (tmp_path / "checkpoint.bad").is_dir()  # kept for inspection, out of the way
    # the next checkpoint keeps the good one as checkpoint.prev
    rb = make_replay_buffer(200, batch_size=2, chunk_length=4)
    rb.extend(_episode(9))
    write_checkpoint(tmp_path, {"algo": "planet", "config": {}, "counters": {"episodes": 3, "updates": 15}}, rb)
    assert load_state(tmp_path / PREVIOUS_DIR)["counters"]["episodes"] == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback, no warning
        assert resume_checkpoint(tmp_path)[1]["counters"]["episodes"] == 3


def test_corrupted_state_pt_same_size_is_caught(tmp_path):
    _run(tmp_path)
    path = tmp_path / CHECKPOINT_DIR / "state.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="state.pt: corrupted"):
        load_state(tmp_path / CHECKPOINT_DIR)


def test_truncated_replay_file_falls_back_and_nothing_stored_is_lost(tmp_path):
    from torchrl_rssm.data import load_replay_buffer

    _run(tmp_path, checkpoints=2)
    saved_prev = load_replay_buffer(tmp_path / PREVIOUS_DIR / "replay")
    files = [p for p in (tmp_path / CHECKPOINT_DIR / "replay" / "data").rglob("*") if p.is_file()]
    _truncate(max(files, key=lambda p: p.stat().st_size), keep=0.3)
    with pytest.warns(RuntimeWarning, match=r"replay/data/.*truncated.*1 episodes, 5 updates"):
        folder, _ = resume_checkpoint(tmp_path, algo="planet")
    assert folder.name == PREVIOUS_DIR
    rb = make_replay_buffer(200, batch_size=2, chunk_length=4)
    load_replay_buffer(folder / "replay", rb)
    assert len(rb) == 10 == len(saved_prev)  # everything the checkpoint it fell back to stored
    assert torch.equal(rb.steps(slice(0, 10))["pixels"], _episode(1)["pixels"])
    assert torch.equal(rb.steps(slice(0, 10))["next", "pixels"], _episode(1)["next", "pixels"])


def test_checkpoint_of_another_agent_or_format_is_refused_in_one_line(tmp_path):
    _run(tmp_path, algo="planet")
    with pytest.raises(CheckpointError) as err:
        resume_checkpoint(tmp_path, algo="dreamer")
    message = str(err.value)
    assert "\n" not in message
    assert "written by the 'planet' agent, this run is 'dreamer'" in message and "state.pt" in message
    assert "1 older checkpoint(s) failed too" in message
    # a checkpoint of the earlier format (no manifest) is named as such
    (tmp_path / CHECKPOINT_DIR / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="manifest.json: missing: the checkpoint was written by an older"):
        load_state(tmp_path / CHECKPOINT_DIR)


def test_kill_between_the_two_renames_resumes_from_the_complete_new_one(tmp_path):
    _run(tmp_path, checkpoints=2)
    # as if killed after checkpoint -> checkpoint.prev and before checkpoint.tmp -> checkpoint
    (tmp_path / PREVIOUS_DIR).rename(tmp_path / "gone")
    (tmp_path / CHECKPOINT_DIR).rename(tmp_path / PREVIOUS_DIR)
    (tmp_path / "gone").rename(tmp_path / "checkpoint.tmp")
    import shutil

    shutil.rmtree(tmp_path / PREVIOUS_DIR)
    _run(tmp_path / "other", checkpoints=3)
    shutil.copytree(tmp_path / "other" / CHECKPOINT_DIR, tmp_path / "checkpoint.tmp", dirs_exist_ok=True)
    folder, state = resume_checkpoint(tmp_path)
    assert folder == tmp_path / CHECKPOINT_DIR and state["counters"]["episodes"] == 3
    # an incomplete .tmp (no manifest: killed while writing) is never used
    (tmp_path / "checkpoint.tmp").mkdir()
    torch.save({"config": {}}, tmp_path / "checkpoint.tmp" / "state.pt")
    assert resume_checkpoint(tmp_path)[1]["counters"]["episodes"] == 3


def test_rng_states_torch_numpy_python_and_named_generators():
    g = torch.Generator().manual_seed(3)
    module = torch.nn.Sequential(torch.nn.Linear(2, 2))
    module[0].noise = g
    rb = make_replay_buffer(10, batch_size=1, chunk_length=2, generator=torch.Generator().manual_seed(4))
    generators = find_generators(agent=module, buffer=rb)
    assert set(generators) == {"agent.0.noise", "buffer._rng"}  # the buffer's is its sampler's

    class Agent:  # not a module itself: holds modules (world model, policy)
        def __init__(self):
            self.policy = module

    assert set(find_generators(agent=Agent())) == {"agent.policy.0.noise"}
    state = get_rng_state(generators)

    def draw():
        return (torch.rand(3), np.random.rand(2), random.random(), torch.rand(2, generator=g),
                torch.rand(2, generator=rb.sampler._rng))

    first = draw()
    set_rng_state(state, generators)
    again = draw()
    for a, b in zip(first, again):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(KeyError, match="other"):
        set_rng_state(state, {"other": torch.Generator()})


def test_trainer_resumes_from_previous_checkpoint_when_state_pt_is_truncated(tmp_path):
    """The PlaNet trainer at the tiny preset: a truncated newest state.pt costs one episode, not the run."""
    from run_helpers import preset_config
    from torchrl_rssm.recipes import Trainer

    cfg = preset_config("tiny", tmp_path, seed_episodes=2, episodes=2, test_every=0, video_every=0)
    Trainer(cfg).train()
    newest = load_state(tmp_path / "run" / CHECKPOINT_DIR)["counters"]
    previous = load_state(tmp_path / "run" / PREVIOUS_DIR)["counters"]
    assert newest["seed_episodes"] + newest["episodes"] == 4 and previous["episodes"] < newest["episodes"]
    _truncate(tmp_path / "run" / CHECKPOINT_DIR / "state.pt", keep=0.1)
    with pytest.warns(RuntimeWarning, match="state.pt: truncated.*lost"):
        resumed = Trainer(preset_config("tiny", tmp_path, seed_episodes=2, episodes=2, test_every=0,
                                        video_every=0), resume=True)
    assert resumed.counters == previous
    assert len(resumed.buffer) == (previous["seed_episodes"] + previous["episodes"]) * cfg.max_episode_steps


def test_cli_resume_with_every_checkpoint_broken_is_one_line_exit_2(tmp_path, capsys):
    from torchrl_rssm.cli import main

    logdir = str(tmp_path / "run")
    args = ["train", "--preset", "tiny", "--logdir", logdir, "--no-progress", "--set", "test_every=0",
            "--set", "video_every=0"]
    assert main(args) == 0
    for folder in (CHECKPOINT_DIR, PREVIOUS_DIR):
        _truncate(Path(logdir) / folder / "state.pt", keep=0.2)
    capsys.readouterr()
    assert main([*args, "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoint/state.pt: truncated" in err[0], err
    assert "1 older checkpoint(s) failed too" in err[0]
