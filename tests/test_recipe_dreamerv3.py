"""The DreamerV3 recipe end to end on the trainer core: `--algo dreamerv3`, TensorBoard, NaN policy,
kill and resume, episodes of one step, and the configuration read back from the built agent."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from run_helpers import preset_config, tensorboard_tags, train_and_kill_after

from torchrl_rssm.cli import _parser, train_config
from torchrl_rssm.envs import make_env
from torchrl_rssm.modules import DreamerV3BoundedNormalActor, DreamerV3DiscreteActor
from torchrl_rssm.policies import DreamerV3Policy
from torchrl_rssm.recipes import Trainer, apply_overrides, preset
from torchrl_rssm.recipes.config import TASK_FIELDS
from torchrl_rssm.recipes.dreamerv3 import DreamerV3Agent


def tiny(tmp_path: Path, **overrides):
    return preset_config("dreamerv3-tiny", tmp_path, **overrides)


def _nets(agent):
    return {"model": agent.world_model, "actor": agent.actor, "critic": agent.critic}


def _snapshot(agent):
    return {n: [p.detach().clone() for p in net.parameters()] for n, net in _nets(agent).items()}


def test_algo_dreamerv3_picks_its_presets_and_only_the_task_changes_with_env():
    cfg, _ = train_config(_parser().parse_args(["train", "--algo", "dreamerv3"]))
    quick = preset("dreamerv3-quick")
    assert cfg.algo == "dreamerv3" and cfg.to_dict() | {"logdir": None} == quick.to_dict() | {"logdir": None}
    other, _ = train_config(_parser().parse_args(["train", "--algo", "dreamerv3", "--env", "gym:Pendulum-v1"]))
    changed = {k for k, v in other.to_dict().items() if quick.to_dict()[k] != v}
    assert changed <= {"env", *TASK_FIELDS} and "env" in changed
    assert quick.action_repeat is None and quick.cross_episodes and quick.num_threads == 1
    paper = preset("dreamerv3-walker-walk")
    assert (paper.model_lr, paper.actor_critic_lr, paper.grad_clip, paper.actor_critic_grad_clip) == \
        (1e-4, 3e-5, 1000.0, 100.0)
    assert (paper.batch_size, paper.chunk_length, paper.num_categoricals, paper.num_classes) == (16, 64, 32, 32)
    assert paper.action_repeat == 2 and preset("dreamerv3-quick-pixels").from_pixels


def test_dreamerv3_agent_reads_back_its_config():
    cfg = apply_overrides(preset("dreamerv3-tiny"), [
        "belief_dim=11", "hidden_dim=13", "num_categoricals=3", "num_classes=5", "unimix=0.03", "model_lr=0.0011",
        "actor_critic_lr=0.00022", "adam_eps=3e-7", "grad_clip=77", "actor_critic_grad_clip=33",
        "imagination_steps=6", "entropy_bonus=0.002", "slow_critic_tau=0.07", "continuation_horizon=10"])
    env = make_env(cfg.env, from_pixels=False, max_episode_steps=10)
    agent = DreamerV3Agent(cfg, env, torch.device("cpu"))
    rollout = agent.world_model.rollout
    assert (rollout.prior.num_categoricals, rollout.prior.num_classes, rollout.belief_dim) == (3, 5, 11)
    assert rollout.prior.unimix == rollout.posterior.unimix == agent.model_loss.unimix == 0.03
    model = agent.model_loss  # the paper's settings
    assert (model.kl_mode, model.lambda_dynamic, model.lambda_representation, model.free_bits) == \
        ("separate", 0.5, 0.1, 1.0)
    assert model.lambda_continue == 1.0 and model.reward_two_hot and model.reco_symlog is True
    assert model.continue_target_scale == pytest.approx(0.9)  # the discount 1 - 1/H, H = continuation_horizon
    actor = agent.actor_loss
    assert (actor.imagination_horizon, actor.entropy_bonus, actor.gamma, actor.lmbda) == (6, 0.002, 1.0, 0.95)
    assert actor.use_reinforce is False and isinstance(agent.actor, DreamerV3BoundedNormalActor)
    assert actor.return_normalization_quantiles == (0.05, 0.95)
    assert agent.value_loss.value_loss == "two_hot" and agent.value_loss.slow_critic_regularization == 1.0
    assert agent.slow_critic.eps == pytest.approx(1 - 0.07)
    lrs = {n: (o.defaults["lr"], o.defaults["eps"]) for n, o in agent.optimizers.items()}
    assert lrs == {"model": (0.0011, 3e-7), "actor": (0.00022, 3e-7), "critic": (0.00022, 3e-7)}
    assert agent._clip == {"model": 77, "actor": 33, "critic": 33}
    env.append_transform(agent.make_tensordict_primer())
    td = env.reset()
    assert td["state"].shape[-1] == 15 and td["belief"].shape[-1] == 11
    # discrete actions: the one-hot actor, trained with REINFORCE (the paper's choice for discrete actions)
    discrete = DreamerV3Agent(cfg, make_env("gym:CartPole-v1", from_pixels=False), torch.device("cpu"))
    assert isinstance(discrete.actor, DreamerV3DiscreteActor) and discrete.actor_loss.use_reinforce


def test_dreamerv3_whole_loop_logs_losses_returns_entropy_and_gradient_norms(tmp_path):
    cfg = tiny(tmp_path)
    trainer = Trainer(cfg)
    assert isinstance(trainer.agent, DreamerV3Agent) and isinstance(trainer.agent.policy, DreamerV3Policy)
    assert trainer.buffer.cross_episodes
    result = trainer.train()
    assert (result["seed_episodes"], result["episodes"]) == (cfg.seed_episodes, cfg.episodes)
    assert result["updates"] == cfg.updates_per_episode * cfg.episodes
    assert torch.isfinite(torch.tensor(result["test_return"]))
    acc, tags = tensorboard_tags(cfg.logdir)
    for scalar in ("loss/loss_model_dynamic", "loss/loss_model_representation", "loss/loss_model_reco",
                   "loss/loss_model_reward", "loss/loss_model_continue", "loss/loss_actor", "loss/loss_critic",
                   "behaviour/return_p5", "behaviour/return_p95", "behaviour/return_scale",
                   "behaviour/imagined_return", "behaviour/action_entropy", "grad_norm/model", "grad_norm/actor",
                   "grad_norm/critic", "test/return", "train/episode_return"):
        assert scalar in tags["scalars"], (scalar, tags["scalars"])
        assert all(torch.isfinite(torch.tensor(e.value)) for e in acc.Scalars(scalar)), scalar
    assert "model/open_loop_prediction" in tags["images"]
    # the scale is the EMA percentile range, at least 1
    assert all(e.value >= 1.0 for e in acc.Scalars("behaviour/return_scale"))


def test_dreamerv3_from_pixels_replays_uint8_and_draws_reconstructions(tmp_path):
    cfg = tiny(tmp_path, from_pixels=True, episodes=1)
    trainer = Trainer(cfg)
    trainer.train()
    assert trainer.buffer.sample()["next", "pixels"].dtype == torch.uint8  # the V3 encoder scales by 1/255
    _, tags = tensorboard_tags(cfg.logdir)
    assert "model/reconstruction" in tags["images"] and "loss/loss_model_reco" in tags["scalars"]


def test_dreamerv3_update_moves_all_three_networks_and_the_slow_critic_and_nan_is_skipped(tmp_path):
    trainer = Trainer(tiny(tmp_path, episodes=0, test_every=0, video_every=0))
    trainer.train()  # the seed episodes fill the buffer
    agent = trainer.agent
    before = _snapshot(agent)
    slow = agent.value_loss.target_value_model_params.clone()
    trainer.update_model(1)
    for name, net in _nets(agent).items():  # each optimiser stepped its own network
        assert any(not torch.equal(a, b) for a, b in zip(before[name], net.parameters())), name
    assert any(not torch.equal(a, b) for a, b in zip(slow.values(True, True),
                                                     agent.value_loss.target_value_model_params.values(True, True)))
    # a NaN critic makes the imagined returns NaN: skipped before any step, return normalisation included
    with torch.no_grad():
        list(agent.critic.parameters())[-1].fill_(float("nan"))
    snapshot = {n: p for n, p in _snapshot(agent).items() if n != "critic"}
    retnorm = {k: v.clone() for k, v in agent.actor_loss.retnorm.state_dict().items()}
    with pytest.warns(RuntimeWarning, match="Update skipped"):
        trainer.update_model(2)
    assert trainer.counters["skipped_updates"] == 2
    for name, params in snapshot.items():
        assert all(torch.equal(a, b) for a, b in zip(params, _nets(agent)[name].parameters())), name
    for key, value in agent.actor_loss.retnorm.state_dict().items():
        assert torch.equal(value, retnorm[key]), key
    trainer.cfg.nan_policy = "raise"
    with pytest.raises(ValueError, match="(?i)non-finite"):
        trainer.update_model(1)
    # a NaN in the batch itself: refused before anything runs
    batch = trainer.buffer.sample()
    batch["next", "observation"][0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="(?i)non-finite.*batch"):
        agent.update(batch)


def test_dreamerv3_laprop_option_steps_every_network_with_one_optimiser_and_resumes_it(tmp_path):
    from torchrl.trainers.algorithms.dreamer_v3 import DreamerV3Optimizer

    cfg = tiny(tmp_path, episodes=0, test_every=0, video_every=0, optimizer="laprop", agc=0.5, warmup_steps=0,
               model_lr=0.01)
    trainer = Trainer(cfg)
    trainer.train()
    agent = trainer.agent
    (optimizer,) = agent.optimizers.values()
    assert isinstance(optimizer, DreamerV3Optimizer)
    assert (optimizer.defaults["lr"], optimizer.defaults["agc"], optimizer.defaults["warmup_steps"]) == (0.01, 0.5, 0)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == sum(len(p) for p in agent._params.values())
    before = _snapshot(agent)
    trainer.update_model(2)
    for name, net in _nets(agent).items():
        assert any(not torch.equal(a, b) for a, b in zip(before[name], net.parameters())), name
    state = agent.state_dict()
    assert set(k for k in state if k.startswith("optimizer_")) == {"optimizer_all"}
    assert optimizer.param_groups[0]["step"] == 2
    other = DreamerV3Agent(cfg, trainer.env, torch.device("cpu"))
    other.load_state_dict(state)
    assert next(iter(other.optimizers.values())).param_groups[0]["step"] == 2


def test_dreamerv3_bfloat16_autocast_runs_the_forward_passes_in_bf16_and_the_losses_in_fp32(tmp_path):
    cfg = tiny(tmp_path, episodes=0, test_every=0, video_every=0)
    trainer = Trainer(cfg)
    trainer.train()
    batch = trainer.buffer.sample()
    agent, state = trainer.agent, trainer.agent.state_dict()
    seen = []  # the output dtypes of the world model's linear layers
    linears = [m for m in agent.world_model.modules() if isinstance(m, torch.nn.Linear)]
    hooks = [m.register_forward_hook(lambda m, a, out: seen.append(out.dtype)) for m in linears]

    def update(dtype):
        agent.load_state_dict(state)
        agent.cfg.autocast_dtype = dtype
        seen.clear()
        torch.manual_seed(0)
        out = agent.update(batch.clone())
        return out, {k: v.detach().clone() for k, v in agent.world_model.state_dict().items()}

    fp32, fp32_params = update("float32")
    assert seen and set(seen) == {torch.float32}
    bf16, bf16_params = update("bfloat16")
    assert seen and set(seen) == {torch.bfloat16}  # every matmul of the world model ran in bf16
    for hook in hooks:
        hook.remove()
    assert all(torch.isfinite(v).all() for v in bf16.values())
    assert all(v.dtype == torch.float32 for k, v in bf16.items() if k.startswith("loss"))  # fp32 loss arithmetic
    assert all(p.dtype == torch.float32 for p in bf16_params.values())  # the weights stay fp32
    assert any(not torch.equal(bf16_params[k], fp32_params[k]) for k in fp32_params)  # autocast took effect
    assert abs(float(bf16["loss_model_reward"]) - float(fp32["loss_model_reward"])) < 0.1 * abs(float(fp32["loss_model_reward"])) + 1e-3


_ONE_STEP_ENV = '''
import gymnasium as gym
import numpy as np


class OneStep(gym.Env):
    """Every episode ends (terminated) after one step; reward -a^2."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self, **kwargs):  # TorchRL's GymEnv passes frameskip
        super().__init__()

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.np_random.uniform(-1, 1, 3).astype(np.float32), {}

    def step(self, action):
        obs = self.np_random.uniform(-1, 1, 3).astype(np.float32)
        return obs, float(-np.square(action).sum()), True, False, {}


gym.register("OneStepV3Test-v0", entry_point=OneStep, max_episode_steps=5)
'''


def test_dreamerv3_trains_on_one_step_episodes_without_refusal(tmp_path, monkeypatch):
    (tmp_path / "one_step_v3_env.py").write_text(_ONE_STEP_ENV)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = tiny(tmp_path, env="gym:one_step_v3_env:OneStepV3Test-v0", action_repeat=None, max_episode_steps=None,
               chunk_length=8, video_every=0)
    trainer = Trainer(cfg)
    assert trainer.episode_steps == 5 < cfg.chunk_length  # no refusal: chunks cross the 1-step episodes
    result = trainer.train()
    assert result["updates"] == cfg.updates_per_episode * cfg.episodes and result["skipped_updates"] == 0
    batch = trainer.buffer.sample()
    assert batch["is_init"].all() and batch["next", "terminated"].all()  # every step a whole episode
    # the test return is the mean of the completed test episodes: one step each, reward in [-1, 0]
    assert -1.0 <= result["test_return"] <= 0.0


def test_killed_dreamerv3_run_resumes_with_its_actor_critic_slow_critic_and_optimisers(tmp_path):
    logdir = tmp_path / "killed"
    saved = train_and_kill_after(logdir, ["--algo", "dreamerv3", "--preset", "dreamerv3-tiny", "--set", "episodes=40",
                                          "--set", "test_every=0", "--set", "video_every=0"])
    cfg = preset("dreamerv3-tiny")
    apply_overrides(cfg, ["episodes=40", "test_every=0", "video_every=0", "progress=false"])
    cfg.logdir = str(logdir)
    resumed = Trainer(cfg, resume=True)
    assert resumed.counters == saved["counters"] and saved["counters"]["updates"] > 0
    agent = resumed.agent
    for key, module in (("actor", agent.actor), ("critic", agent.critic), ("world_model", agent.world_model),
                        ("return_norm", agent.actor_loss.retnorm)):
        for name, tensor in module.state_dict().items():
            torch.testing.assert_close(tensor, saved[key][name])
    for name, tensor in agent.value_loss.target_value_model_params.state_dict().items():
        torch.testing.assert_close(tensor, saved["slow_critic"][name])
    opt_state = agent.optimizers["critic"].state_dict()["state"]
    assert opt_state and all(int(s["step"]) == saved["counters"]["updates"] for s in opt_state.values())
    resumed.cfg.episodes = saved["counters"]["episodes"] + 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = resumed.train()
    assert result["updates"] == saved["counters"]["updates"] + cfg.updates_per_episode


def _actor_loss_paths(trainer):
    """After one actor loss from replayed starts: (actor gets a gradient, the imagined states carry a graph)."""
    agent = trainer.agent
    _, posterior = agent.model_loss(trainer.buffer.sample().to(agent.device))
    starts = posterior.get("next").select("state", "belief").detach().reshape(-1)
    agent.actor.zero_grad(set_to_none=True)
    losses, _ = agent.actor_loss(starts)
    losses["loss_actor"].backward()
    actor_grad = any(p.grad is not None and p.grad.abs().sum() > 0 for p in agent.actor.parameters())
    traj = agent.actor_loss.imagine(starts["state"][:4], starts["belief"][:4])
    return actor_grad, traj["state"].requires_grad


def test_dreamerv3_actor_gradient_reinforce_does_not_backpropagate_through_the_imagined_dynamics(tmp_path):
    paper = Trainer(tiny(tmp_path, test_every=0, video_every=0))
    paper.train()
    assert not paper.agent.actor_loss.use_reinforce and not paper.agent.space.discrete
    assert _actor_loss_paths(paper) == (True, True)  # the paper: the return's gradient through the dynamics
    reinforce = Trainer(tiny(tmp_path / "reinforce", test_every=0, video_every=0, actor_gradient="reinforce"))
    reinforce.train()
    assert reinforce.agent.actor_loss.use_reinforce
    assert _actor_loss_paths(reinforce) == (True, False)  # the log-probability path only
