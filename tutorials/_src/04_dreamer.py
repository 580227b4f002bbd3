# %% [markdown]
# # 4. Dreamer: an actor and a value learned in imagination
#
# PlaNet (notebook 2) plans at every step: it imagines hundreds of action sequences with the
# world model and keeps the best. Dreamer (Hafner et al., 2020, "Dream to Control") uses the
# **same world model** but learns a policy instead:
#
# 1. from every posterior latent $(s_t, h_t)$ of a training batch, imagine $H$ steps with the
#    prior, an **actor** $a_\tau \sim \pi(s_\tau, h_\tau)$ choosing the actions;
# 2. score the imagined trajectory with the reward head and a **value** model $v(s, h)$,
#    combined into the paper's $\lambda$-returns
#    $V_\tau = r_\tau + \gamma\,\big((1-\lambda)\,v(s_{\tau+1}) + \lambda V_{\tau+1}\big)$,
#    $V_H = v(s_H)$;
# 3. the actor maximises the returns by backpropagating through the imagined dynamics (the
#    world model stays fixed); the value regresses on them.
#
# Acting then costs one actor call per step, with no planner.
#
# In this notebook we
#
# 1. build the actor and the value for a pixel world model,
# 2. imagine one trajectory with the actor in the loop and decode it into frames,
# 3. compute the two losses on a batch and check where their gradients go,
# 4. train Dreamer with the recipe and plot its learning curve,
# 5. drop the same losses into a TorchRL Dreamer pipeline (a `DreamerEnv`), and compare them
#    with TorchRL's `DreamerActorLoss` on a case whose $\lambda$-return is known in closed form.

# %% [markdown]
# **Size switch.** `TORCHRL_RSSM_TUTORIAL_SIZE=tiny` runs in seconds (the test suite does
# that). `full` takes about five minutes on a 2-core CPU at one thread: about 75 s to train a
# pixel world model on a few random episodes (so that its imagined frames mean something)
# and about 3 minutes of Dreamer training from state vectors.

# %%
import os
from types import SimpleNamespace

SIZE = os.environ.get("TORCHRL_RSSM_TUTORIAL_SIZE", "full")
assert SIZE in ("tiny", "full"), f"TORCHRL_RSSM_TUTORIAL_SIZE must be tiny or full, got {SIZE!r}"
cfg = SimpleNamespace(**{
    "tiny": dict(episodes=1, steps=16, max_updates=2, train_seconds=60, batch=2, length=6, channels=4,
                 state=4, belief=16, hidden=16, context=3, horizon=6, dreamer_preset="dreamer-tiny",
                 dreamer_episodes=1, test_every=3),
    "full": dict(episodes=5, steps=125, max_updates=5000, train_seconds=75, batch=16, length=10, channels=16,
                 state=30, belief=200, hidden=200, context=5, horizon=15, dreamer_preset="dreamer-quick",
                 dreamer_episodes=25, test_every=5),
}[SIZE])
cfg

# %%
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type

from torchrl_rssm.envs import Dequantize, make_env
from torchrl_rssm.modules import make_dreamer_actor, make_value_model, make_world_model
from torchrl_rssm.objectives import DreamerActorLoss, DreamerValueLoss, RSSMLoss

_ = torch.manual_seed(0)

# %% [markdown]
# ## The actor and the value for a world model
#
# The world model is notebook 1's: cartpole swing-up from 64x64 pixels (rendered with the
# camera that follows the cart), built from the environment's specs. The actor and the
# value read the same latent, `state` $s_t$ and `belief` $h_t$:
#
# - `make_dreamer_actor(action_spec, state_dim, belief_dim)` gives a TorchRL
#   `ProbabilisticActor`: a `DreamerActor` MLP (TorchRL's class of that name, same
#   constructor and `forward(state, belief) -> (loc, scale)`) and TorchRL's `TanhNormal` on
#   the spec's bounds. Under `ExplorationType.RANDOM` it draws a reparameterised sample
#   (gradients flow to `loc` and `scale`); under `DETERMINISTIC` it returns the mode.
# - `make_value_model(state_dim, belief_dim)` gives a `TensorDictModule` writing `state_value`.

# %%
env = make_env("dmc:cartpole-swingup", from_pixels=True, camera_id=1, seed=0)
world_model = make_world_model(env.observation_spec, env.action_spec, state_dim=cfg.state,
                               belief_dim=cfg.belief, hidden_dim=cfg.hidden, channels=cfg.channels)
actor = make_dreamer_actor(env.action_spec, cfg.state, cfg.belief, num_cells=cfg.hidden)
value = make_value_model(cfg.state, cfg.belief, hidden_dim=cfg.hidden)
for name, net in [("world model", world_model), ("actor", actor), ("value", value)]:
    print(f"{name:12s} {sum(p.numel() for p in net.parameters()) / 1e6:.2f} M parameters")

latent = TensorDict(state=torch.randn(3, cfg.state), belief=torch.randn(3, cfg.belief), batch_size=[3])
with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
    print("sampled actions:", actor(latent.clone())["action"].flatten().tolist())
with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
    print("modes:          ", actor(latent.clone())["action"].flatten().tolist())
with torch.no_grad():
    print("values:         ", value(latent.clone())["state_value"].flatten().tolist())
print("actor reads", actor.in_keys, "and writes", actor.out_keys)

# %% [markdown]
# ## A world model to dream with
#
# Imagined frames of an untrained model are grey noise, so we first record a few random
# episodes and train the world model briefly, exactly as in notebook 1 (chunks of
# `length` steps, each starting from its first observation filtered; `RSSMLoss`; a fixed
# time budget).

# %%
start = time.perf_counter()
data = torch.stack([env.rollout(cfg.steps, break_when_any_done=False) for _ in range(cfg.episodes)])
test_episode = make_env("dmc:cartpole-swingup", from_pixels=True, camera_id=1, seed=1).rollout(
    cfg.steps, break_when_any_done=False)  # held out: imagination starts from its latents
print(f"recorded {data.numel()} frames in {time.perf_counter() - start:.1f} s")

dequantize = Dequantize(bits=5)


def sample_chunks(data, batch, length):
    episode = torch.randint(data.shape[0], (batch, 1))
    t = torch.randint(data.shape[1] - length + 1, (batch, 1)) + torch.arange(length)
    chunk = dequantize(data[episode, t])  # [batch, length]
    chunk["is_init"][:, 0] = True  # each chunk starts from its first observation, filtered
    return chunk


model_loss = RSSMLoss(world_model, free_nats=3.0)
model_optimizer = torch.optim.Adam(world_model.parameters(), lr=1e-3, eps=1e-4)
updates, start = 0, time.perf_counter()
while updates < cfg.max_updates and time.perf_counter() - start < cfg.train_seconds:
    losses = model_loss(sample_chunks(data, cfg.batch, cfg.length))
    total = sum(v for k, v in losses.items() if k.startswith("loss_"))
    model_optimizer.zero_grad()
    total.backward()
    torch.nn.utils.clip_grad_norm_(world_model.parameters(), 100.0)
    model_optimizer.step()
    updates += 1
print(f"{updates} world-model updates in {time.perf_counter() - start:.0f} s; last reconstruction loss "
      f"{losses['loss_model_reco'].item():.1f}, reward loss {losses['loss_model_reward'].item():.3f}")

# %% [markdown]
# ## One imagined rollout, decoded
#
# `world_model.rollout.imagine(start, policy=..., horizon=H)` is the imagination engine that
# the planners and Dreamer's actor loss share. With `policy`, a function
# `(state, belief) -> action`, the actor chooses each action from the latent it has just
# imagined; gradients flow through the whole trajectory (here we only look, so `no_grad`).
#
# We filter the held-out episode's first `context` frames (the posterior), start from the
# last filtered latent, let the actor act for $H$ imagined steps, and decode every imagined
# latent with `world_model.decoder`. No image is observed after the context: the frames are
# the model's dream of what the actor's actions would do. (The actor is untrained here, and
# the world model has had only a minute: the dream keeps the scene, the rails and the cart
# and soon loses the thin pole; notebook 1 trains the same model longer.)

# %%
def actor_policy(state, belief):
    """The actor as a tensor function, for `imagine`: a sample of pi(. | s, h)."""
    td = TensorDict(state=state, belief=belief, batch_size=state.shape[:-1])
    with set_exploration_type(ExplorationType.RANDOM):
        return actor(td)["action"]


wm, C, H = world_model, cfg.context, cfg.horizon
episode = dequantize(test_episode.clone())[None]  # [1, T]
with torch.no_grad():
    filtered = wm.rollout.observe(wm.encoder(episode["next", "pixels"]), episode["action"],
                                  is_init=episode["is_init"], init_embedding=wm.encoder(episode["pixels"]))
    start_latent = {"state": filtered["state"][:, C - 1], "belief": filtered["belief"][:, C - 1]}
    imagined = wm.rollout.imagine(start_latent, policy=actor_policy, horizon=H)
    frames = wm.decoder(imagined["state"], imagined["belief"])[0]  # [H, 3, 64, 64]
    rewards = wm.reward_model(imagined["state"], imagined["belief"])[0, :, 0]
    values = value(TensorDict(state=imagined["state"], belief=imagined["belief"], batch_size=[1, H]))["state_value"]
print("imagined:", {k: tuple(v.shape) for k, v in imagined.items()})


def to_image(frames):
    """[T, 3, H, W]: uint8 or model floats in [-0.5, 0.5] -> one H x (T*W) x 3 array in [0, 1]."""
    frames = frames.detach().float()
    frames = frames / 255 if frames.max() > 1 else frames + 0.5
    return frames.clamp(0, 1).permute(2, 0, 3, 1).flatten(1, 2).numpy()


context = episode["next", "pixels"][0, :C]
fig, axes = plt.subplots(2, 1, figsize=(min(16, 0.9 * (C + H)), 3.4), squeeze=False)
axes[0, 0].imshow(to_image(context), interpolation="nearest")
axes[0, 0].set_title(f"observed: the {C} context frames")
axes[1, 0].imshow(to_image(frames), interpolation="nearest")
axes[1, 0].set_title(f"imagined: {H} steps with the actor's actions, decoded")
for ax in axes[:, 0]:
    ax.set_xticks([]), ax.set_yticks([])
fig.tight_layout()
plt.show()

# %% [markdown]
# What the actor loss sees along that trajectory: the actor's actions, the reward head's
# mean on each imagined state and the (still untrained) value.

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 2.8))
ax1.plot(range(1, H + 1), imagined["action"][0, :, 0], "o-")
ax1.set_title("imagined actions")
ax1.set_xlabel("imagined step")
ax2.plot(range(1, H + 1), rewards, "o-", label="reward head (mean)")
ax2.plot(range(1, H + 1), values[0, :, 0], "s-", label="value")
ax2.set_xlabel("imagined step")
ax2.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# ## The two losses
#
# `DreamerActorLoss(actor, value, world_model, imagination_horizon=H)` and
# `DreamerValueLoss(value)` are TorchRL `LossModule`s with the constructor arguments, keys and
# return values of TorchRL's classes of the same names; `make_value_estimator(gamma=...,
# lmbda=...)` sets the $\lambda$-return (the paper's $\gamma = 0.99$, $\lambda = 0.95$).
#
# The actor loss reads the posterior latents `("next", "state")`/`("next", "belief")` of a
# batch (here: what `RSSMLoss.compute` returns beside the model losses), detaches them,
# imagines $H$ steps from **each** of the $B \times T$ latents and returns
# `(TensorDict(loss_actor), fake_data)`; `fake_data` is the imagined `[B*T, H]` trajectory
# with its `lambda_target`, which the value loss regresses on.

# %%
actor_loss = DreamerActorLoss(actor, value, world_model, imagination_horizon=H)
actor_loss.make_value_estimator(gamma=0.99, lmbda=0.95)
value_loss = DreamerValueLoss(value)

batch = sample_chunks(data, cfg.batch, cfg.length)
model_losses, model_out = model_loss.compute(batch)
actor_out, fake_data = actor_loss(model_out)
value_out, _ = value_loss(fake_data)
print("loss_actor", actor_out["loss_actor"].item(), " loss_value", value_out["loss_value"].item())
fake_data.select("state", "action", ("next", "reward"), ("next", "state_value"), "lambda_target")

# %% [markdown]
# The actor's gradient reaches the actor only (it flows through the world model's dynamics,
# reward head and the value, but none of their parameters is updated by it); the value
# loss's gradient reaches the value only. In Dreamer each has its own optimiser.

# %%
def grad_norms(loss):
    for net in (world_model, actor, value):
        net.zero_grad(set_to_none=True)
    loss.backward(retain_graph=True)
    return {name: round(sum(p.grad.norm().item() ** 2 for p in net.parameters() if p.grad is not None) ** 0.5, 4)
            for name, net in [("world model", world_model), ("actor", actor), ("value", value)]}


print("d loss_actor:", grad_norms(actor_out["loss_actor"]))
print("d loss_value:", grad_norms(value_out["loss_value"]))

# %% [markdown]
# ## Training Dreamer with the recipe
#
# `Trainer` (the recipe's one training core, shared with PlaNet) runs the loop: collect an
# episode with `DreamerPolicy` (the same belief filter as PlaNet's policy, then the actor's
# sample plus N(0, 0.3) noise; its mode in test episodes), store it, and make
# `updates_per_episode` updates, each one step of the world model, the actor and the value on
# a replay batch. `preset("dreamer-quick")` is cartpole swing-up from **state vectors** with
# a small world model, sized for a CPU; from pixels (`dreamer-cartpole-swingup`, the paper's
# settings) it needs a GPU.
#
# Here we run it for `dreamer_episodes` episodes after the 5 random seed episodes (the
# preset runs 100): about 3 minutes on one CPU thread. `torchrl-rssm train --algo dreamer
# --preset dreamer-quick` does the same from a shell.

# %%
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm's notebook bars want ipywidgets
from torchrl_rssm.recipes import Trainer, preset

run = preset(cfg.dreamer_preset)
run.episodes, run.test_every, run.checkpoint_every = cfg.dreamer_episodes, cfg.test_every, 0
run.video_every, run.progress, run.logdir = 0, False, "runs/tutorial-dreamer"
{k: v for k, v in run.to_dict().items()
 if k in ("algo", "env", "from_pixels", "seed_episodes", "episodes", "updates_per_episode", "batch_size",
          "chunk_length", "imagination_horizon", "gamma", "lmbda", "lr", "actor_lr", "value_lr")}

# %%
start = time.perf_counter()
trainer = Trainer(run)
result = trainer.train()
print(f"{result['episodes']} episodes, {result['updates']} updates in {time.perf_counter() - start:.0f} s")

# %% [markdown]
# ## Learning curve
#
# Everything the trainer logs is in TensorBoard (`tensorboard --logdir runs`); we read the
# event file back: the return of every training episode (with exploration noise), the test
# returns (noise-free, the mean of `test_episodes` episodes) and the Dreamer diagnostics of
# each update.

# %%
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

events = EventAccumulator(run.logdir)
events.Reload()
steps_per_episode = trainer.episode_steps * trainer.env.action_repeat


def series(tag):
    """(episode, value) pairs of a scalar logged against env steps."""
    return [(e.step / steps_per_episode, e.value) for e in events.Scalars(tag)]


print("some of the logged tags:", [t for t in events.Tags()["scalars"]
                                   if t.startswith(("train/episode", "test/", "loss/loss_a", "loss/loss_v",
                                                    "behaviour/"))])
RANDOM_RETURN = 125.3  # a uniformly random policy on this task (benchmarks/results/quick_learning.md)
fig, axes = plt.subplots(1, 3, figsize=(15, 3.6), gridspec_kw={"width_ratios": [2, 1, 1]})
ax = axes[0]
ax.axvspan(0.5, run.seed_episodes + 0.5, color="gray", alpha=0.15, label="random seed episodes")
ax.axhline(RANDOM_RETURN, color="gray", ls=":", label="random policy (mean)")
ax.plot(*zip(*series("train/episode_return")), "o-", label="training episode (with noise)")
ax.plot(*zip(*series("test/return")), "s-", label=f"test (mean of {run.test_episodes}, no noise)")
ax.set_ylabel("return")
ax.set_title(f"{run.env}, {'pixels' if run.from_pixels else 'state vectors'}")
ax.legend(fontsize=8)
for ax, tag, title in [(axes[1], "behaviour/imagined_return", "imagined lambda-return (mean)"),
                       (axes[2], "loss/loss_value", "value loss")]:
    ax.plot(*zip(*series(tag)), ".-")
    ax.set_title(title)
for ax in axes:
    ax.set_xlabel("episode")
fig.tight_layout()
plt.show()

# %% [markdown]
# In the run committed with this notebook, the test return climbs from about the random
# policy's level after the seed episodes to more than twice it after 25 Dreamer episodes,
# and is still rising; the value learns to predict the imagined returns (its loss falls
# after an early peak, while the returns it regresses on grow). The preset's full 100
# episodes go further: `torchrl-rssm train --algo dreamer --preset dreamer-quick`.

# %% [markdown]
# ## The same losses in a TorchRL Dreamer pipeline
#
# TorchRL's Dreamer example imagines through a `DreamerEnv`, a model-based environment whose
# `step` runs the prior and the reward model. `to_dreamer_env(world_model)` builds one around
# our world model's networks (shared, not copied), so TorchRL's own `DreamerActorLoss` runs on
# it; ours accepts the `DreamerEnv` too, in place of the world model.
#
# To compare the two losses' targets we make a case whose answer is known: a reward head
# that predicts $r = 1$ everywhere and a value that predicts $v = 10$ everywhere, $\gamma =
# 0.99$, $\lambda = 0.95$, $H = 5$. The paper's $\lambda$-return is then a closed-form
# geometric sum; the one-step TD target is $r + \gamma v = 10.9$ at every step.

# %%
from torchrl.data import Bounded, Composite, Unbounded
from torchrl.objectives import DreamerActorLoss as TorchRLDreamerActorLoss

from torchrl_rssm.interop import to_dreamer_env
from torchrl_rssm.objectives import lambda_return

S, D, H5, gamma, lmbda, r, v = 6, 12, 5, 0.99, 0.95, 1.0, 10.0
spec = Bounded(-1.0, 1.0, (1,))
small_wm = make_world_model(Composite(observation=Unbounded((5,))), spec, state_dim=S, belief_dim=D, hidden_dim=16)
small_actor = make_dreamer_actor(spec, S, D, num_cells=16)
small_value = make_value_model(S, D, hidden_dim=16)
with torch.no_grad():  # constant heads: zero the last layer's weights, set its bias
    for last_layer, constant in [(small_wm.reward_model.net[-1], r), (small_value.module.net[-1], v)]:
        last_layer.weight.zero_()
        last_layer.bias.fill_(constant)

model_env = to_dreamer_env(small_wm, spec)  # TorchRL's DreamerEnv
print(type(model_env).__module__ + "." + type(model_env).__name__)

losses = {}
for name, cls in [("TorchRL", TorchRLDreamerActorLoss), ("ours", DreamerActorLoss)]:
    loss = cls(small_actor, small_value, model_env, imagination_horizon=H5)  # same arguments
    loss.make_value_estimator(gamma=gamma, lmbda=lmbda)
    losses[name] = loss

starts = TensorDict(state=torch.randn(4, S), belief=torch.randn(4, D), batch_size=[4])
targets = {}
for name, loss in losses.items():
    out, fake = loss(starts.clone())
    value_out, _ = DreamerValueLoss(small_value)(fake)  # our value loss on either's imagined data
    targets[name] = fake["lambda_target"][0, :, 0]
    print(f"{name:8s} loss_actor {out['loss_actor'].item():8.3f}  loss_value {value_out['loss_value'].item():.4f}  "
          f"fake_data {tuple(fake.shape)}")

closed_form = lambda_return(torch.full((1, H5, 1), r), torch.full((1, H5, 1), v), gamma=gamma, lmbda=lmbda)[0, :, 0]
print("lambda_target per imagined step:")
print("  TorchRL's DreamerActorLoss:", [round(x, 3) for x in targets["TorchRL"].tolist()])
print("  ours:                      ", [round(x, 3) for x in targets["ours"].tolist()])
print("  paper's lambda-return:     ", [round(x, 3) for x in closed_form.tolist()])
print("  one-step TD target r + g v:", round(r + gamma * v, 3))

# %%
t = range(H5)
plt.figure(figsize=(6.5, 3.2))
plt.plot(t, closed_form, "k-", lw=6, alpha=0.2, label="paper's lambda-return (closed form)")
plt.plot(t, targets["ours"], "o-", label="ours: DreamerActorLoss")
plt.plot(t, targets["TorchRL"], "s--", label="TorchRL 0.14.1: DreamerActorLoss")
plt.axhline(r + gamma * v, color="gray", ls=":", label="one-step TD target r + gamma v")
plt.xlabel("imagined step t")
plt.ylabel("lambda_target V_t")
plt.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# Our `lambda_target` is the paper's $\lambda$-return: it looks $H - t$ steps ahead, so it
# is largest at the start of the trajectory and falls to the one-step target at the last
# step, where there is nothing left to look ahead to. TorchRL 0.14.1's loss, run on the same
# `DreamerEnv` with the same actor and value, gives $r + \gamma v$ at every step: its
# `lambda_target` is the one-step TD target, not the $\lambda$-return (the test suite pins
# this down: `tests/test_dreamer.py`). Everything else is interchangeable: the constructor
# arguments, `make_value_estimator`, the keys of `fake_data`, and either value loss on either
# actor loss's `fake_data`.
