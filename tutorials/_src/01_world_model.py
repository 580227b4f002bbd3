# %% [markdown]
# # 1. The world model
#
# PlaNet's **Recurrent State Space Model** (RSSM) learns a compact latent picture of an
# environment from images and actions. At every step it keeps two things:
#
# - a deterministic **belief** $h_t = f(h_{t-1}, s_{t-1}, a_{t-1})$ (a GRU state), and
# - a stochastic **state** $s_t$, drawn from the **prior** $p(s_t \mid h_t)$ when the model
#   imagines, or from the **posterior** $q(s_t \mid h_t, o_t)$ when it sees the image $o_t$.
#
# A conv decoder turns $(h_t, s_t)$ back into an image and a reward head predicts the reward.
# Training maximises the evidence lower bound: reconstruct images and rewards, and keep
# the posterior close to the prior, $\mathrm{KL}(q \,\|\, p)$, so that the prior alone can
# predict the future. That is what a planner needs.
#
# In this notebook we
#
# 1. record a few episodes of DeepMind Control's cartpole swing-up from pixels with a random policy,
# 2. build the world model from the environment's specs,
# 3. train it briefly with `RSSMLoss` (a TorchRL `LossModule`),
# 4. look at reconstructions and at open-loop predictions against the truth, and at the loss curves.
#
# Everything lives in `TensorDict`s with TorchRL's Dreamer keys (`pixels`, `action`,
# `belief`, `state`, `prior_mean`, ...), so the parts also fit TorchRL's own pipelines
# (see notebook 3).

# %% [markdown]
# **Size switch.** `TORCHRL_RSSM_TUTORIAL_SIZE=tiny` runs everything in seconds (the test
# suite does that); the default `full` takes about five minutes on a 2-core CPU, most of it
# a training budget of `train_seconds`. The full settings are smaller than the paper's
# (batches of 50 chunks of 50 frames, 32 conv channels) so that a CPU learns something in
# minutes; on a GPU use the paper's sizes and train longer.

# %%
import os
from types import SimpleNamespace

SIZE = os.environ.get("TORCHRL_RSSM_TUTORIAL_SIZE", "full")
assert SIZE in ("tiny", "full"), f"TORCHRL_RSSM_TUTORIAL_SIZE must be tiny or full, got {SIZE!r}"
cfg = SimpleNamespace(**{
    "tiny": dict(episodes=2, steps=20, max_updates=4, train_seconds=60, batch=4, length=8, channels=4,
                 state=8, belief=32, hidden=32, model_lr=1e-3, context=3, horizon=6),
    "full": dict(episodes=8, steps=125, max_updates=5000, train_seconds=150, batch=16, length=10, channels=16,
                 state=30, belief=200, hidden=200, model_lr=1e-3, context=5, horizon=20),
}[SIZE])
cfg

# %%
import time

import matplotlib.pyplot as plt
import torch
from tensordict import TensorDict

from torchrl_rssm.envs import Dequantize, make_env
from torchrl_rssm.modules import make_world_model
from torchrl_rssm.objectives import RSSMLoss

_ = torch.manual_seed(0)

# %% [markdown]
# ## Record data
#
# `make_env` builds a TorchRL environment with PlaNet's preprocessing done by TorchRL
# transforms: 64x64 renders stored as `uint8` `[3, 64, 64]`, 5-bit colour depth, action
# repeat 8 for cartpole (so an episode is 1000 / 8 = 125 agent steps), a step counter and
# an `is_init` flag at episode starts.
#
# `env.rollout(n)` without a policy takes random actions from the action spec. Each
# rollout is a `[T]` tensordict in TorchRL's layout: row $t$ holds the observation $o_t$
# and the action $a_t$, and `("next", ...)` holds what followed: $o_{t+1}$ and $r_{t+1}$.
#
# We render with cartpole's second camera (`camera_id=1`), which follows the cart. PlaNet
# uses the fixed camera 0, from which random actions soon push the cart out of the frame;
# in a few CPU minutes the model would then learn little more than the background.

# %%
env = make_env("dmc:cartpole-swingup", from_pixels=True, camera_id=1, seed=0)
pixels_spec, action_spec = env.observation_spec["pixels"], env.action_spec
print(f"pixels: {tuple(pixels_spec.shape)} {pixels_spec.dtype}")
print(f"action: {tuple(action_spec.shape)} in [{action_spec.low.item()}, {action_spec.high.item()}]")

# %%
start = time.perf_counter()
episodes = [env.rollout(cfg.steps, break_when_any_done=False) for _ in range(cfg.episodes)]
data = torch.stack(episodes)  # [episodes, T]
test_env = make_env("dmc:cartpole-swingup", from_pixels=True, camera_id=1, seed=1)
test_episode = test_env.rollout(cfg.steps, break_when_any_done=False)  # held out for the pictures
print(f"recorded {data.numel()} frames in {time.perf_counter() - start:.1f} s")
data

# %% [markdown]
# A few frames of the first episode (time runs left to right):

# %%
def to_image(frames):
    """[T, 3, H, W] uint8 or model floats in [-0.5, 0.5] -> one H x (T*W) x 3 array in [0, 1]."""
    frames = frames.detach().float()
    frames = frames / 255 if frames.max() > 1 else frames + 0.5
    return frames.clamp(0, 1).permute(2, 0, 3, 1).flatten(1, 2).numpy()


def show_rows(rows, title=None, every=1, scale=1.5):
    """One image row per entry of ``rows`` ({label: [T, 3, H, W]}), frames side by side."""
    n = len(next(iter(rows.values()))[::every])
    size = 0.64 * scale  # inches per 64-pixel frame at 100 dpi
    fig, axes = plt.subplots(len(rows), 1, figsize=(n * size + 1.2, len(rows) * (size + 0.1) + 0.4 * bool(title)),
                             squeeze=False)
    for ax, (label, frames) in zip(axes[:, 0], rows.items()):
        ax.imshow(to_image(frames[::every]), interpolation="nearest")
        ax.set_ylabel(label, rotation=0, ha="right", va="center")
        ax.set_xticks([]), ax.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    plt.show()


show_rows({"episode 0": data[0, :48]["pixels"]}, every=4)

# %% [markdown]
# ## Build the world model from the specs
#
# `make_world_model` reads the observation and action specs and picks the conv encoder and
# decoder for `[3, 64, 64]` pixels (an MLP pair for vector observations). The result is a
# TorchRL `WorldModelWrapper` with the nesting of TorchRL's Dreamer example:
# `world_model[0]` is `TensorDictSequential(encoder, rssm_rollout, decoder)` and
# `world_model[1]` the reward head.

# %%
world_model = make_world_model(
    env.observation_spec, env.action_spec,
    state_dim=cfg.state, belief_dim=cfg.belief, hidden_dim=cfg.hidden, channels=cfg.channels,
)
n_params = sum(p.numel() for p in world_model.parameters())
print(f"{n_params / 1e6:.2f} M parameters")
print("reads: ", world_model.in_keys)
print("writes:", world_model.out_keys)

# %% [markdown]
# Training samples are chunks of `length` consecutive steps from random episodes and
# start times: a `[batch, length]` tensordict. `Dequantize` (a TorchRL `Transform`) maps the
# stored `uint8` pixels to floats in $[-0.5, 0.5)$ and adds PlaNet's uniform dequantisation
# noise, freshly for each sample. Each chunk's first step is marked `is_init`: the model
# starts it from its first (root) observation, filtered from the zero latent with a zero
# action, as at an episode start. (Notebook 2 uses TorchRL's replay buffer with a
# `SliceSampler` for this; it does the same.)

# %%
dequantize = Dequantize(bits=5)


def sample_chunks(data, batch, length):
    episode = torch.randint(data.shape[0], (batch, 1))
    t = torch.randint(data.shape[1] - length + 1, (batch, 1)) + torch.arange(length)
    chunk = dequantize(data[episode, t])  # [batch, length]
    chunk["is_init"][:, 0] = True  # each chunk starts from its first observation, filtered
    return chunk


batch = sample_chunks(data, cfg.batch, cfg.length)
out = world_model(batch.clone())
out["next"].select("encoded_latents", "belief", "state", "prior_mean", "prior_std",
                   "posterior_mean", "posterior_std", "reco_pixels", "reward_pred")

# %% [markdown]
# ## The loss
#
# `RSSMLoss` is a TorchRL `LossModule`. For a `[B, T]` batch it returns a tensordict of
# `loss_*` terms (sum them and backpropagate) and detached diagnostics:
#
# - `loss_model_reco`: $\tfrac12\lVert o_t - \hat o_t \rVert^2$ summed over the pixels, averaged over batch and time,
# - `loss_model_reward`: the same for the reward,
# - `loss_model_kl`: $\max(\mathrm{KL}(q \,\|\, p), 3)$ per step, with PlaNet's 3 free nats.

# %%
loss_fn = RSSMLoss(world_model, free_nats=3.0)
optimizer = torch.optim.Adam(world_model.parameters(), lr=cfg.model_lr, eps=1e-4)
{k: round(v.item(), 3) for k, v in loss_fn(batch).detach().items()}

# %% [markdown]
# ## Train
#
# The update is the usual one: sample, compute the loss, step the optimiser (gradient norm
# clipped at 1000 as in PlaNet). We train for a fixed time (`cfg.train_seconds`) rather than
# a fixed number of updates, so the notebook takes about the same time on any CPU. The
# diagnostics are kept for the curves below.

# %%
history = []
start = last_print = time.perf_counter()
while len(history) < cfg.max_updates and time.perf_counter() - start < cfg.train_seconds:
    losses = loss_fn(sample_chunks(data, cfg.batch, cfg.length))
    total = sum(v for k, v in losses.items() if k.startswith("loss_"))
    optimizer.zero_grad()
    total.backward()
    torch.nn.utils.clip_grad_norm_(world_model.parameters(), 1000.0)
    optimizer.step()
    history.append({k: v.item() for k, v in losses.detach().items()})
    if time.perf_counter() - last_print > 20 or len(history) in (1, cfg.max_updates):
        last_print, h = time.perf_counter(), history[-1]
        print(f"update {len(history):5d}  reco {h['loss_model_reco']:7.1f}  reward {h['loss_model_reward']:.3f}  "
              f"kl {h['kl']:5.2f}  ({last_print - start:3.0f} s)")
print(f"{len(history)} updates in {time.perf_counter() - start:.0f} s")

# %% [markdown]
# ## Loss curves
#
# The reconstruction term falls fast at first (the background), then slowly as the cart,
# the rails and the pole take shape. The KL between posterior and prior starts near zero and
# grows as the posterior carries more of what the images show; below PlaNet's 3 free nats
# (dashed) it costs nothing. The reward loss stays noisy: random actions swing the pole, so
# the reward changes from step to step.

# %%
def smooth(values, k=10):
    values = torch.tensor(values)
    k = max(1, min(k, len(values)))
    return torch.nn.functional.avg_pool1d(values[None, None], k, stride=1)[0, 0].numpy()


fig, axes = plt.subplots(1, 4, figsize=(16, 3.2))
for ax, key, title in zip(axes, ["loss_model_reco", "loss_model_reward", "kl", "posterior_entropy"],
                          ["reconstruction (nats)", "reward", "KL(q || p) per step", "posterior entropy"]):
    values = [h[key] for h in history]
    ax.plot(values, alpha=0.3, color="C0")
    ax.plot(range(len(values) - len(smooth(values)), len(values)), smooth(values), color="C0")
    ax.set_title(title)
    ax.set_xlabel("update")
axes[0].set_yscale("log")
axes[2].axhline(3.0, color="gray", linestyle="--", label="free nats")
axes[2].legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Reconstructions
#
# Below we run the model on the held-out episode with the **tensor API** of the rollout
# (the hot path the loss and the planner use): `encoder` embeds every image at once,
# `rollout.observe` filters the posterior over the sequence (step $t$ consumes $a_t$ and
# $o_{t+1}$), and `decoder` maps every $(h_t, s_t)$ back to an image. As in training, the
# episode's first observation $o_0$ is filtered first (`init_embedding`, read at `is_init`
# rows): the latent entering step 0 already knows where the cart starts.

# %%
wm, rollout = world_model, world_model.rollout
episode = dequantize(test_episode.clone())[None]  # [1, T]
with torch.no_grad():
    embedding = wm.encoder(episode["next", "pixels"])
    filtered = rollout.observe(embedding, episode["action"], is_init=episode["is_init"],
                               init_embedding=wm.encoder(episode["pixels"]))
    reconstruction = wm.decoder(filtered["state"], filtered["belief"])
truth = episode["next", "pixels"][0]
every = max(1, cfg.steps // 12)
show_rows({"truth": truth, "reconstruction": reconstruction[0]},
          title="held-out episode: observations and their reconstructions", every=every)

# %% [markdown]
# After a few CPU minutes the model has the scene, the cart and the perspective of the rails
# (which says where the cart is on its track); the thin pole takes longer to appear. All of
# it passed through the 30-dimensional sample $s_t$ and the belief $h_t$: there is no other
# path from the encoder to the decoder.

# %% [markdown]
# ## Open-loop predictions
#
# Reconstructions only show that information passes through the latent state. What a
# planner needs is **prediction**: the model sees the first `context` frames, then
# `rollout.imagine` runs the prior alone, given the true actions, and the decoder renders
# what the model expects to see. No image is observed after the context.

# %%
C, H = cfg.context, min(cfg.horizon, cfg.steps - cfg.context)
with torch.no_grad():
    start = {"state": filtered["state"][:, C - 1], "belief": filtered["belief"][:, C - 1]}
    imagined = rollout.imagine(start, action=episode["action"][:, C: C + H])
    prediction = wm.decoder(imagined["state"], imagined["belief"])[0]
print("imagined:", {k: tuple(v.shape) for k, v in imagined.items()})
every = max(1, H // 10)
show_rows({"truth": truth[C: C + H], "prediction": prediction}, every=every,
          title=f"open loop: {C} observed frames, then {H} predicted ones (every {every} shown)")

# %% [markdown]
# The imagined frames keep the cart and, for a while, the rails' motion, then drift. The
# error per pixel of the open-loop prediction against that of the filtered reconstructions
# (which see every frame):

# %%
err_filtered = (reconstruction[0, C: C + H] - truth[C: C + H]).pow(2).mean((1, 2, 3))
err_open_loop = (prediction - truth[C: C + H]).pow(2).mean((1, 2, 3))
plt.figure(figsize=(6, 3.2))
plt.plot(range(1, H + 1), err_open_loop, "o-", label="open-loop prediction")
plt.plot(range(1, H + 1), err_filtered, "s-", label="filtered reconstruction")
plt.xlabel("steps after the context")
plt.ylabel("mean squared error per pixel")
plt.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## The same through TensorDicts
#
# The tensor API above is what the loss and the planner call. As a TorchRL module the world
# model reads and writes tensordicts: `world_model(td)` fills `("next", "belief")`,
# `("next", "state")`, the prior and posterior statistics, `("next", "reco_pixels")` and
# `("next", "reward_pred")`, for any number of leading batch dims.

# %%
with torch.no_grad():
    td = world_model(episode.clone())
td["next"].select("belief", "state", "prior_mean", "posterior_std", "reco_pixels", "reward_pred")

# %% [markdown]
# **Next:** notebook 2 puts this model into the whole PlaNet loop (collector, replay buffer,
# CEM planner) and notebook 3 swaps these parts into an existing TorchRL Dreamer pipeline.
