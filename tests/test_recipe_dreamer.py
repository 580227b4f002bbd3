"""The Dreamer recipe end to end on the trainer core: `--algo dreamer`, TensorBoard, NaN policy, kill and resume."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from run_helpers import preset_config, tensorboard_tags, train_and_kill_after

from torchrl_rssm.cli import _parser, main, train_config
from torchrl_rssm.policies import DreamerPolicy
from torchrl_rssm.recipes import Trainer, apply_overrides, preset
from torchrl_rssm.recipes.dreamer import DreamerAgent


def tiny(tmp_path: Path, **overrides):
    return preset_config("dreamer-tiny", tmp_path, **overrides)


_tags = tensorboard_tags


def test_algo_dreamer_picks_the_dreamer_presets():
    cfg, _ = train_config(_parser().parse_args(["train", "--algo", "dreamer"]))
    assert cfg.algo == "dreamer" and cfg.logdir == preset("dreamer-quick").logdir
    assert cfg.imagination_horizon == 15 and cfg.actor_lr == preset("dreamer-quick").actor_lr
    paper = preset("dreamer-walker-walk")
    assert (paper.action_repeat, paper.model_lr, paper.actor_lr, paper.value_lr, paper.grad_clip) == \
        (2, 6e-4, 8e-5, 8e-5, 100)
    assert (paper.batch_size, paper.chunk_length, paper.updates_per_episode, paper.seed_episodes) == (50, 50, 100, 5)


def test_dreamer_whole_loop_from_pixels_logs_losses_behaviour_and_pictures(tmp_path):
    cfg = tiny(tmp_path, from_pixels=True)
    trainer = Trainer(cfg)
    assert isinstance(trainer.agent, DreamerAgent) and isinstance(trainer.agent.policy, DreamerPolicy)
    result = trainer.train()
    assert (result["seed_episodes"], result["episodes"]) == (cfg.seed_episodes, cfg.episodes)
    assert result["updates"] == cfg.updates_per_episode * cfg.episodes
    assert torch.isfinite(torch.tensor(result["test_return"]))
    acc, tags = _tags(cfg.logdir)
    for scalar in ("loss/loss_model_reco", "loss/loss_model_kl", "loss/loss_actor", "loss/loss_value",
                   "behaviour/imagined_return", "behaviour/action_entropy", "grad_norm/model", "grad_norm/actor",
                   "grad_norm/value", "test/return", "train/episode_return", "perf/updates_per_s"):
        assert scalar in tags["scalars"], (scalar, tags["scalars"])
    assert "model/reconstruction" in tags["images"]
    assert acc.Images("model/open_loop_prediction")[-1].encoded_image_string[:6] == b"GIF89a"
    # the entropy logged is that of the actor's pre-tanh Gaussian at the posterior latents: finite, a number
    assert all(torch.isfinite(torch.tensor(e.value)) for e in acc.Scalars("behaviour/action_entropy"))
    # eval runs the actor's mode on the checkpoint
    gif = tmp_path / "eval.gif"
    assert main(["eval", "--checkpoint", cfg.logdir, "--episodes", "2", "--video", str(gif)]) == 0
    assert gif.read_bytes()[:6] == b"GIF89a"


def test_dreamer_update_moves_all_three_networks_and_nan_returns_are_skipped(tmp_path):
    trainer = Trainer(tiny(tmp_path, episodes=0, test_every=0, video_every=0))
    trainer.train()  # the seed episodes fill the buffer
    agent = trainer.agent
    nets = {"model": agent.world_model, "actor": agent.actor, "value": agent.value}
    before = {n: [p.detach().clone() for p in net.parameters()] for n, net in nets.items()}
    trainer.update_model(1)
    for name, net in nets.items():  # each optimiser stepped its own network
        assert any(not torch.equal(a, b) for a, b in zip(before[name], net.parameters())), name
    # a NaN value head makes the imagined returns NaN: the update is skipped before any step
    last = list(agent.value.parameters())[-1]
    with torch.no_grad():
        last.fill_(float("nan"))
    snapshot = {n: [p.detach().clone() for p in net.parameters()] for n, net in nets.items() if n != "value"}
    with pytest.warns(RuntimeWarning, match="Update skipped"):
        trainer.update_model(2)
    assert trainer.counters["skipped_updates"] == 2
    for name, params in snapshot.items():
        assert all(torch.equal(a, b) for a, b in zip(params, nets[name].parameters())), name
    trainer.cfg.nan_policy = "raise"
    with pytest.raises(ValueError, match="(?i)non-finite"):
        trainer.update_model(1)


def test_dreamer_non_finite_gradients_skip_the_update_before_any_step(tmp_path):
    trainer = Trainer(tiny(tmp_path, episodes=0, test_every=0, video_every=0))
    trainer.train()
    agent = trainer.agent
    nets = {"model": agent.world_model, "actor": agent.actor, "value": agent.value}
    # finite losses, NaN gradient in the actor only: nothing may step, the model and value included
    hook = next(agent.actor.parameters()).register_hook(lambda grad: grad * float("nan"))
    before = {n: [p.detach().clone() for p in net.parameters()] for n, net in nets.items()}
    with pytest.warns(RuntimeWarning, match="non-finite gradients.*actor"):
        trainer.update_model(1)
    hook.remove()
    assert trainer.counters["skipped_updates"] == 1
    for name, params in before.items():
        assert all(torch.equal(a, b) for a, b in zip(params, nets[name].parameters())), name


def test_killed_dreamer_run_resumes_with_its_actor_value_and_optimisers(tmp_path):
    logdir = tmp_path / "killed"
    saved = train_and_kill_after(logdir, ["--algo", "dreamer", "--preset", "dreamer-tiny", "--set", "episodes=40",
                                          "--set", "test_every=0", "--set", "video_every=0"])
    cfg = preset("dreamer-tiny")
    apply_overrides(cfg, ["episodes=40", "test_every=0", "video_every=0", "progress=false"])
    cfg.logdir = str(logdir)
    resumed = Trainer(cfg, resume=True)
    assert resumed.counters == saved["counters"] and saved["counters"]["updates"] > 0
    collected = saved["counters"]["seed_episodes"] + saved["counters"]["episodes"]
    assert len(resumed.buffer) == collected * cfg.max_episode_steps
    for key, module in (("actor", resumed.agent.actor), ("value", resumed.agent.value),
                        ("world_model", resumed.agent.world_model)):
        for name, tensor in module.state_dict().items():
            torch.testing.assert_close(tensor, saved[key][name])
    opt_state = resumed.agent.optimizers["actor"].state_dict()["state"]
    assert opt_state and all(int(s["step"]) == saved["counters"]["updates"] for s in opt_state.values())
    # two more episodes with one block of updates between them (the last episode is not followed by one)
    resumed.cfg.episodes = saved["counters"]["episodes"] + 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = resumed.train()
    assert result["updates"] == saved["counters"]["updates"] + cfg.updates_per_episode


def test_dreamer_on_discrete_actions_is_refused_with_the_agents_that_handle_them(tmp_path, capsys):
    from torchrl_rssm.cli import main

    argv = ["train", "--preset", "dreamer-tiny", "--env", "gym:CartPole-v1", "--logdir", str(tmp_path / "run"),
            "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "discrete actions" in err and "--algo dreamerv3" in err and "Traceback" not in err
