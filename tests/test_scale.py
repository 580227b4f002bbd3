"""Scale: batched environments, the replay ratio, asynchronous collection, bad layouts.

DDP and the distributed collector are in ``tests/test_scale_distributed.py``.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type

from torchrl_rssm.cli import _parser, train_config
from torchrl_rssm.planners.action_space import ActionSpace
from torchrl_rssm.recipes import Trainer, preset
from torchrl_rssm.recipes.trainer import CollectorFailedError, Every, check_layout


def tiny(tmp_path: Path, **overrides):
    cfg = preset("tiny")
    cfg.logdir = str(tmp_path / "run")
    cfg.progress = False
    cfg.from_pixels = False
    cfg.video_every = 0
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


# What the trainer gave before the collection layout existed (tiny preset from state
# vectors, one thread): the default layout (num_envs=1, sync, no ratio) must reproduce it exactly.
MAIN_COUNTERS = {"seed_episodes": 2, "episodes": 1, "env_steps": 480, "updates": 3, "skipped_updates": 0,
                 "dropped_episodes": 0}
MAIN_TEST_RETURN = 2.376392126083374
MAIN_PARAM_SUM = -9.94753481351654
MAIN_ACTION_SUM = 5.405802495777607


@pytest.mark.parametrize("video_every", [0, 1])
def test_default_layout_reproduces_the_run_before_scale(tmp_path, video_every):
    """Also with pictures after every episode: logging them draws on a copy of the RNG states."""
    trainer = Trainer(tiny(tmp_path, video_every=video_every))
    out = trainer.train()
    assert {k: out[k] for k in MAIN_COUNTERS} == MAIN_COUNTERS
    assert out["test_return"] == pytest.approx(MAIN_TEST_RETURN, abs=1e-6)
    params = sum(float(p.detach().double().sum()) for p in trainer.world_model.parameters())
    assert params == pytest.approx(MAIN_PARAM_SUM, abs=1e-6)
    actions = trainer.buffer.storage.get(slice(0, len(trainer.buffer)))["action"].double().sum()
    assert float(actions) == pytest.approx(MAIN_ACTION_SUM, abs=1e-6)


def test_four_envs_give_four_episodes_per_round_kept_apart(tmp_path):
    trainer = Trainer(tiny(tmp_path, num_envs=4, episodes=4, test_every=0, checkpoint_every=0))
    T = trainer.episode_steps
    collector = trainer.make_collector(seed_rounds=1)
    batch = next(iter(collector))
    collector.shutdown()
    assert batch.shape == (4, T)
    trainer._store_episode(batch)
    assert trainer.buffer.episode_lengths().tolist() == [T] * 4
    stored = trainer.buffer.storage.get(slice(0, len(trainer.buffer)))
    ids = stored["episode"].reshape(4, T)
    assert (ids == ids[:, :1]).all() and len(set(ids[:, 0].tolist())) == 4  # one id per env row
    # the environments were seeded apart: their observation streams differ
    obs = stored["observation"].reshape(4, T, -1)
    assert not torch.allclose(obs[0], obs[1])
    # every sampled chunk is L consecutive steps of one environment's row
    chunks = trainer.buffer.sample()
    for chunk in chunks:
        assert (chunk["episode"] == chunk["episode"][0]).all()
        row = int(chunk["episode"][0]) - int(ids[0, 0])
        hits = [s for s in range(T - chunk.shape[0] + 1)
                if torch.equal(obs[row, s:s + chunk.shape[0]], chunk["observation"])]
        assert hits, "a chunk is not a slice of one environment's episode"
    # the whole loop counts 4 episodes per round (2 seed episodes -> one random round); the
    # batch stored by hand above is in env_steps and the buffer, not in the episode count
    out = trainer.train()
    assert (out["seed_episodes"], out["episodes"]) == (4, 4) and out["env_steps"] == 12 * T * trainer.action_repeat
    assert out["updates"] == 3 * 4  # updates_per_episode x the 4 episodes of the one planned round
    assert trainer.buffer.episode_lengths().tolist() == [T] * 12


def test_planner_on_a_batch_of_four_equals_four_separate_calls(tmp_path, monkeypatch):
    """Same noise per environment (a generator per row) -> same actions, batched or one by one."""
    trainer = Trainer(tiny(tmp_path))
    planner = trainer.policy.planner
    row_seeds: list[int] = []
    calls = [0]

    def sample(self, mean, std, n):
        M, H, A = mean.shape
        assert M == len(row_seeds)
        noise = torch.stack([torch.randn(n, H, A, generator=torch.Generator().manual_seed(1000 * s + calls[0]))
                             for s in row_seeds])
        calls[0] += 1
        return self.clip(mean.unsqueeze(1) + std.unsqueeze(1) * noise)

    monkeypatch.setattr(ActionSpace, "sample", sample)
    engine = planner.returns_model  # the imagination engine samples the prior: same per-row noise there too
    assert engine.sample
    forward = type(engine).forward

    def imagine(self, state, belief, actions, noise=None, weights=None):
        M, N, H, _ = actions.shape
        noise = torch.stack([torch.randn(H, N, self.state_dim, generator=torch.Generator().manual_seed(
            7 + 1000 * s + calls[0])) for s in row_seeds], 1)
        return forward(self, state, belief, actions, noise=noise, weights=weights)

    monkeypatch.setattr(type(engine), "forward", imagine)
    gen = torch.Generator().manual_seed(0)
    state = torch.randn(4, trainer.cfg.state_dim, generator=gen)
    belief = torch.randn(4, trainer.cfg.belief_dim, generator=gen)
    td = TensorDict({"state": state, "belief": belief}, [4])
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        row_seeds[:] = [0, 1, 2, 3]
        calls[0] = 0
        batched = planner(td.clone())["action"]
        single = []
        for i in range(4):
            row_seeds[:] = [i]
            calls[0] = 0
            single.append(planner(td[i:i + 1].clone())["action"])
    torch.testing.assert_close(batched, torch.cat(single), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(batched[0], batched[1])  # the rows really planned apart


@pytest.mark.parametrize("num_envs", [1, 4])
def test_train_ratio_holds_whatever_num_envs(tmp_path, num_envs):
    ratio = 0.13  # updates per collected agent step: 2.6 per 20-step episode, not a whole number
    cfg = tiny(tmp_path, num_envs=num_envs, train_ratio=ratio, seed_episodes=4, episodes=8, test_every=0,
               checkpoint_every=0, batch_size=2, planning_horizon=2, num_candidates=8, top_k=2)
    trainer = Trainer(cfg)
    out = trainer.train()
    T = trainer.episode_steps
    policy_steps = out["episodes"] * T  # steps the agent collected after the seed
    assert out["updates"] == pytest.approx(ratio * policy_steps, rel=0.05)
    assert abs(out["updates"] - ratio * policy_steps) <= 1  # the remainder is carried, not dropped


def test_updates_per_episode_scales_with_the_episodes_of_a_round(tmp_path):
    trainer = Trainer(tiny(tmp_path, num_envs=4))
    assert trainer.updates_due(4 * trainer.episode_steps) == 4 * trainer.cfg.updates_per_episode
    trainer.cfg.train_ratio = 0.5
    assert [trainer.updates_due(3) for _ in range(4)] == [1, 2, 1, 2]


def test_every_clock_crossed_matches_call_for_unit_steps():
    clock = Every(4)
    assert [n for n in range(1, 20) if clock.crossed(n - 1, n)] == [n for n in range(1, 20) if clock(n)]
    assert clock.crossed(2, 6) and not clock.crossed(4, 7)


@pytest.mark.parametrize("field,value,match", [
    ("num_envs", 0, "num_envs=0: expected an integer >= 1"),
    ("num_envs", -2, "num_envs=-2"),
    ("num_envs", 1.5, "num_envs=1.5"),
    ("env_backend", "threads", "env_backend='threads'"),
    ("collector", "ray", "collector='ray'"),
    ("train_ratio", -1.0, "train_ratio=-1.0"),
    ("train_ratio", math.inf, "train_ratio=inf"),
])
def test_bad_layouts_are_named(tmp_path, field, value, match):
    with pytest.raises(ValueError, match=match):
        Trainer(tiny(tmp_path, **{field: value}))


def test_cli_num_envs_and_collector_flags():
    args = _parser().parse_args(["train", "--preset", "tiny", "--num-envs", "3", "--collector", "async",
                                 "--train-ratio", "0.25"])
    cfg, _ = train_config(args)
    assert (cfg.num_envs, cfg.collector, cfg.train_ratio) == (3, "async", 0.25)
    args = _parser().parse_args(["train", "--preset", "tiny", "--num-envs", "0"])
    with pytest.raises(ValueError, match="num_envs=0: expected an integer >= 1"):
        train_config(args)  # refused with the other fields, before anything is built
    cfg = preset("tiny")
    cfg.num_envs = 0
    with pytest.raises(ValueError, match="num_envs=0"):
        check_layout(cfg)  # a Trainer built in code checks its layout too


class _WatchedTrainer(Trainer):
    """Records which weights produced each collected batch, and kills a worker on request."""

    kill_at: int | None = None

    def make_collector(self, seed_rounds):
        self.collector = super().make_collector(seed_rounds)
        self.snapshots = [self._prior_weights()]
        self.matches = []
        return self.collector

    def _prior_weights(self):
        return {k: v.detach().clone() for k, v in self.world_model.rollout.prior.state_dict().items()}

    def _which_weights(self, batch) -> list[int]:
        """Indices of the weight snapshots that reproduce some of the batch's recorded next beliefs
        (a push can land in the middle of a worker's batch)."""
        prior = self.world_model.rollout.prior
        current = self._prior_weights()
        out = []
        for i, snap in enumerate(self.snapshots):
            prior.load_state_dict(snap)
            with torch.no_grad():
                nxt = prior.transition(batch["state"], batch["belief"], batch["action"])
            if ((nxt - batch["next", "belief"]).abs().amax(-1) < 1e-5).any():
                out.append(i)
        prior.load_state_dict(current)
        return out

    def _store_episode(self, episode):
        if self.kill_at is not None and len(self.matches) == self.kill_at:
            self.collector.procs[0].kill()
            self.collector.procs[0].join(10)
        if episode["belief"].abs().sum() > 0:  # a planned batch (random seed batches carry zeros)
            self.matches.append(self._which_weights(episode))
        return super()._store_episode(episode)

    def update_model(self, num_updates):
        out = super().update_model(num_updates)
        self.snapshots.append(self._prior_weights())  # the loop pushes these to the workers next
        return out


def test_async_two_workers_train_and_get_new_weights_then_a_dead_worker_stops_cleanly(tmp_path):
    cfg = tiny(tmp_path, collector="async", collector_workers=2, seed_episodes=2, episodes=10, test_every=0,
               checkpoint_every=0, planning_horizon=2, num_candidates=8, top_k=2)
    trainer = _WatchedTrainer(cfg)
    trainer.kill_at = 5
    with pytest.raises(CollectorFailedError, match="collector='async' failed") as err:
        trainer.train()
    assert "--resume" in str(err.value)
    # the workers acted with the initial weights first, then with weights the trainer pushed
    assert 0 in trainer.matches[0]
    assert any(m and min(m) >= 1 for m in trainer.matches), trainer.matches
    assert trainer.counters["updates"] >= 3
    # nothing stored was lost: the checkpoint holds every stored step
    stored = len(trainer.buffer)
    assert stored == trainer.collected * trainer.episode_steps
    resumed = Trainer(cfg, resume=True)
    assert len(resumed.buffer) == stored and resumed.counters == trainer.counters


def test_distributed_collector_with_two_local_workers_fills_the_buffer(tmp_path):
    """TorchRL's DistributedCollector (torch.distributed, launcher="mp", 2 local workers)."""
    cfg = tiny(tmp_path, collector="distributed", collector_workers=2, seed_episodes=2, episodes=4, test_every=0,
               checkpoint_every=0, planning_horizon=2, num_candidates=8, top_k=2, distributed_port=29533)
    trainer = Trainer(cfg)
    out = trainer.train()
    T = trainer.episode_steps
    # 2 workers x 1 env: 2 episodes per round
    assert out["seed_episodes"] + out["episodes"] == 6 and out["updates"] == 3 * 4
    assert trainer.buffer.episode_lengths().tolist() == [T] * 6  # each worker's episode kept apart
    chunks = trainer.buffer.sample()
    assert all(bool((c["episode"] == c["episode"][0]).all()) for c in chunks)
