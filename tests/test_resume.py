"""Exact resume: a run killed with SIGKILL and resumed ends bit-equal to the uninterrupted run;
a finished run extended with more episodes equals the longer run asked for from the start."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import pytest  # noqa: E402
import torch  # noqa: E402

from run_helpers import train_and_kill_after  # noqa: E402
from torchrl_rssm.envs import EnvRandomState, env_random_states, make_env, set_env_random_states  # noqa: E402
from torchrl_rssm.recipes.checkpoint import load_state  # noqa: E402

#: the agents at test size: their CLI arguments
AGENTS = {
    "planet": ["--preset", "tiny"],
    "dreamer": ["--algo", "dreamer", "--preset", "dreamer-tiny"],
    "dreamerv3": ["--algo", "dreamerv3", "--preset", "dreamerv3-tiny"],
}
EPISODES = 6  # after the 2 seed episodes: 8 collected, a checkpoint after each


def _train(logdir: Path, args: list[str], resume: bool = False) -> dict:
    cmd = [sys.executable, "-m", "torchrl_rssm.cli", "train", "--logdir", str(logdir), "--no-progress", *args]
    if resume:
        cmd.append("--resume")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return load_state(logdir / "checkpoint")


def _assert_same_run(a: dict, b: dict) -> None:
    assert a["counters"] == b["counters"]
    assert a["schedule"] == b["schedule"]
    assert a["agent_keys"] == b["agent_keys"]
    for key in a["agent_keys"]:
        pa, pb = a[key], b[key]
        if isinstance(pa, dict):  # module / optimiser state dicts
            flat_a, flat_b = _flatten(pa), _flatten(pb)
            assert flat_a.keys() == flat_b.keys(), key
            for name in flat_a:
                va, vb = flat_a[name], flat_b[name]
                if isinstance(va, torch.Tensor):
                    assert torch.equal(va, vb), f"{key}.{name} differs"
                else:
                    assert va == vb, f"{key}.{name} differs"
        elif isinstance(pa, torch.Tensor):
            assert torch.equal(pa, pb), key
    assert a["last_test_return"] == b["last_test_return"]


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        elif isinstance(v, (list, tuple)) and v and isinstance(v[0], dict):
            for i, item in enumerate(v):
                out.update(_flatten(item, f"{prefix}{k}.{i}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted runs, one per agent (built on first use)."""
    runs: dict[str, dict] = {}

    def get(agent: str) -> dict:
        if agent not in runs:
            logdir = tmp_path_factory.mktemp(f"ref-{agent}") / "run"
            runs[agent] = _train(logdir, [*AGENTS[agent], "--episodes", str(EPISODES)])
        return runs[agent]

    return get


@pytest.mark.parametrize("agent", list(AGENTS))
@pytest.mark.parametrize("kill_after", [3, 6])  # collected episodes: early in the agent's episodes, and late
def test_killed_and_resumed_run_ends_bit_equal(tmp_path, reference, agent, kill_after):
    logdir = tmp_path / "run"
    args = [*AGENTS[agent], "--episodes", str(EPISODES)]
    saved = train_and_kill_after(logdir, args, min_episodes=kill_after)
    collected = saved["counters"]["seed_episodes"] + saved["counters"]["episodes"]
    assert kill_after <= collected < 2 + EPISODES  # killed before the end
    resumed = _train(logdir, args, resume=True)
    _assert_same_run(resumed, reference(agent))


def test_killed_run_of_two_serial_envs_ends_bit_equal(tmp_path):
    """Two environments in a SerialEnv: each one's generator state is kept and put back."""
    args = ["--preset", "tiny", "--episodes", str(EPISODES), "--set", "num_envs=2"]
    whole = _train(tmp_path / "whole", args)
    logdir = tmp_path / "run"
    saved = train_and_kill_after(logdir, args, min_episodes=4)
    assert len(saved["env_rng"]) == 2 and saved["env_rng"][0][0] == "dm_control"
    assert saved["counters"]["seed_episodes"] + saved["counters"]["episodes"] < 2 + EPISODES
    _assert_same_run(_train(logdir, args, resume=True), whole)


@pytest.mark.parametrize("agent", list(AGENTS))
def test_extended_run_equals_the_longer_run(tmp_path, agent):
    short, long_ = tmp_path / "short", tmp_path / "long"
    first = _train(short, [*AGENTS[agent], "--episodes", "2"])
    assert first["owed_fit"] is not None  # the last round's fit is left to an extension
    extended = _train(short, [*AGENTS[agent], "--episodes", "3"], resume=True)
    whole = _train(long_, [*AGENTS[agent], "--episodes", "3"])
    # tiny: 3 updates after each of the 3 rounds that precede an agent episode (collected 2, 3, 4)
    assert extended["counters"]["updates"] == whole["counters"]["updates"] == 9
    _assert_same_run(extended, whole)


def test_env_random_state_restores_the_next_initial_state():
    def make():
        return make_env("dmc:cartpole-swingup", from_pixels=False, max_episode_steps=5, seed=0) \
            .append_transform(EnvRandomState())

    from torchrl.envs import SerialEnv

    env = SerialEnv(2, make)
    env.set_seed(3)
    first = env.reset()["observation"]
    saved = env_random_states(env)
    assert len(saved) == 2 and all(s is not None and s[0] == "dm_control" for s in saved)
    second = env.reset()["observation"]
    assert not torch.equal(first, second)
    assert set_env_random_states(env, saved)
    assert torch.equal(env.reset()["observation"], first)
    assert not set_env_random_states(env, saved[:1])  # one state per environment
    env.close()
