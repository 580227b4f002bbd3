"""The run configuration reaches what it configures: settings read back from the built agents,
sections that feed their constructors whole, presets that carry only their agent's fields."""
from __future__ import annotations

import dataclasses
import importlib
import json

import pytest
import torch

from torchrl_rssm.envs import make_env
from torchrl_rssm.recipes import DreamerAgent, PlaNetAgent, preset
from torchrl_rssm.recipes.config import (AGENT_SECTIONS, FIELD_HELP, PRESETS, Env, Imagination, ModelLoss, Planning,
                                         Returns, RunConfig, WorldModel, apply_overrides, from_dict)

# Values that differ from every default and from each other, so a swapped or shifted wire shows.
SHARED = ["state_dim=5", "belief_dim=11", "model_lr=0.0011", "adam_eps=3e-5", "free_nats=2.5",
          "lambda_reward=4.0", "kl_balance=0.7", "overshooting_distance=3", "overshooting_weight=0.4",
          "exploration_noise=0.17"]


def _agent(name: str, overrides: list[str]):
    cfg = apply_overrides(preset(name), overrides)
    env = make_env(cfg.env, from_pixels=False, max_episode_steps=10)
    agent = {"planet": PlaNetAgent, "dreamer": DreamerAgent}[cfg.algo](cfg, env, torch.device("cpu"))
    return cfg, env, agent


def _check_shared(cfg, env, agent, model_optimizer):
    loss = agent.loss_module if hasattr(agent, "loss_module") else agent.model_loss
    assert (loss.free_nats, loss.lambda_reward, loss.kl_balance) == (2.5, 4.0, 0.7)
    assert (loss.overshooting_distance, loss.overshooting_weight) == (3, 0.4)
    assert model_optimizer.defaults["lr"] == 0.0011 and model_optimizer.defaults["eps"] == 3e-5
    assert agent.policy.exploration.scale == 0.17
    env.append_transform(agent.make_tensordict_primer())
    td = env.reset()
    assert td["state"].shape[-1] == 5 and td["belief"].shape[-1] == 11


@pytest.mark.parametrize("planner", ["cem", "mppi"])
def test_planet_agent_reads_back_its_config(planner):
    cfg, env, agent = _agent("tiny", SHARED + [f"planner={planner}", "planning_horizon=5", "optim_steps=3",
                                               "num_candidates=17", "top_k=6", "temperature=0.4"])
    _check_shared(cfg, env, agent, agent.optimizer)
    search = agent.policy.planner
    assert type(search).__name__ == {"cem": "CEMPlanner", "mppi": "MPPIPlanner"}[planner]
    assert (search.planning_horizon, search.optim_steps, search.num_candidates, search.top_k) == (5, 3, 17, 6)
    if planner == "mppi":
        assert search.temperature == 0.4


def test_dreamer_agent_reads_back_its_config():
    """Catches gamma and lambda swapped on the way to the value estimator, or the horizon one short."""
    cfg, env, agent = _agent("dreamer-tiny", SHARED + ["gamma=0.91", "lmbda=0.83", "imagination_horizon=7",
                                                       "actor_lr=0.00022", "value_lr=0.00033", "time_reduction=sum",
                                                       "actor_hidden_dim=13", "value_hidden_dim=9"])
    _check_shared(cfg, env, agent, agent.optimizers["model"])
    actor_loss, value_loss = agent.actor_loss, agent.value_loss
    assert (actor_loss.gamma, actor_loss.lmbda, actor_loss.imagination_horizon) == (0.91, 0.83, 7)
    assert (value_loss.gamma, actor_loss.time_reduction, value_loss.time_reduction) == (0.91, "sum", "sum")
    assert agent.optimizers["actor"].defaults["lr"] == 0.00022 and agent.optimizers["value"].defaults["lr"] == 0.00033
    assert {p.shape[0] for p in agent.actor.parameters() if p.ndim == 2} >= {13}
    assert {p.shape[0] for p in agent.value.parameters() if p.ndim == 2} >= {9}
    assert not {p.shape[0] for p in agent.actor.parameters() if p.ndim == 2} & {9}  # not the value's width
    # and the imagined trajectory really has that horizon
    env.append_transform(agent.make_tensordict_primer())
    batch = env.rollout(4, agent.policy).unsqueeze(0)
    _, model_out = agent.model_loss.compute(batch)
    _, imagined = agent.actor_loss(model_out)
    assert 7 in imagined.batch_size


def test_sections_are_named_after_the_arguments_they_feed():
    import inspect

    from torchrl_rssm.modules import make_world_model
    from torchrl_rssm.objectives import DreamerActorLoss, RSSMLoss
    from torchrl_rssm.planners import CEMPlanner

    feeds = {WorldModel: make_world_model, ModelLoss: RSSMLoss, Planning: CEMPlanner, Imagination: DreamerActorLoss,
             Env: make_env}
    for section, target in feeds.items():
        params = set(inspect.signature(target).parameters)
        names = {f.name for f in dataclasses.fields(section)} - {"env"}  # Env.env is make_env's first argument
        assert names <= params, (section.__name__, names - params)
    assert {f.name for f in dataclasses.fields(Returns)} == {"gamma", "lmbda"}  # make_value_estimator's keywords


def test_every_field_has_help_without_parsing_source():
    fields = dataclasses.fields(RunConfig)
    assert all(f.metadata.get("help") for f in fields)
    assert FIELD_HELP == {f.name: f.metadata["help"] for f in fields}
    assert "ast" not in vars(importlib.import_module("torchrl_rssm.recipes.config"))


def test_presets_carry_only_their_agents_fields_and_saved_configs_too():
    planner_fields = {f.name for f in dataclasses.fields(AGENT_SECTIONS["planet"])}
    dreamer_fields = {f.name for f in dataclasses.fields(AGENT_SECTIONS["dreamer"])}
    for name, settings in PRESETS.items():
        algo = settings.get("algo", "planet")
        foreign = dreamer_fields if algo == "planet" else planner_fields
        assert not set(settings) & foreign, name
        assert not set(preset(name).to_dict()) & foreign, name
    with pytest.raises(ValueError, match=r"planning_horizon \(planet\) is a field of another agent"):
        apply_overrides(preset("dreamer-quick"), ["planning_horizon=3"])
    saved = preset("dreamer-tiny").to_dict()
    assert from_dict(json.loads(json.dumps(saved))).to_dict() == saved


def test_checkpoint_of_an_older_version_gets_a_one_line_error(tmp_path, capsys):
    from torchrl_rssm.cli import main

    old = dict(preset("tiny").to_dict(), lr=1e-3, conv_channels=32)
    del old["model_lr"], old["channels"]
    with pytest.raises(ValueError, match=r"older torchrl_rssm .*\['conv_channels', 'lr'\].*cannot be loaded"):
        from_dict(old)
    from torchrl_rssm.recipes import Trainer
    from torchrl_rssm.recipes.checkpoint import write_checkpoint

    cfg = preset("tiny")
    cfg.logdir, cfg.progress = str(tmp_path / "run"), False
    trainer = Trainer(cfg)
    write_checkpoint(tmp_path / "old", dict(trainer.state_dict(), config=old), trainer.buffer)  # a whole checkpoint
    assert main(["eval", "--checkpoint", str(tmp_path / "old")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "older torchrl_rssm" in err


def test_the_quick_presets_are_as_measured():
    """The settings behind the README's returns (quick seed 0: 345.02; dreamer-quick seed 2: 394.62)."""
    quick, dreamer = preset("quick"), preset("dreamer-quick")
    assert (quick.state_dim, quick.belief_dim, quick.hidden_dim, quick.batch_size, quick.chunk_length) == (16, 64, 64,
                                                                                                           16, 25)
    assert (quick.model_lr, quick.lambda_reward, quick.seed_episodes, quick.episodes) == (3e-3, 10.0, 5, 35)
    assert dataclasses.asdict(quick.section(Planning)) == dict(planning_horizon=12, optim_steps=6, num_candidates=256,
                                                               top_k=25)
    assert (dreamer.episodes, dreamer.updates_per_episode, dreamer.actor_lr, dreamer.value_lr) == (55, 100, 3e-4, 1e-3)
    assert (dreamer.grad_clip, dreamer.time_reduction, dreamer.actor_hidden_dim) == (100.0, "sum", 64)
    # pictures in TensorBoard by default, and a replay sized from the run (5 + 35 episodes of 125 steps)
    assert quick.video_every > 0 and quick.buffer_capacity is None and dreamer.buffer_capacity is None
