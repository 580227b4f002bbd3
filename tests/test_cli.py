"""`torchrl-rssm` command line: task settings under --env, resume, output streams, overrides, checkpoints."""
from __future__ import annotations

import json
import time

import pytest
import torch

from torchrl_rssm.cli import _parser, main, train_config
from torchrl_rssm.recipes import Agent, Trainer, agent_class, apply_overrides, preset
from torchrl_rssm.recipes.trainer import find_checkpoint


def _cfg(*argv):
    return train_config(_parser().parse_args(["train", *argv]))


def test_env_resets_the_presets_task_settings_unless_set():
    cfg, resume = _cfg("--preset", "tiny", "--env", "gym:Pendulum-v1")
    assert not resume
    assert cfg.action_repeat is None and cfg.max_episode_steps is None  # make_env: the task's defaults
    assert cfg.logdir == "runs/planet-gym-Pendulum-v1"
    assert cfg.batch_size == preset("tiny").batch_size  # the rest stays the preset's
    cfg, _ = _cfg("--env", "dmc:reacher-easy", "--set", "action_repeat=4", "--set", "max_episode_steps=30",
                  "--logdir", "runs/x")
    assert (cfg.action_repeat, cfg.max_episode_steps, cfg.logdir) == (4, 30, "runs/x")
    cfg, _ = _cfg("--preset", "walker-walk")  # a preset without --env keeps its own
    assert (cfg.env, cfg.action_repeat, cfg.logdir) == ("dmc:walker-walk", 2, "runs/planet-walker-walk")
    from torchrl_rssm.envs import make_env
    assert make_env("gym:Pendulum-v1", from_pixels=False, action_repeat=cfg.action_repeat and None).action_repeat == 1
    text = _parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert "--env changes the task and resets" in text and "action_repeat" in text
    assert "lambda_reward = 10.0:" in text  # field docs, with the values of the preset that runs (quick)


def test_override_errors_suggest_and_name_the_type():
    with pytest.raises(ValueError, match="unknown field 'batchsize'. Did you mean 'batch_size'"):
        apply_overrides(preset("tiny"), ["batchsize=32"])
    with pytest.raises(ValueError, match="expected an integer"):
        apply_overrides(preset("tiny"), ["batch_size=3.5"])
    with pytest.raises(ValueError, match="expected a finite number > 0"):
        apply_overrides(preset("tiny"), ["model_lr=fast"])
    with pytest.raises(ValueError, match="unknown field 'lr'. Did you mean"):
        apply_overrides(preset("tiny"), ["lr=3e-4"])
    with pytest.raises(ValueError, match="did you mean 'quick'"):
        preset("quik")


def test_algo_names_an_agent_class(tmp_path, capsys):
    from torchrl_rssm.recipes.dreamer import DreamerAgent
    from torchrl_rssm.recipes.planet import PlaNetAgent

    assert agent_class("dreamer") is DreamerAgent and agent_class("planet") is PlaNetAgent
    assert issubclass(DreamerAgent, Agent)
    with pytest.raises(ValueError, match="expected one of"):
        agent_class("sac")
    with pytest.raises(SystemExit) as exit_info:  # argparse's choices
        main(["train", "--algo", "sac", "--logdir", str(tmp_path / "d")])
    assert exit_info.value.code == 2 and "invalid choice: 'sac'" in capsys.readouterr().err


def test_presets_listed_by_agent_with_field_docs(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("planet:\n") and "\n  quick: " in out
    assert "planning_horizon = 12: H: planning horizon" in out


def _saved_run(tmp_path, **overrides):
    """A run's checkpoint written before any episode (no training: fast)."""
    cfg = preset("tiny")
    cfg.logdir, cfg.progress = str(tmp_path / "run"), False
    for k, v in overrides.items():
        setattr(cfg, k, v)
    trainer = Trainer(cfg)
    trainer.save_checkpoint()
    return cfg


def test_checkpoint_accepted_as_logdir_folder_or_state_file(tmp_path):
    cfg = _saved_run(tmp_path)
    folder = tmp_path / "run" / "checkpoint"
    for given in (tmp_path / "run", folder, folder / "state.pt"):
        assert find_checkpoint(given) == folder
    with pytest.raises(FileNotFoundError, match="no state.pt found"):
        find_checkpoint(tmp_path)
    assert main(["eval", "--checkpoint", str(folder), "--video", str(tmp_path / "v.avi")]) == 2
    assert cfg.episodes == 1


def test_resume_keeps_the_runs_settings_and_streams_stay_apart(tmp_path, capsys):
    """--resume continues toward the run's episode count (not the preset's); stdout is one JSON line."""
    cfg = _saved_run(tmp_path, episodes=2, test_every=2, video_every=0)
    logdir = cfg.logdir
    resumed, resume = _cfg("--resume", "--logdir", logdir)  # no preset given: the run's own settings
    assert resume and resumed.to_dict() == cfg.to_dict()
    resumed, _ = _cfg("--preset", "tiny", "--resume", "--logdir", logdir, "--episodes", "5")
    assert resumed.episodes == 5 and resumed.test_every == 2  # explicit resumable fields override
    capsys.readouterr()
    assert main(["train", "--preset", "tiny", "--resume", "--logdir", logdir, "--set", "batch_size=8"]) == 2
    assert "batch_size: checkpoint=4, now=8" in capsys.readouterr().err
    assert main(["train", "--preset", "tiny", "--resume", "--logdir", logdir, "--no-progress"]) == 0
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert len(lines) == 1, out  # only the result on stdout
    result = json.loads(lines[0], parse_constant=lambda name: pytest.fail(f"{name} is not strict JSON"))
    assert result["episodes"] == 2 and result["seed_episodes"] == cfg.seed_episodes  # the run's (tiny says 1)
    assert 0 < result["cpu_s"] <= time.process_time() + 0.1  # the process's CPU time so far (rounded to 0.1 s)
    assert "\x1b[" not in err and "\x1b[" not in out  # no colour codes
    assert "Initialized LazyTensorStorage" not in err  # torchrl's INFO lines repeat ours: not shown
    assert "episode 2/2 (after 2 seed episodes)" in err and "replay buffer: capacity" in err  # status lines
    saved = torch.load(f"{logdir}/checkpoint/state.pt", weights_only=False)["config"]
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == saved


def test_env_kwargs_grayscale_and_image_size_reach_the_environment(tmp_path):
    cfg = apply_overrides(preset("tiny"), ['env_kwargs={"time_limit": 2}', "grayscale=true", "image_size=48",
                                           "from_pixels=true", "max_episode_steps=null", f"logdir={tmp_path}"])
    assert cfg.env_kwargs == {"time_limit": 2} and cfg.grayscale and cfg.image_size == 48
    trainer = Trainer(cfg)
    try:
        # dm_control's time_limit (2 s = 200 env steps at repeat 8) sets the episode; one grey 48x48 channel
        assert trainer.episode_steps == 25
        assert tuple(trainer.env.observation_spec["pixels"].shape) == (1, 48, 48)
    finally:
        trainer.env.close()
    with pytest.raises(ValueError, match="env_kwargs.*expected a JSON object"):
        apply_overrides(preset("tiny"), ["env_kwargs=continuous"])
    with pytest.raises(ValueError, match="env_kwargs.*expected a JSON object"):
        apply_overrides(preset("tiny"), ["env_kwargs=[1, 2]"])


def test_eval_loads_models_without_the_replay_buffer(tmp_path):
    from torchrl_rssm.recipes import load_trainer

    cfg = preset("tiny")
    cfg.logdir, cfg.progress, cfg.episodes, cfg.test_every, cfg.video_every = str(tmp_path / "run"), False, 0, 0, 0
    Trainer(cfg).train()  # the seed episodes fill the buffer and are checkpointed
    full = load_trainer(cfg.logdir)
    light = load_trainer(cfg.logdir, with_buffer=False)
    assert len(full.buffer) == cfg.seed_episodes * cfg.max_episode_steps and len(light.buffer) == 0
    assert light.counters == full.counters
    for (name, a), b in zip(full.agent.world_model.state_dict().items(), light.agent.world_model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def _help(*argv) -> str:
    from torchrl_rssm.cli import _chosen_preset

    parser = _parser(_chosen_preset(list(argv)))
    text = parser.format_help() if not argv else \
        parser._subparsers._group_actions[0].choices[argv[0]].format_help()
    return text if argv and argv[0] == "train" else " ".join(text.split())  # argparse wraps flag help


def test_help_texts_are_true_and_show_the_presets_that_runs():
    top = _help()
    assert "when available" not in top and "Dreamer" in top and "torchrun" in top
    quick = _help("train")
    assert "values of the preset 'quick'" in quick and "episodes = 35:" in quick and "planning_horizon = 12:" in quick
    assert "torchrl-rssm presets" in quick
    dreamer = _help("train", "--preset", "dreamer-tiny")
    assert "values of the preset 'dreamer-tiny'" in dreamer and "imagination_horizon = 4:" in dreamer
    assert "planning_horizon" not in dreamer  # a Dreamer run has no planner fields
    assert "values of the preset 'dreamer-quick'" in _help("train", "--algo=dreamer")
    evaluation = _help("eval")
    assert "(default: 5)" in evaluation and "the run's own device" in evaluation
    for text in (top, quick, dreamer, evaluation):
        assert "issue" not in text.lower() and "this release" not in text.lower()


def test_train_twice_without_logdir_starts_a_new_run_and_counts_agent_episodes(tmp_path, monkeypatch, capsys):
    """A second `torchrl-rssm train` must not fail: it writes runs/<name>-2. `--set episodes=N` ends
    with "episodes": N (counted after the seed episodes, as the help says)."""
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--preset", "tiny", "--no-progress", "--set", "episodes=2", "--set", "test_every=2",
            "--set", "checkpoint_every=1", "--set", "video_every=0"]
    results = []
    for _ in range(2):
        assert main(argv) == 0
        out, err = capsys.readouterr()
        results.append(json.loads(out))
        assert "nan" not in err  # no "test_return nan" before the first test
        first_status = next(line for line in err.splitlines() if "episode " in line)
        assert "test_return" not in first_status
    assert [r["logdir"] for r in results] == ["runs/planet-tiny", "runs/planet-tiny-2"]
    assert results[0]["episodes"] == 2 and results[0]["seed_episodes"] == 2
    # with --logdir a taken folder is refused, but only once every setting has been checked
    taken = ["train", "--preset", "tiny", "--logdir", "runs/planet-tiny"]
    assert main([*taken, "--set", "chunk_length=999"]) == 2
    assert "chunk_length=999" in capsys.readouterr().err
    assert main([*taken, "--device", "cuda:99"]) == 2
    assert "cuda:99" in capsys.readouterr().err
    assert main(taken) == 2
    assert "holds a checkpoint" in capsys.readouterr().err


def test_progress_bar_ends_with_the_last_loss_and_eval_reports_progress(tmp_path, capsys):
    logdir = str(tmp_path / "run")
    assert main(["train", "--preset", "tiny", "--logdir", logdir, "--set", "video_every=0"]) == 0
    err = capsys.readouterr().err
    assert "loss=-" not in err and "loss=" in err.rsplit("\r", 1)[-1]  # the final bar shows the last loss
    assert "\x1b[" not in err
    assert main(["eval", "--checkpoint", logdir, "--episodes", "2"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["episodes"] == 2
    assert "2 test episodes" in err and "20/20" in err  # a progress bar over the episodes' steps
    assert "XDG_RUNTIME_DIR" not in err


def test_gym_run_evaluates_with_a_video_and_no_display_noise(tmp_path):
    """Headless, Gymnasium renders through pygame: no "XDG_RUNTIME_DIR is invalid" from SDL's Wayland probe."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items()
           if k not in ("DISPLAY", "WAYLAND_DISPLAY", "XDG_RUNTIME_DIR", "SDL_VIDEODRIVER")}
    run = [sys.executable, "-m", "torchrl_rssm.cli"]
    logdir = str(tmp_path / "run")
    train = subprocess.run([*run, "train", "--preset", "tiny", "--env", "gym:Pendulum-v1", "--logdir", logdir,
                            "--set", "max_episode_steps=20", "--set", "video_every=0", "--set", "test_every=0",
                            "--no-progress"], env=env, capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stderr[-2000:]
    gif = tmp_path / "eval.gif"
    ev = subprocess.run([*run, "eval", "--checkpoint", logdir, "--episodes", "2", "--video", str(gif)], env=env,
                        capture_output=True, text=True, timeout=300)
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert gif.read_bytes()[:6] == b"GIF89a"
    assert "XDG_RUNTIME_DIR" not in ev.stderr + train.stderr and "error" not in ev.stderr.lower()


def test_ctrl_c_prints_one_line_and_exit_code_130(monkeypatch, capsys):
    """An interrupted command ends with one line on how to continue (exit 130), not a traceback."""
    import torchrl_rssm.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_train", interrupted)
    assert cli.main(["train", "--preset", "tiny"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resume" in err[0] and "Traceback" not in err[0]
