"""`torchrl-rssm` command line: task settings under --env, resume, output streams, overrides, checkpoints."""
from __future__ import annotations

import json

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
    assert "lambda_reward = 1.0:" in text  # field docs


def test_override_errors_suggest_and_name_the_type():
    with pytest.raises(ValueError, match="unknown field 'batchsize'. Did you mean 'batch_size'"):
        apply_overrides(preset("tiny"), ["batchsize=32"])
    with pytest.raises(ValueError, match="expected an integer"):
        apply_overrides(preset("tiny"), ["batch_size=3.5"])
    with pytest.raises(ValueError, match="expected a number"):
        apply_overrides(preset("tiny"), ["lr=fast"])
    with pytest.raises(ValueError, match="'horizon' was renamed to 'planning_horizon'"):
        apply_overrides(preset("tiny"), ["horizon=3"])
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
    assert result["episodes"] == cfg.seed_episodes + 2  # the run's count (the tiny preset says 1)
    assert "\x1b[" not in err and "\x1b[" not in out  # no colour codes off a terminal
    assert "[torchrl][INFO]" in err  # torchrl's log lines land on stderr
    assert "episode 4/4" in err and "replay buffer: capacity" in err  # --no-progress status lines
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
