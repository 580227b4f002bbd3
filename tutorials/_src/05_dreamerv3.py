# %% [markdown]
# # 5. DreamerV3's world model: categorical latents, two-hot heads, the same engine
#
# DreamerV3 (Hafner et al., 2023, "Mastering Diverse Domains through World Models") keeps
# the shape of PlaNet's world model (notebook 1) and changes its parts, so that one set of
# hyperparameters learns across domains:
#
# - the stochastic latent is **categorical**: $C$ one-hot vectors of $K$ classes, sampled
#   straight-through, with a little uniform mixed in (`unimix`), instead of a Gaussian;
# - the recurrent core may be a **block GRU** with RMSNorm and SiLU;
# - reward and value heads predict a distribution over **symexp-spaced bins** (two-hot
#   targets), so rewards of any scale train alike, and a **continuation** head predicts
#   whether the episode goes on.
#
# In this notebook we
#
# 1. sample categorical latents and look at their straight-through gradient,
# 2. encode and decode a scalar with the two-hot bins,
# 3. build a pixel world model from the V3 parts and train it briefly with `DreamerV3ModelLoss`,
# 4. imagine a rollout and decode it into frames,
# 5. plan with PlaNet's CEM on the same model: the planners, the acting policy and the
#    rollout's `imagine` run one imagination loop, whatever the latent distribution.

# %% [markdown]
# **Size switch.** `TORCHRL_RSSM_TUTORIAL_SIZE=tiny` runs in seconds (the test suite does
# that). `full` takes about two minutes on a 2-core CPU at one thread, most of it training the
# world model for a fixed time budget so that its imagined frames mean something.

# %%
import os
from types import SimpleNamespace

SIZE = os.environ.get("TORCHRL_RSSM_TUTORIAL_SIZE", "full")
assert SIZE in ("tiny", "full"), f"TORCHRL_RSSM_TUTORIAL_SIZE must be tiny or full, got {SIZE!r}"
cfg = SimpleNamespace(**{
    "tiny": dict(episodes=1, steps=16, max_updates=2, train_seconds=60, batch=2, length=6, depth=4,
                 categoricals=4, classes=4, belief=16, hidden=16, blocks=2, context=3, horizon=6,
                 candidates=16, optim_steps=2, act_steps=3),
    "full": dict(episodes=4, steps=100, max_updates=5000, train_seconds=90, batch=8, length=12, depth=16,
                 categoricals=8, classes=8, belief=64, hidden=64, blocks=4, context=5, horizon=15,
                 candidates=200, optim_steps=5, act_steps=10),
}[SIZE])
cfg

# %%
import time

import matplotlib.pyplot as plt
import torch
from tensordict.nn import TensorDictModule, TensorDictSequential

from torchrl_rssm.envs import make_env
from torchrl_rssm.modules import (DreamerV3ContinuationHead, DreamerV3ImageDecoder, DreamerV3ImageEncoder,
                                  DreamerV3RewardHead, RSSMPosteriorV3, RSSMPriorV3, RSSMRolloutV3, RSSMWorldModel,
                                  straight_through_categorical, symexp_bins, two_hot_decode, two_hot_encode)
from torchrl_rssm.objectives import DreamerV3ModelLoss
from torchrl_rssm.policies import PlaNetPolicy

_ = torch.manual_seed(0)

# %% [markdown]
# ## Categorical latents
#
# A latent of $C = 3$ categoricals with $K = 4$ classes is three one-hot vectors, flattened to
# 12 numbers. `straight_through_categorical` draws them: forward, the one-hot sample; backward,
# the gradient of the probabilities (`probs + (one_hot - probs).detach()`), so that a loss on
# the sample trains the logits. `unimix` mixes uniform into the probabilities: no class ever
# falls below `unimix / K`, which keeps the KL terms of the loss finite.

# %%
logits = torch.tensor([[4.0, 0.0, -2.0, -9.0], [0.0, 0.0, 0.0, 0.0], [-9.0, -9.0, 9.0, -9.0]], requires_grad=True)
sample = straight_through_categorical(logits, unimix=0.01)
print("sample (one one-hot per categorical):\n", sample.detach())
(sample * torch.arange(4.0)).sum().backward()
print("gradient reaches the logits:", logits.grad.abs().sum().item() > 0)
print("smallest probability with unimix 0.01:", torch.softmax(logits.detach(), -1).mul(0.99).add(0.01 / 4).min().item())

# %% [markdown]
# ## Two-hot rewards
#
# A scalar head predicts logits over 255 bins spaced by `symexp` (dense near 0, wide far
# from it: $\pm 20$ in symlog space spans $\pm 5 \cdot 10^8$). A target between two bins is
# encoded as weights on those two bins that keep its value (`two_hot_encode`); the head is
# trained with the cross entropy to that target and read at its expectation
# (`two_hot_decode`). Zero logits decode to exactly 0, so a fresh head predicts 0.

# %%
bins = symexp_bins()
target = torch.tensor([2.0])
weights = two_hot_encode(target, bins)
nonzero = weights.nonzero()[:, -1]
print("bins around the target:", bins[nonzero].tolist(), "weights:", weights[0, nonzero].tolist())
print("decoded back:", two_hot_decode(torch.log(weights.clamp_min(1e-30)), bins).item())
print("zero logits decode to:", two_hot_decode(torch.zeros(255), bins).item())

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 2.8))
ax1.plot(bins, ".", markersize=3)
ax1.set_yscale("symlog")
ax1.set_title("255 symexp-spaced bins")
ax1.set_xlabel("bin")
ax2.bar(range(nonzero.min() - 3, nonzero.max() + 4), weights[0, nonzero.min() - 3: nonzero.max() + 4])
ax2.set_title("two-hot encoding of 2.0")
ax2.set_xlabel("bin")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## A pixel world model from the V3 parts
#
# Cartpole swing-up from 64x64 pixels, as in notebooks 1 and 4. The parts are drop-in for
# TorchRL's classes of the same names (same arguments, keys and state dicts), and they nest
# as TorchRL's DreamerV3 world model: an encoder, `RSSMRolloutV3` (observe over `[B, T]`),
# the image decoder and the continuation head, then the two-hot reward head, in an
# `RSSMWorldModel` (a TorchRL `WorldModelWrapper`).

# %%
env = make_env("dmc:cartpole-swingup", from_pixels=True, camera_id=1, seed=0)
C, K, D, HID = cfg.categoricals, cfg.classes, cfg.belief, cfg.hidden
latent = C * K + D
action_dim = env.action_spec.shape[-1]
encoder = DreamerV3ImageEncoder(depth=cfg.depth, mults=(1, 2, 3, 4))
embed_dim = encoder.output_features((3, 64, 64))
prior = RSSMPriorV3(action_spec=env.action_spec, hidden_dim=HID, rnn_hidden_dim=D, num_categoricals=C, num_classes=K,
                    action_dim=action_dim, recurrent_model="block_gru", num_blocks=cfg.blocks, unimix=0.01)
posterior = RSSMPosteriorV3(hidden_dim=HID, num_categoricals=C, num_classes=K, rnn_hidden_dim=D,
                            obs_embed_dim=embed_dim, use_rms_norm=True, unimix=0.01)
decoder = DreamerV3ImageDecoder(latent, image_shape=(3, 64, 64), depth=cfg.depth, mults=(1, 2, 3, 4),
                                num_blocks=cfg.blocks)
continuation = DreamerV3ContinuationHead(latent, num_cells=HID)
latent_keys = [("next", "state"), ("next", "belief")]
world_model = RSSMWorldModel(
    TensorDictSequential(
        TensorDictModule(encoder, in_keys=[("next", "pixels")], out_keys=[("next", "encoded_latents")]),
        RSSMRolloutV3(prior, posterior),
        TensorDictModule(decoder, in_keys=latent_keys, out_keys=[("next", "reco_pixels")]),
        TensorDictModule(continuation, in_keys=latent_keys,
                         out_keys=[("next", "continue_pred"), ("next", "continuation")]),
    ),
    TensorDictModule(DreamerV3RewardHead(latent, num_cells=HID), in_keys=latent_keys,
                     out_keys=[("next", "reward_logits"), ("next", "reward")]),
)
print(f"world model: {sum(p.numel() for p in world_model.parameters()) / 1e6:.2f} M parameters")

# %% [markdown]
# We record a few random episodes (frames stay `uint8`: the encoder maps them to
# $[-0.5, 0.5]$ and the loss compares the decoder's output with `pixels / 255`) and train for
# a fixed time budget with `DreamerV3ModelLoss.from_paper`: the separate dynamics and
# representation KL terms (0.5 / 0.1, one free nat over all categoricals), two-hot reward
# cross entropy, and the continuation learnt from `terminated` only.

# %%
start = time.perf_counter()
data = torch.stack([env.rollout(cfg.steps, break_when_any_done=False) for _ in range(cfg.episodes)])
print(f"recorded {data.numel()} frames in {time.perf_counter() - start:.1f} s")


def sample_chunks(data, batch, length):
    episode = torch.randint(data.shape[0], (batch, 1))
    t = torch.randint(data.shape[1] - length + 1, (batch, 1)) + torch.arange(length)
    chunk = data[episode, t].clone()  # [batch, length]
    chunk["is_init"][:, 0] = True  # every chunk starts a fresh latent
    return chunk


model_loss = DreamerV3ModelLoss.from_paper(world_model, reco_symlog=False)
optimizer = torch.optim.Adam(world_model.parameters(), lr=4e-4, eps=1e-8)
updates, start = 0, time.perf_counter()
while updates < cfg.max_updates and time.perf_counter() - start < cfg.train_seconds:
    losses, _ = model_loss(sample_chunks(data, cfg.batch, cfg.length))
    optimizer.zero_grad()
    sum(losses.values()).backward()
    torch.nn.utils.clip_grad_norm_(world_model.parameters(), 1000.0)
    optimizer.step()
    updates += 1
print(f"{updates} updates in {time.perf_counter() - start:.0f} s;",
      {k: round(v.item(), 3) for k, v in losses.items()})

# %% [markdown]
# ## An imagined rollout, decoded to frames
#
# We filter a held-out episode's first `context` frames with `observe`, start from the last
# filtered latent and imagine $H$ steps with the episode's own actions, open loop:
# `RSSMRolloutV3.imagine` is `torchrl_rssm.modules.imagine`, the loop that PlaNet's rollout,
# Dreamer's actor loss and the planners step, here on the categorical step core. Every
# imagined latent is decoded by the image decoder; the reward head is read at its two-hot
# expectation. (After a minute and a half of training on a CPU the dream keeps the scene and
# the cart but not the thin pole, and the reward head has not yet come down to the small
# rewards of random actions: a longer run sharpens both; notebook 1 shows it with PlaNet's model.)

# %%
test_episode = make_env("dmc:cartpole-swingup", from_pixels=True, camera_id=1, seed=1).rollout(
    cfg.context + cfg.horizon, break_when_any_done=False)[None]  # [1, T]
rollout, Ctx, H = world_model[0][1], cfg.context, cfg.horizon
with torch.no_grad():
    filtered = rollout.observe(encoder(test_episode["next", "pixels"][:, :Ctx]), test_episode["action"][:, :Ctx],
                               is_init=test_episode["is_init"][:, :Ctx])
    start_latent = {"state": filtered["state"][:, -1], "belief": filtered["belief"][:, -1]}
    imagined = rollout.imagine(start_latent, action=test_episode["action"][:, Ctx:])
    frames = decoder(imagined["state"], imagined["belief"])[0]  # [H, 3, 64, 64]
    rewards = world_model.reward_model(imagined["state"], imagined["belief"])[1][0, :, 0]
print("imagined:", {k: tuple(v.shape) for k, v in imagined.items()})
print("state of the first imagined step, one one-hot per categorical:\n",
      imagined["state"][0, 0].reshape(C, K).int())


def to_image(frames):
    """[T, 3, H, W], uint8 or floats in [0, 1] -> one H x (T*W) x 3 array in [0, 1]."""
    frames = frames.detach().float()
    frames = frames / 255 if frames.max() > 1.5 else frames
    return frames.clamp(0, 1).permute(2, 0, 3, 1).flatten(1, 2).numpy()


truth = test_episode["next", "pixels"][0, Ctx:]
fig, axes = plt.subplots(3, 1, figsize=(min(16, 0.9 * H), 4.6))
axes[0].imshow(to_image(truth), interpolation="nearest")
axes[0].set_title("what happened")
axes[1].imshow(to_image(frames), interpolation="nearest")
axes[1].set_title(f"imagined from {Ctx} context frames with the same actions, decoded")
axes[2].plot(range(1, H + 1), rewards, "o-", label="reward head (two-hot mean)")
axes[2].plot(range(1, H + 1), test_episode["next", "reward"][0, Ctx:, 0], "s--", label="true reward")
axes[2].legend(fontsize=8)
axes[2].set_xlabel("imagined step")
for ax in axes[:2]:
    ax.set_xticks([]), ax.set_yticks([])
fig.tight_layout()
plt.show()

# %% [markdown]
# ## PlaNet's planner on the V3 model
#
# `PlaNetPolicy` (notebook 2) takes this world model as it is: its belief filter runs one
# posterior step per environment step (at an episode start from the same reset as `observe`:
# zero state, belief and action), and CEM scores candidate action sequences with the same
# imagination loop as above, reading the two-hot reward head at its mean and weighting each
# step by the continuation head's probability that the episode is still running.

# %%
acting_env = make_env("dmc:cartpole-swingup", from_pixels=True, camera_id=1, seed=2)
policy = PlaNetPolicy(world_model, action_spec=acting_env.action_spec, planning_horizon=cfg.horizon,
                      optim_steps=cfg.optim_steps, num_candidates=cfg.candidates, top_k=cfg.candidates // 10,
                      continuation_model=continuation, observation_transform=None)  # the encoder takes uint8
acting_env.append_transform(policy.make_tensordict_primer())
start = time.perf_counter()
with torch.no_grad():
    episode = acting_env.rollout(cfg.act_steps, policy)
print(f"{cfg.act_steps} planned steps in {time.perf_counter() - start:.1f} s; actions:",
      [round(a, 2) for a in episode["action"][:, 0].tolist()])
print("latents the policy carried:", {k: tuple(episode[k].shape) for k in ("state", "belief")})
