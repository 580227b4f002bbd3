# %% [markdown]
# # 2. PlaNet with TorchRL parts
#
# PlaNet (Hafner et al., 2019) learns a world model from experience and acts by planning in
# its latent space; there is no policy network. Its training loop alternates two things:
#
# 1. **collect** one episode with the planner (plus exploration noise) and store it;
# 2. **update** the world model $C$ times on chunks of stored episodes.
#
# Here every piece of that loop is a TorchRL component, and `torchrl_rssm` supplies the
# model-specific ones:
#
# | step | component |
# |---|---|
# | environment and preprocessing | `make_env` → TorchRL `TransformedEnv` (`StepCounter`, `RewardSum`, `InitTracker`, ...) |
# | acting | `PlaNetPolicy` (filter the belief, plan with `CEMPlanner`, add noise) + its `TensorDictPrimer` |
# | collecting | TorchRL `Collector` |
# | storing and sampling chunks | `make_replay_buffer` → TorchRL `TensorDictReplayBuffer` + `SliceSampler` |
# | learning | `RSSMLoss` (a TorchRL `LossModule`) + Adam |
# | logging | TorchRL's `TensorboardLogger` |
#
# `torchrl-rssm train` (the `PlaNetTrainer` recipe) runs this same loop with checkpoints,
# videos and presets; here we write it out.

# %% [markdown]
# **Size switch.** `TORCHRL_RSSM_TUTORIAL_SIZE=tiny` runs in seconds (the test suite does
# that). `full` trains cartpole swing-up from state vectors with the settings of the `quick`
# preset and 30 instead of 40 episodes: a few minutes on a 2-core CPU, enough to see the
# return rise well above the random policy's, not to solve the task (the paper trains from
# pixels for 1000 episodes, on a GPU).

# %%
import os
from types import SimpleNamespace

SIZE = os.environ.get("TORCHRL_RSSM_TUTORIAL_SIZE", "full")
assert SIZE in ("tiny", "full"), f"TORCHRL_RSSM_TUTORIAL_SIZE must be tiny or full, got {SIZE!r}"
cfg = SimpleNamespace(**{
    "tiny": dict(max_steps=20, seed_episodes=2, episodes=2, updates=3, batch=4, length=8,
                 state=4, belief=16, hidden=16, horizon=4, iterations=2, candidates=16, top_k=4, test_every=1),
    "full": dict(max_steps=None, seed_episodes=5, episodes=25, updates=40, batch=16, length=25,
                 state=16, belief=64, hidden=64, horizon=12, iterations=6, candidates=256, top_k=25, test_every=5),
}[SIZE])
cfg

# %%
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from torchrl.collectors import Collector
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.record.loggers import TensorboardLogger

from torchrl_rssm.data import make_replay_buffer
from torchrl_rssm.envs import make_env
from torchrl_rssm.modules import make_world_model
from torchrl_rssm.objectives import RSSMLoss
from torchrl_rssm.planners import CEMPlanner
from torchrl_rssm.policies import PlaNetPolicy

_ = torch.manual_seed(0)
device = torch.device("cpu")  # "cuda" moves the model, the planner and the replay buffer

# %% [markdown]
# ## Environment and transforms
#
# `make_env` returns a TorchRL `TransformedEnv`. For cartpole it repeats each action 8 times
# (PlaNet's setting; 125 agent steps per episode) and concatenates dm_control's
# observation dict into one `observation` vector. With `from_pixels=True` it would render
# 64x64 images instead, stored as `uint8` and reduced to 5 bits by a `BitDepth` transform.

# %%
env = make_env("dmc:cartpole-swingup", from_pixels=False, seed=0, max_episode_steps=cfg.max_steps)
episode_steps = env.max_episode_steps
print(f"action repeat {env.action_repeat}, {episode_steps} agent steps per episode")
env.transform

# %% [markdown]
# ## World model, loss and planner
#
# The world model comes from the specs (MLP encoder and decoder for a vector observation).
# The reward term is weighted 10x, as in PlaNet's official code: the planner only sees the
# predicted rewards, so they have to be right.

# %%
world_model = make_world_model(env.observation_spec, env.action_spec, state_dim=cfg.state,
                               belief_dim=cfg.belief, hidden_dim=cfg.hidden, embed_dim=cfg.hidden,
                               device=device)
loss_module = RSSMLoss(world_model, free_nats=3.0, lambda_reward=10.0)
optimizer = torch.optim.Adam(world_model.parameters(), lr=3e-3, eps=1e-4)

# %% [markdown]
# `CEMPlanner` plans in latent space: from the current `belief`/`state` it samples
# `num_candidates` action sequences of length `planning_horizon`, imagines them with the
# RSSM prior, scores them with the reward head, refits a Gaussian to the `top_k` best and
# repeats `optim_steps` times. The loop runs on plain tensors, for a whole batch of
# environments at once.
#
# `PlaNetPolicy` is what acts in the environment: at each step it updates the belief with
# the new observation (the posterior), plans, adds Gaussian exploration noise (std 0.3) and
# carries `belief`/`state` to the next step in the tensordict. Its
# `make_tensordict_primer()` declares those entries, so that the environment resets them
# to zeros and any TorchRL collector carries them, as with TorchRL's recurrent modules.

# %%
planner = CEMPlanner(world_model, planning_horizon=cfg.horizon, optim_steps=cfg.iterations,
                     num_candidates=cfg.candidates, top_k=cfg.top_k, action_spec=env.action_spec)
policy = PlaNetPolicy(world_model, planner, env.action_spec, exploration_noise=0.3)
env.append_transform(policy.make_tensordict_primer())
print("the policy reads", policy.in_keys, "and writes", policy.out_keys)
policy(env.reset())["action"]

# %% [markdown]
# ## Collector and sequence replay buffer
#
# The TorchRL `Collector` steps the environment with the policy and yields one episode per
# batch (`frames_per_batch = episode_steps`; cartpole episodes always run to the step
# limit). The first `seed_episodes` use random actions (`init_random_frames`), as in PlaNet.
#
# The replay buffer stores whole episodes and samples `[batch, length]` chunks that never
# cross an episode boundary (a TorchRL `SliceSampler`). With pixels it keeps them as `uint8`
# and dequantises on sampling.

# %%
collector = Collector(env, policy, frames_per_batch=episode_steps, total_frames=-1,
                      init_random_frames=cfg.seed_episodes * episode_steps,
                      exploration_type=ExplorationType.RANDOM)
replay_buffer = make_replay_buffer(capacity=100_000, batch_size=cfg.batch, chunk_length=cfg.length,
                                   device=device)

# %% [markdown]
# ## TensorBoard
#
# TorchRL's `TensorboardLogger` writes event files under `log_dir`; watch them live with
# `tensorboard --logdir runs`. (The recipe uses a subclass that also writes
# reconstructions and open-loop prediction videos.)

# %%
logdir = Path("runs") / "tutorial-planet"
logger = TensorboardLogger(exp_name="", log_dir=str(logdir))
print(f"TensorBoard logs go to {logdir}/ (relative to the notebook's working directory)")

# %% [markdown]
# ## The training loop
#
# Two functions and a loop over the collector: store each episode, then (after the seed
# episodes) `C` model updates on sampled chunks, and every few episodes a test episode
# without exploration noise. The test environment also renders pixels (`pixels_only=False`
# keeps the `observation` the model reads), to look at the agent afterwards; the policy's
# primer resets its latent at the start of each test episode.

# %%
def update_model(num_updates):
    for _ in range(num_updates):
        batch = replay_buffer.sample()  # each chunk starts from its first observation, filtered
        losses = loss_module(batch)
        total = sum(v for k, v in losses.items() if k.startswith("loss_"))
        optimizer.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(world_model.parameters(), 1000.0)
        optimizer.step()
    return {k: v.item() for k, v in losses.detach().items()}


test_env = make_env("dmc:cartpole-swingup", from_pixels=True, pixels_only=False, seed=123,
                    max_episode_steps=cfg.max_steps, primers=policy.make_tensordict_primer())


@torch.no_grad()
def test_episode():
    with set_exploration_type(ExplorationType.DETERMINISTIC):  # no exploration noise
        return test_env.rollout(episode_steps, policy, break_when_any_done=False)


history = {"episode": [], "return": [], "test_episode": [], "test_return": [], "loss": []}
env_steps, start = 0, time.perf_counter()
for i, episode in enumerate(collector):
    replay_buffer.extend(episode)
    env_steps += episode.numel() * env.action_repeat
    ret = episode["next", "reward"].sum().item()
    history["episode"].append(i + 1), history["return"].append(ret)
    logger.log_scalar("train/episode_return", ret, step=env_steps)
    if i + 1 >= cfg.seed_episodes:
        losses = update_model(cfg.updates)
        history["loss"].append((i + 1, losses))
        for k, v in losses.items():
            logger.log_scalar(f"loss/{k}", v, step=env_steps)
    if i + 1 > cfg.seed_episodes and (i + 1 - cfg.seed_episodes) % cfg.test_every == 0:
        test_rollout = test_episode()
        test_return = test_rollout["next", "reward"].sum().item()
        history["test_episode"].append(i + 1), history["test_return"].append(test_return)
        logger.log_scalar("test/return", test_return, step=env_steps)
        print(f"episode {i + 1:3d}  return {ret:6.1f}  test return {test_return:6.1f}  "
              f"({time.perf_counter() - start:.0f} s)")
    if i + 1 >= cfg.seed_episodes + cfg.episodes:
        break
collector.shutdown()
logger.experiment.flush()

# %% [markdown]
# ## Learning curve
#
# The first episodes are random (grey); after them the planner acts with the model it has
# learnt so far. The random policy's return on cartpole swing-up is what the seed
# episodes show.

# %%
fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 3.6))
ax.axvspan(0.5, cfg.seed_episodes + 0.5, color="gray", alpha=0.15, label="random seed episodes")
ax.plot(history["episode"], history["return"], "o-", label="training episode (with noise)")
ax.plot(history["test_episode"], history["test_return"], "s-", label="test episode (no noise)")
ax.set_xlabel("episode")
ax.set_ylabel("return")
ax.set_title("cartpole swing-up")
ax.legend()
loss_episodes = [e for e, _ in history["loss"]]
for key in ("loss_model_reco", "loss_model_reward", "loss_model_kl"):
    ax2.plot(loss_episodes, [h[key] for _, h in history["loss"]], "o-", label=key)
ax2.set_yscale("log")
ax2.set_xlabel("episode")
ax2.set_title("world-model losses (last update of each episode)")
ax2.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# ## What is in TensorBoard
#
# The event file holds every scalar logged above (`train/episode_return`, `test/return`,
# `loss/*`); `tensorboard --logdir runs` shows them. They can also be read back in Python:

# %%
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

events = EventAccumulator(str(logdir))
events.Reload()
print("event files:", [p.name for p in logdir.rglob("events.out.tfevents.*")])
print("scalars:", events.Tags()["scalars"])
[(e.step, round(e.value, 1)) for e in events.Scalars("test/return")]

# %% [markdown]
# ## The agent at work
#
# The frames of the last test episode (every few steps, time running left to right):

# %%
every = max(1, episode_steps // 14)
frames = test_rollout["pixels"][::every].float() / 255
plt.figure(figsize=(15, 2))
plt.imshow(frames.permute(2, 0, 3, 1).flatten(1, 2).numpy())
plt.axis("off")
plt.title(f"last test episode (return {history['test_return'][-1]:.1f}), every {every}th frame")
plt.show()

# %% [markdown]
# ## The same as a recipe
#
# `PlaNetTrainer` wraps this loop with the paper's presets, checkpoints that include the
# replay buffer (a killed run resumes where it stopped), test episodes run as a batch of
# environments, reconstructions and open-loop prediction videos in TensorBoard:
#
# ```python
# from torchrl_rssm.recipes import PlaNetTrainer, preset
# cfg = preset("quick")              # or "cartpole-swingup" (the paper's settings) on a GPU
# cfg.logdir = "runs/planet-quick"
# PlaNetTrainer(cfg).train()
# ```
#
# or from a shell: `torchrl-rssm train --preset quick`, then `tensorboard --logdir runs`.
# The quick preset's settings:

# %%
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm's notebook bars want ipywidgets
from torchrl_rssm.recipes import preset

{k: v for k, v in preset("quick").to_dict().items()
 if k in ("env", "from_pixels", "episodes", "updates_per_episode", "batch_size", "chunk_length",
          "num_candidates", "planning_horizon", "optim_steps", "top_k", "logdir")}
