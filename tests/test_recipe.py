"""The PlaNet recipe end to end: training loop, TensorBoard, checkpoints, resume, bad input."""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import pytest
import torch
from run_helpers import preset_config, tensorboard_tags, train_and_kill_after

from torchrl_rssm.cli import main
from torchrl_rssm.recipes import ConfigMismatchError, Trainer, resolve_device
from torchrl_rssm.recipes.config import apply_overrides, preset


def tiny(tmp_path: Path, **overrides):
    return preset_config("tiny", tmp_path, **overrides)


_tags = tensorboard_tags


def test_whole_loop_from_pixels_logs_scalars_images_videos(tmp_path):
    """Two seed episodes, a few updates, one planned episode, a batched test episode."""
    start = time.perf_counter()
    cfg = tiny(tmp_path, from_pixels=True)
    trainer = Trainer(cfg)
    result = trainer.train()
    assert time.perf_counter() - start < 120
    assert (result["seed_episodes"], result["episodes"]) == (cfg.seed_episodes, cfg.episodes)
    assert result["updates"] == cfg.updates_per_episode * cfg.episodes
    assert result["env_steps"] == (cfg.seed_episodes + cfg.episodes) * cfg.max_episode_steps * cfg.action_repeat
    assert len(trainer.buffer) == (cfg.seed_episodes + cfg.episodes) * cfg.max_episode_steps
    assert trainer.buffer.storage[0]["next", "pixels"].dtype == torch.uint8  # uint8 in storage
    assert torch.isfinite(torch.tensor(result["test_return"]))
    # acting sees the replay buffer's preprocessing: 5-bit grid plus dequantisation noise
    x = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    seen = trainer.policy.observation_transform(x)
    assert seen.dtype == torch.float32 and (seen >= -0.5).all() and (seen < 0.5).all()
    grid = (x // 8).float() / 32 - 0.5
    assert ((seen - grid) >= 0).all() and ((seen - grid) < 1 / 32).all() and (seen != grid).any()

    acc, tags = _tags(cfg.logdir)
    for scalar in ("train/episode_return", "test/return", "loss/loss_model_reco", "loss/loss_model_kl", "model/kl",
                   "perf/updates_per_s", "perf/env_steps_per_s", "train/updates"):
        assert scalar in tags["scalars"], (scalar, tags["scalars"])
    assert "model/reconstruction" in tags["images"]
    assert "model/open_loop_prediction" in tags["images"]  # videos are animated-GIF image summaries
    video = acc.Images("model/open_loop_prediction")[-1].encoded_image_string
    assert video[:6] == b"GIF89a"
    assert (Path(cfg.logdir) / "checkpoint" / "state.pt").exists()
    # closing the batched test envs must not change the run's thread count (TorchRL resets it)
    assert torch.get_num_threads() == cfg.num_threads == 1

    # `torchrl-rssm eval` on that run: batched noise-free episodes and a GIF of the first
    gif = tmp_path / "eval.gif"
    assert main(["eval", "--checkpoint", cfg.logdir, "--episodes", "2", "--video", str(gif)]) == 0
    assert gif.read_bytes()[:6] == b"GIF89a"
    from PIL import Image
    assert Image.open(gif).n_frames == cfg.max_episode_steps
    # the format the suffix names: MP4 (H.264 through imageio-ffmpeg), from the checkpoint's state.pt
    mp4 = tmp_path / "eval.mp4"
    state = Path(cfg.logdir) / "checkpoint" / "state.pt"
    assert main(["eval", "--checkpoint", str(state), "--episodes", "1", "--video", str(mp4)]) == 0
    assert mp4.read_bytes()[4:8] == b"ftyp"
    import imageio.v2 as imageio
    reader = imageio.get_reader(str(mp4))
    assert reader.count_frames() == cfg.max_episode_steps and reader.get_data(0).shape == (64, 64, 3)
    reader.close()


def test_nan_in_batch_is_skipped_with_warning_and_counted(tmp_path):
    trainer = Trainer(tiny(tmp_path))
    trainer.cfg.seed_episodes, trainer.cfg.episodes = 2, 0
    trainer.train()  # fills the buffer with the seed episodes
    sample = trainer.buffer.sample

    def poisoned_sample():  # every replay batch carries a NaN observation
        batch = sample()
        batch["next", "observation"][..., 0, :] = float("nan")
        return batch

    trainer.buffer.sample = poisoned_sample
    before = {k: v.clone() for k, v in trainer.agent.world_model.state_dict().items()}
    with pytest.warns(RuntimeWarning, match="Update skipped"):
        trainer.update_model(2)
    assert trainer.counters["skipped_updates"] == 2 and trainer.counters["updates"] == 0
    assert all(torch.equal(before[k], v) for k, v in trainer.agent.world_model.state_dict().items())
    trainer.cfg.nan_policy = "raise"
    with pytest.raises(ValueError, match="(?i)nan|finite"):
        trainer.update_model(1)


def test_unavailable_device_unknown_env_and_bad_overrides_are_named(tmp_path):
    with pytest.raises(ValueError, match="cuda:99"):
        resolve_device("cuda:99")
    with pytest.raises(ValueError, match="not a valid torch device"):
        resolve_device("gpu0")
    with pytest.raises(ValueError, match="cartpole"):  # the message lists what is available
        Trainer(tiny(tmp_path, env="dmc:cartpol-swingup"))
    with pytest.raises(ValueError, match="unknown field 'learning_rate'"):
        apply_overrides(preset("tiny"), ["learning_rate=1"])
    with pytest.raises(ValueError, match="expected a finite number"):
        apply_overrides(preset("tiny"), ["model_lr=fast"])
    assert main(["train", "--preset", "tiny", "--device", "cuda:99", "--logdir", str(tmp_path / "x")]) == 2


def test_wrong_observation_shape_for_the_model_is_named(tmp_path):
    trainer = Trainer(tiny(tmp_path))
    batch = trainer.env.rollout(3).unsqueeze(0)
    batch["next", "observation"] = batch["next", "observation"][..., :-1]  # one dim short
    with pytest.raises(ValueError, match="observation"):
        trainer.agent.loss_module(batch)


def test_checkpoint_from_another_configuration_is_refused(tmp_path):
    cfg = tiny(tmp_path)
    cfg.seed_episodes, cfg.episodes = 2, 0
    Trainer(cfg).train()
    other = tiny(tmp_path, belief_dim=32)
    with pytest.raises(ConfigMismatchError, match="belief_dim: checkpoint=16, now=32"):
        Trainer(other, resume=True)
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(tiny(tmp_path))  # an existing run is not overwritten silently


def test_killed_run_resumes_with_same_buffer_counters_and_config(tmp_path):
    logdir = tmp_path / "killed"
    saved = train_and_kill_after(logdir, ["--preset", "tiny", "--set", "episodes=40", "--set", "test_every=0",
                                          "--set", "video_every=0"])
    cfg = preset("tiny")
    apply_overrides(cfg, ["episodes=40", "test_every=0", "video_every=0", "progress=false"])
    cfg.logdir = str(logdir)
    resumed = Trainer(cfg, resume=True)
    assert resumed.counters == saved["counters"]
    collected = saved["counters"]["seed_episodes"] + saved["counters"]["episodes"]
    assert len(resumed.buffer) == collected * cfg.max_episode_steps
    assert resumed.cfg.to_dict() == dict(saved["config"], logdir=str(logdir))
    for name, tensor in resumed.world_model.state_dict().items():
        torch.testing.assert_close(tensor, saved["world_model"][name])
    # and it goes on: two more planned episodes with one block of C updates between them
    # (the updates before the first were done before the checkpoint was written)
    resumed.cfg.episodes = saved["counters"]["episodes"] + 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = resumed.train()
    assert result["episodes"] == saved["counters"]["episodes"] + 2
    assert result["updates"] == saved["counters"]["updates"] + cfg.updates_per_episode
    assert len(resumed.buffer) == (result["seed_episodes"] + result["episodes"]) * cfg.max_episode_steps


def test_exploration_modes_buffer_sized_from_run_and_no_latents_stored(tmp_path, capsys):
    """Collection under RANDOM, tests and eval under DETERMINISTIC, and no call outside a mode.

    The one extra DETERMINISTIC call is TorchRL's Collector probing the policy when it is built.
    """
    from tensordict.nn import TensorDictModuleBase
    from torchrl.envs.utils import ExplorationType, exploration_type

    from torchrl_rssm.recipes import Trainer
    from torchrl_rssm.recipes.evaluate import evaluate
    from torchrl_rssm.recipes.planet import PlaNetAgent

    modes = []

    class Recorder(TensorDictModuleBase):
        def __init__(self, policy):
            super().__init__()
            self.policy, self.in_keys, self.out_keys = policy, policy.in_keys, policy.out_keys

        def forward(self, td):
            modes.append(exploration_type())
            return self.policy(td)

        def make_tensordict_primer(self):
            return self.policy.make_tensordict_primer()

    class RecordingAgent(PlaNetAgent):
        def __init__(self, *args):
            super().__init__(*args)
            self.policy = Recorder(self.policy)

    cfg = tiny(tmp_path, video_every=0, buffer_capacity=None)
    trainer = Trainer(cfg, RecordingAgent)
    # capacity from the run: (seed + agent episodes) x steps
    assert trainer.buffer.storage.max_size == (cfg.seed_episodes + cfg.episodes) * cfg.max_episode_steps
    trainer.train()
    steps, total = cfg.max_episode_steps, cfg.seed_episodes + cfg.episodes
    assert set(modes) == {ExplorationType.RANDOM, ExplorationType.DETERMINISTIC}
    assert modes.count(ExplorationType.RANDOM) == cfg.episodes * steps  # seed episodes act at random
    assert modes.count(ExplorationType.DETERMINISTIC) == 1 + total * steps  # probe + a batched test per episode
    modes.clear()
    evaluate(trainer, episodes=2)
    assert modes == [ExplorationType.DETERMINISTIC] * steps
    stored = set(trainer.buffer.storage.get(slice(0, 1)).keys(True, True))
    assert not stored & {"state", "belief", ("next", "state"), ("next", "belief"), "plan", ("next", "plan")}
    assert {"observation", ("next", "observation"), "action", ("next", "reward"), "is_init"} <= stored
    assert "replay buffer: capacity 60 steps on cpu" in capsys.readouterr().err


def test_episodes_shorter_than_chunk_length_are_refused_clearly(tmp_path, capsys):
    from torchrl_rssm.recipes import EpisodeTooShortError

    with pytest.raises(EpisodeTooShortError, match=r"max_episode_steps=5 .*chunk_length=8"):
        Trainer(tiny(tmp_path, max_episode_steps=5))
    # CartPole at repeat 8 terminates after a few agent steps: refused once the seed episodes are in
    argv = ["train", "--preset", "tiny", "--env", "gym:CartPole-v1", "--set", "action_repeat=8",
            "--logdir", str(tmp_path / "cartpole"), "--no-progress", "--set", "test_every=0"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no stored episode is as long as chunk_length=8" in err and "observed episode lengths" in err
    assert "--set cross_episodes=true" in err and "Traceback" not in err
    # what the message offers works: chunks across episodes, the RSSM reset at each episode's start
    argv = [*argv[:argv.index("--logdir")], "--logdir", str(tmp_path / "crossing"), "--no-progress",
            "--set", "test_every=0", "--set", "cross_episodes=true"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["updates"] > 0 and result["episodes"] == 1


def test_trainer_core_runs_any_agent_on_the_protocol(tmp_path):
    """A minimal non-PlaNet agent (linear actor, reward regressor) gets the loop, NaN policy,
    metrics, checkpoints and resume from the core: what a DreamerAgent relies on."""
    from tensordict.nn import TensorDictModule
    from torchrl.envs import Compose

    from torchrl_rssm.objectives import NonFiniteInputError
    from torchrl_rssm.recipes import Agent, Trainer

    class RegressionAgent(Agent):
        name = "regression"

        def __init__(self, cfg, env, device):
            obs, act = env.observation_spec["observation"].shape[-1], env.action_spec.shape[-1]
            self.policy = TensorDictModule(torch.nn.Sequential(torch.nn.Linear(obs, act), torch.nn.Tanh()),
                                           in_keys=["observation"], out_keys=["action"])
            self.policy.make_tensordict_primer = Compose  # no recurrent entries
            self.reward_model = torch.nn.Linear(obs + act, 1)
            self.optimizer = torch.optim.SGD(self.reward_model.parameters(), lr=0.01)
            self.batches = []
            self.loaded = None

        def update(self, batch):
            self.batches.append(batch.shape)
            x = torch.cat([batch["observation"], batch["action"]], -1)
            if not torch.isfinite(x).all():
                raise NonFiniteInputError("non-finite observation")
            loss = (self.reward_model(x) - batch["next", "reward"]).pow(2).mean()
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            return {"loss_reward": loss.detach(), "regression/scale": x.abs().mean()}

        def state_dict(self):
            return {"reward_model": self.reward_model.state_dict(), "optimizer": self.optimizer.state_dict()}

        def load_state_dict(self, state):
            self.loaded = state
            self.reward_model.load_state_dict(state["reward_model"])
            self.optimizer.load_state_dict(state["optimizer"])

    cfg = tiny(tmp_path, video_every=0, episodes=2)
    trainer = Trainer(cfg, RegressionAgent)
    result = trainer.train()
    assert result["updates"] == cfg.episodes * cfg.updates_per_episode
    assert trainer.agent.batches == [torch.Size([cfg.batch_size, cfg.chunk_length])] * result["updates"]
    _, tags = _tags(cfg.logdir)
    assert {"loss/loss_reward", "regression/scale", "test/return"} <= set(tags["scalars"])
    saved = torch.load(Path(cfg.logdir) / "checkpoint" / "state.pt", weights_only=False)
    assert saved["agent_keys"] == ["optimizer", "reward_model"]
    resumed = Trainer(cfg, RegressionAgent, resume=True)
    assert set(resumed.agent.loaded) == {"optimizer", "reward_model"}
    torch.testing.assert_close(resumed.agent.reward_model.weight, trainer.agent.reward_model.weight)
    # the core's NaN policy around the agent's NonFiniteInputError
    storage = resumed.buffer.storage
    row = storage[0]
    row["observation"] = torch.full_like(row["observation"], float("nan"))
    for i in range(len(resumed.buffer)):
        storage.set(i, row)
    with pytest.warns(RuntimeWarning, match="Update skipped: non-finite observation"):
        resumed.update_model(2)
    assert resumed.counters["skipped_updates"] == 2


def test_returns_count_one_episode_on_tasks_that_end_early(tmp_path):
    """CartPole ends episodes early: a collected batch holds several, a test rollout runs past done."""
    from torchrl_rssm.recipes.collection import finished_episode_returns, first_episode_returns

    cfg = tiny(tmp_path, env="gym:CartPole-v1", action_repeat=1, max_episode_steps=60, seed_episodes=2,
               episodes=0, test_every=0, video_every=0, chunk_length=4)
    trainer = Trainer(cfg)
    trainer.train()
    acc, tags = _tags(cfg.logdir)
    train_returns = [e.value for e in acc.Scalars("train/episode_return")]
    # CartPole pays 1 per step: an episode's return is its length, at most the 60-step limit
    # (summing the whole batch of auto-reset episodes gave 60, the batch length, every time)
    assert all(1 <= r < 60 for r in train_returns), train_returns
    rollout = trainer.rollout_test(3)
    done = rollout["next", "done"].squeeze(-1)
    assert done.any(-1).all()  # every env ended an episode and started another within the rollout
    first_done = done.float().argmax(-1)
    torch.testing.assert_close(first_episode_returns(rollout), (first_done + 1).float())
    assert (first_episode_returns(rollout) < rollout["next", "reward"].sum((-2, -1))).all()
    batch = rollout[0]
    lengths = torch.diff(torch.cat([torch.tensor([-1]), torch.nonzero(done[0]).squeeze(-1)]))
    torch.testing.assert_close(finished_episode_returns(batch), lengths.float())


def _drift_env(seed):
    """An environment built in code (a module-level function: picklable)."""
    from torchrl_rssm.envs import make_env

    return make_env("gym:Pendulum-v1", from_pixels=False, max_episode_steps=20, seed=seed)


def test_trainer_runs_an_environment_built_in_code(tmp_path):
    from torchrl_rssm.recipes import Trainer

    seeds = []

    def env_fn(seed):
        seeds.append(seed)
        return _drift_env(seed)

    cfg = tiny(tmp_path, env="my-pendulum", video_every=1, test_episodes=2)  # cfg.env only names the run
    trainer = Trainer(cfg, env_fn=env_fn)
    result = trainer.train()
    assert (result["seed_episodes"], result["episodes"], result["env_steps"]) == (2, 1, 60)
    assert seeds[0] == cfg.seed and len(seeds) >= 1 + 2  # the training env, then each test batch's envs
    assert trainer.env.observation_spec["observation"].shape == (3,)  # Pendulum's, not cartpole's
    with pytest.raises(TypeError, match="expected a TorchRL environment"):
        Trainer(tiny(tmp_path / "bad"), env_fn=lambda seed: "not an env")


def test_state_run_logs_labelled_pictures_into_one_run_folder_and_keeps_the_rng(tmp_path):
    from PIL import Image

    cfg = tiny(tmp_path, video_every=1, episodes=0, test_every=0)
    trainer = Trainer(cfg)
    trainer.train()
    rng = torch.get_rng_state()
    trainer.log_predictions()
    assert torch.equal(torch.get_rng_state(), rng)  # pictures draw no numbers from the run's stream
    trainer.logger.experiment.flush()
    acc, tags = _tags(cfg.logdir)
    assert "model/open_loop_prediction" in tags["images"]
    encoded = acc.Images("model/open_loop_prediction")[-1].encoded_image_string
    import io

    import numpy as np
    image = torch.from_numpy(np.array(Image.open(io.BytesIO(encoded)).convert("RGB"))).reshape(-1, 3).float()
    assert image.std(0).sum() > 0 and (image[:, 0] != image[:, 2]).any()  # coloured lines, not a grey map
    # the hparams live in the run itself: no extra timestamped folder beside it
    assert all(p.name.startswith("checkpoint") for p in Path(cfg.logdir).iterdir() if p.is_dir())
    assert acc.PluginTagToContent("hparams")


def test_frames_per_batch_sets_the_round_so_every_task_gets_the_same_agent_steps(tmp_path):
    """A round of ``frames_per_batch`` steps holds several short episodes; the schedule counts rounds,
    the test episodes keep the task's length, and a round of one episode is the default run exactly."""
    default = Trainer(tiny(tmp_path / "default", video_every=0))
    default.train()
    one_episode = Trainer(tiny(tmp_path / "one", video_every=0, frames_per_batch=20))  # tiny: 20-step episodes
    one_episode.train()
    assert one_episode.counters == default.counters
    for a, b in zip(default.agent.world_model.parameters(), one_episode.agent.world_model.parameters(), strict=True):
        assert torch.equal(a, b)
    cfg = tiny(tmp_path / "three", video_every=0, frames_per_batch=60, train_ratio=0.05, buffer_capacity=None)
    trainer = Trainer(cfg)
    assert trainer.buffer.storage.max_size == (cfg.seed_episodes + cfg.episodes) * 60
    trainer.train()
    rounds = cfg.seed_episodes + cfg.episodes
    assert trainer.counters["env_steps"] == rounds * 60 * trainer.action_repeat
    assert len(trainer.buffer) == rounds * 60 and trainer.buffer.num_episodes == rounds * 3
    assert trainer.counters["updates"] == int(0.05 * cfg.episodes * 60)  # train_ratio over the agent's rounds
    assert trainer.rollout_test(2).shape == (2, 20)  # test episodes: the task's own length
    with pytest.raises(ValueError, match=r"frames_per_batch=5: expected a multiple of num_envs=2"):
        Trainer(tiny(tmp_path / "bad", frames_per_batch=5, num_envs=2))
