"""The task-suite script (benchmarks/suite.py): the bar a seed must clear and the table's verdicts."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def suite():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("suite", ROOT / "benchmarks" / "suite.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _summary(task, returns, random_mean, random_std, test_episodes=4, suite=None):
    s = {"task": task, "action_repeat": 2, "random_mean": random_mean, "random_std": random_std,
         "random_episodes": 8, "ours_final_test_return": returns, "wall_s": [60.0] * len(returns),
         "commits": [{"commit": "abcdef0123", "dirty": False}], "runs": [], "test_episodes": test_episodes}
    s["bar"] = suite.bar(random_mean, random_std, test_episodes)
    s["clearly_above"] = [x > s["bar"] for x in returns]
    return s


def test_bar_is_three_standard_errors_of_the_test_mean(suite):
    # Pendulum-v1: random -1067 +- 372 per episode, 4 test episodes: -1067 + 3 * 372 / 2
    assert suite.bar(-1067.0, 372.0, 4) == pytest.approx(-509.0)
    assert suite.bar(10.0, 6.0, 9) == pytest.approx(16.0)
    assert suite.bar(5.0, None, 4) == 5.0  # a deterministic random return: no spread
    assert suite.bar(0.0, 1.0, 1) == pytest.approx(3.0)


def test_table_counts_tasks_where_every_seed_clears_the_bar(suite):
    rows = [_summary("dmc:a", [700.0, 650.0], 100.0, 50.0, suite=suite),   # bar 175: both
            _summary("dmc:b", [700.0, 120.0], 100.0, 50.0, suite=suite),   # one of two
            _summary("gym:c", [-600.0, -700.0], -1067.0, 372.0, suite=suite)]  # bar -509: neither
    text = suite.table(rows)
    lines = [line for line in text.splitlines() if line.startswith("| dmc:") or line.startswith("| gym:")]
    assert lines[0].split("|")[6].strip() == "yes"
    assert lines[1].split("|")[6].strip() == "1 of 2 seeds"
    assert lines[2].split("|")[6].strip() == "no"
    assert "**1 of 3** tasks" in text
    assert "abcdef0" in lines[0] and "175.0" in lines[0]


def test_table_mode_rebuilds_from_the_task_jsons(suite, tmp_path):
    rows = [_summary("dmc:cartpole-swingup", [500.0, 400.0], 100.0, 40.0, suite=suite)]
    rows[0]["runs"] = [{"seed": 0, "curves": {"test": [[1000, 50.0], [2000, 500.0]]}}]
    name = tmp_path / "learning_p_dmc-cartpole-swingup.json"
    name.write_text(json.dumps(rows[0]))
    suite.main(["--preset", "p", "--tasks", "dmc:cartpole-swingup", "gym:missing-v0", "--results", str(tmp_path),
                "--table"])
    md = (tmp_path / "suite_p.md").read_text()
    assert "| dmc:cartpole-swingup |" in md and "**1 of 1** tasks" in md
    assert json.loads((tmp_path / "suite_p.json").read_text())["learned"] == 1
    assert (tmp_path / "suite_p.png").read_bytes()[:4] == b"\x89PNG"
    assert math.isfinite(rows[0]["bar"])


def test_compare_marks_each_seed_against_its_own_runs_random_policy(suite, tmp_path):
    planet = _summary("dmc:cheetah-run", [30.0, 20.0], 13.0, 10.0, suite=suite)  # bar 13 + 3 * 10 / 2 = 28
    planet["preset"] = "quick"
    (tmp_path / "learning_quick_dmc-cheetah-run.json").write_text(json.dumps(planet))
    other = dict(planet, task="gym:Reacher-v5", preset="quick", overrides=["episodes=75"])  # not the preset
    (tmp_path / "elsewhere.json").write_text(json.dumps(other))
    text = suite.compare(tmp_path, ["quick", "dreamer-quick"], ["dmc:cheetah-run", "gym:Reacher-v5"])
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert "30*, 20 (random 13, repeat 2) | not run |" in rows["dmc:cheetah-run"]
    assert rows["gym:Reacher-v5"].count("not run") == 2  # an overridden run does not stand for the preset


def test_a_suite_with_overrides_keeps_its_own_files(suite, tmp_path):
    plain = _summary("gym:Pendulum-v1", [-200.0, -150.0], -1100.0, 360.0, suite=suite)
    changed = _summary("gym:Pendulum-v1", [-1000.0, -900.0], -1100.0, 360.0, suite=suite)
    (tmp_path / "learning_p_gym-Pendulum-v1.json").write_text(json.dumps(plain))
    (tmp_path / "learning_p_gym-Pendulum-v1_optimizer-laprop.json").write_text(json.dumps(changed))
    suite.main(["--preset", "p", "--tasks", "gym:Pendulum-v1", "--results", str(tmp_path), "--table",
                "--set", "optimizer=laprop"])
    assert "-1000.0, -900.0" in (tmp_path / "suite_p_optimizer-laprop.md").read_text()
    assert not (tmp_path / "suite_p.md").exists()
    args = suite.build_parser().parse_args(["--preset", "p", "--set", "optimizer=laprop", "--root", str(tmp_path)])
    assert suite.task_args(args, "gym:Pendulum-v1").out.name == "learning_p_gym-Pendulum-v1_optimizer-laprop.json"


@pytest.mark.parametrize("preset_name, task, repeat", [("dreamerv3-quick", "dmc:cheetah-run", 2),
                                                       ("quick", "dmc:cheetah-run", 4),
                                                       ("dreamerv3-quick", "gym:Pendulum-v1", 1)])
def test_random_policy_runs_at_the_action_repeat_the_agent_trains_at(suite, preset_name, task, repeat):
    import argparse

    args = argparse.Namespace(preset=preset_name, env=task, algo=None, overrides=[])
    cfg = suite.ql.run_config(args)
    _, measured = suite.ql.random_returns(cfg, episodes=1)
    assert measured == repeat  # DreamerV3's protocol: 2 on every DMC domain; PlaNet's table: 4 for cheetah


def test_table_gives_each_runs_cpu_minutes_where_recorded(suite):
    s = _summary("gym:Pendulum-v1", [-200.0, -150.0], -1100.0, 360.0, suite=suite)
    s["runs"] = [{"seed": 0, "cpu_s": 600.0}, {"seed": 1, "cpu_s": 1320.0}]
    assert "1.0, 1.0 min (CPU 10.0, 22.0) |" in suite.table([s])
    s["runs"][1]["cpu_s"] = None  # an older run without it: no CPU column text
    assert "(CPU" not in suite.table([s])


def test_a_refused_run_is_a_row_of_the_table_with_its_reason(suite, tmp_path):
    # Dreamer v1 refuses discrete actions: the suite shows why, and counts the task as not learned
    suite.main(["--preset", "dreamer-quick", "--tasks", "gym:CartPole-v1", "--seeds", "0", "--jobs", "1",
                "--root", str(tmp_path / "runs"), "--results", str(tmp_path)])
    row = [line for line in (tmp_path / "suite_dreamer-quick.md").read_text().splitlines()
           if line.startswith("| gym:CartPole-v1 |")][0]
    assert "failed: algo='dreamer': env='gym:CartPole-v1' has discrete actions" in row
    assert "**0 of 1** tasks" in (tmp_path / "suite_dreamer-quick.md").read_text()
    cell = suite.compare(tmp_path, ["dreamer-quick"], ["gym:CartPole-v1"]).splitlines()[2]
    assert "failed: algo='dreamer'" in cell and "Use --algo dreamerv3" in cell


def test_table_mode_judges_single_task_files_written_before_the_suite(suite, tmp_path):
    old = _summary("gym:Reacher-v5", [-8.8, -61.0], -42.4, 5.0, suite=suite)  # bar -42.4 + 3 * 5 / 2 = -34.9
    del old["bar"], old["clearly_above"], old["test_episodes"]  # quick_learning.py's files have neither
    (tmp_path / "learning_quick_gym-Reacher-v5.json").write_text(json.dumps(old))
    suite.main(["--preset", "quick", "--tasks", "gym:Reacher-v5", "--results", str(tmp_path), "--table"])
    row = [line for line in (tmp_path / "suite_quick.md").read_text().splitlines() if line.startswith("| gym:")][0]
    assert "| -34.9 |" in row and "1 of 2 seeds" in row
