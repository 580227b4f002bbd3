"""The learning benchmark script (benchmarks/quick_learning.py) and the per-task presets."""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch

from torchrl_rssm.recipes import PRESETS, preset

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ql():
    return _load("quick_learning")


def _args(ql, *argv):
    return ql.build_parser().parse_args(list(argv))


def test_env_changes_only_the_task(ql):
    """--env keeps the preset's model and schedule and takes the task's action repeat, as the CLI does."""
    quick = preset("quick")
    cfg = ql.run_config(_args(ql, "--env", "dmc:reacher-easy"))
    assert cfg.env == "dmc:reacher-easy"
    assert cfg.action_repeat is None or cfg.action_repeat == 4  # None: make_env's per-domain default (4)
    assert (cfg.belief_dim, cfg.batch_size, cfg.episodes, cfg.updates_per_episode, cfg.num_candidates) == \
        (quick.belief_dim, quick.batch_size, quick.episodes, quick.updates_per_episode, quick.num_candidates)
    assert ql.run_config(_args(ql)).action_repeat == 8


def test_cli_args_and_output_names(ql):
    args = _args(ql, "--env", "gym:Pendulum-v1", "--set", "model_lr=1e-3")
    assert ql.cli_args(args, seed=3) == ["--preset", "quick", "--env", "gym:Pendulum-v1", "--set", "model_lr=1e-3",
                                         "--seed", "3"]
    cfg = ql.run_config(args)
    assert ql.output_path(args, cfg).name == "learning_quick_gym-Pendulum-v1_model_lr-1e-3.json"  # not the plain run's
    task_only = _args(ql, "--env", "gym:Pendulum-v1")
    assert ql.output_path(task_only, ql.run_config(task_only)).name == "learning_quick_gym-Pendulum-v1.json"
    plain = _args(ql)
    assert ql.output_path(plain, ql.run_config(plain)).name == "quick_learning.json"
    algo = _args(ql, "--preset", "tiny", "--algo", "planet")
    assert ql.output_path(algo, ql.run_config(algo)).name == "learning_tiny_dmc-cartpole-swingup.json"


def test_git_state_names_a_commit(ql):
    state = ql.git_state()
    assert re.fullmatch(r"[0-9a-f]{40}", state["commit"]) and isinstance(state["dirty"], bool)
    assert ql.git_state(Path("/")) == {"commit": None, "dirty": None}


def test_table_rows_from_every_json(ql, tmp_path):
    new = {"task": "dmc:reacher-easy", "observations": "state vectors", "action_repeat": 4, "agent": "planet",
           "preset": "quick", "ours_final_test_return": [512.3, 301.0], "ours_mean": 406.65,
           "random_mean": 40.2, "random_std": 12.1, "random_episodes": 8, "wall_s": [600.0, 630.0], "jobs": 1,
           "commits": [{"commit": "abcdef1234567", "dirty": True}], "partial": True}
    old = {"task": "dmc:cartpole-swingup (state vectors, action repeat 8)", "ours_final_test_return": [432.4],
           "ours_mean": 432.4, "random_mean": 125.3, "random_std": 58.7, "random_episodes": 4,
           "wall_s": [381.6], "jobs": 2}
    (tmp_path / "learning_quick_dmc-reacher-easy.json").write_text(json.dumps(new))
    (tmp_path / "quick_learning.json").write_text(json.dumps(old))
    (tmp_path / "soak.json").write_text(json.dumps({"other": 1}))  # not a learning table
    (tmp_path / "learning_quick_x.json").write_text(json.dumps(dict(new, overrides=["action_repeat=4"])))
    text = ql.write_table(tmp_path).read_text()
    rows = [line for line in text.splitlines() if line.startswith("| dmc")]
    assert len(rows) == 3
    assert rows[2].startswith("| dmc:reacher-easy, state vectors, action repeat 4 | planet (`quick` `--set action_repeat=4`)")
    assert "| dmc:reacher-easy, state vectors, action repeat 4 | planet (`quick`) (partial) | 40 ± 12 (8 ep.) | " \
           "512, 301 | 407 | 10.0, 10.5 min | 1 | abcdef1+dirty |" in rows
    assert rows[0].startswith("| dmc:cartpole-swingup, state vectors, action repeat 8 | planet (`quick`) | 125 ± 59")


def test_unknown_preset_is_refused_by_name(ql):
    with pytest.raises(ValueError, match="Unknown preset 'quik'.*did you mean 'quick'"):
        ql.run_config(_args(ql, "--preset", "quik"))


# ---------------------------------------------------------------- benchmarks/soak.py
@pytest.fixture(scope="module")
def soak():
    return _load("soak")


def test_soak_summary_against_hand_computed(soak):
    rows = [{"episode": e, "buffer_steps": min(e, 3) * 10, "rss_mb": rss, "tensor_mb": 5.0}
            for e, rss in zip(range(1, 16), [90, 95, 100] + [101] * 11 + [104])]
    for r, ups in zip(rows[2:], [10.0] * 5 + [9.0] * 3 + [8.0] * 5):  # trained from episode 3
        r.update(updates_per_s=ups, cpu_ms_per_update=1000 / ups)
    out = soak.summarise(rows, capacity=30)
    assert out["buffer_full_at_episode"] == 3
    assert out["rss_growth_after_full"] == pytest.approx(0.04) and out["rss_goal_met"]
    assert out["episodes_after_full"] == 12
    assert out["updates_per_s_first5"] == 10.0 and out["updates_per_s_last5"] == 8.0
    assert out["updates_per_s_change"] == pytest.approx(-0.2) and not out["speed_goal_met"]
    assert out["cpu_ms_per_update_change"] == pytest.approx(0.25)
    rows[-1]["rss_mb"] = 106.0  # 6% over the full-buffer figure
    assert not soak.summarise(rows, capacity=30)["rss_goal_met"]


def test_soak_tensor_bytes_counts_each_storage_once(soak):
    import types

    import torch
    from tensordict import TensorDict

    weight = torch.zeros(10, 4)                      # 160 bytes
    storage = TensorDict({"obs": torch.zeros(7, 3, dtype=torch.uint8), "r": torch.zeros(7)}, [7])  # 21 + 28
    agent = types.SimpleNamespace(state_dict=lambda: {"world_model": {"w": weight, "w_view": weight[:2]},
                                                      "optimizer": {"state": {0: {"exp_avg": torch.zeros(5)}}}})
    trainer = types.SimpleNamespace(buffer=types.SimpleNamespace(storage=types.SimpleNamespace(_storage=storage)),
                                    agent=agent)
    assert soak.tensor_bytes(trainer) == {"buffer": 49, "agent": 160 + 20}
    assert soak.rss_bytes() > 10 * 2**20  # a python process with torch loaded


# ------------------------------------------------------------------------- presets
def test_quick_pixels_preset_sizes():
    """64x64 pixels, half-width convs, the quick preset's RSSM and planner, a buffer sized from the run."""
    quick, pixels = preset("quick"), preset("quick-pixels")
    assert pixels.from_pixels and pixels.image_size == 64 and pixels.env == quick.env
    assert pixels.channels == 16 and quick.channels == 32 == preset("cartpole-swingup").channels
    for field in ("state_dim", "belief_dim", "hidden_dim", "planning_horizon", "num_candidates", "action_repeat"):
        assert getattr(pixels, field) == getattr(quick, field), field
    assert pixels.buffer_capacity is None  # (5 + 60) x 125 steps, not 100k steps of 24.6 kB reserved at once


def test_channels_reach_the_world_model(tmp_path):
    from torchrl_rssm.recipes import Trainer, apply_overrides

    cfg = apply_overrides(preset("tiny"), ["from_pixels=true", "channels=8", f"logdir={tmp_path}"])
    wm = Trainer(cfg).world_model
    convs = [m for m in wm.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 32, 64]
    assert wm.encoder(torch.zeros(2, 3, 64, 64, dtype=torch.uint8)).shape == (2, 64 * 2 * 2)
    deconvs = [m for m in wm.decoder.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert deconvs[-1].out_channels == 3 and deconvs[0].out_channels == 8 * 4


def test_random_baseline_reports_the_task_action_repeat(ql):
    """--env leaves action_repeat None in the config: the JSON records the repeat the env used."""
    cfg = ql.run_config(_args(ql, "--preset", "tiny", "--env", "dmc:reacher-easy", "--set", "max_episode_steps=5"))
    assert cfg.action_repeat is None
    returns, repeat = ql.random_returns(cfg, episodes=2)
    assert repeat == 4 and len(returns) == 2 and all(0 <= r <= 5 * 4 for r in returns)  # reward <= 1 per env step


def test_git_state_ignores_results_but_not_code(ql, tmp_path):
    import subprocess

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "learning.md").write_text("a")
    (tmp_path / "code.py").write_text("x = 1")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    assert ql.git_state(tmp_path)["dirty"] is False
    (tmp_path / "benchmarks" / "results" / "learning.md").write_text("b")  # an output rewritten
    assert ql.git_state(tmp_path)["dirty"] is False
    (tmp_path / "code.py").write_text("x = 2")
    assert ql.git_state(tmp_path)["dirty"] is True
