# %% [markdown]
# # 3. Drop-in use in an existing TorchRL pipeline
#
# You already have a TorchRL model-based pipeline, built the way TorchRL's Dreamer example
# (`sota-implementations/dreamer/dreamer_utils.py`) builds it: `RSSMPrior`, `RSSMPosterior`,
# `RSSMRollout`, `ObsEncoder` and `ObsDecoder` from `torchrl.modules`, trained with
# `torchrl.objectives.DreamerModelLoss`, and, for planning, `torchrl.modules.CEMPlanner`
# stepping a `DreamerEnv`.
#
# This notebook swaps in `torchrl_rssm`'s parts one at a time and times each swap, in this
# process, on the same data:
#
# 1. **the RSSM modules**: change the import, keep everything else;
# 2. **the loss**: `RSSMLoss` instead of `DreamerModelLoss`, on the same world model;
# 3. **the planner**: our `CEMPlanner` instead of TorchRL's.
#
# The timings are medians over repeated calls after warm-up, on whatever machine runs the
# notebook (the committed outputs: a 2-core CPU). `benchmarks/` has the same comparisons as
# scripts.

# %%
import os
from types import SimpleNamespace

SIZE = os.environ.get("TORCHRL_RSSM_TUTORIAL_SIZE", "full")
assert SIZE in ("tiny", "full"), f"TORCHRL_RSSM_TUTORIAL_SIZE must be tiny or full, got {SIZE!r}"
cfg = SimpleNamespace(**{
    # model sizes; [B, T] batch of 64x64 images; RSSM-only batch; planner: candidates, horizon, iterations, top-k
    "tiny": dict(state=4, belief=16, hidden=16, channels=4, B=2, T=4, rssm_B=2, rssm_T=4, repeats=1,
                 candidates=16, horizon=3, iterations=2, top_k=4),
    "full": dict(state=30, belief=200, hidden=200, channels=32, B=8, T=32, rssm_B=50, rssm_T=50, repeats=5,
                 candidates=1000, horizon=12, iterations=10, top_k=100),
}[SIZE])
cfg

# %%
import statistics
import time

import matplotlib.pyplot as plt
import torch
from tensordict import TensorDict
from tensordict.nn import (ProbabilisticTensorDictModule, ProbabilisticTensorDictSequential,
                           TensorDictModule, TensorDictSequential)
from torchrl.modules import MLP, IndependentNormal, WorldModelWrapper
from torchrl.objectives import DreamerModelLoss

from torchrl_rssm.envs import make_env

_ = torch.manual_seed(0)


def median_ms(fn, repeats=cfg.repeats, warmup=1):
    """Median wall-clock milliseconds of fn() over `repeats` calls, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


timings = {}  # operation -> (TorchRL ms, ours ms)
print(f"timing on {torch.get_num_threads()} CPU thread(s)"
      + (f" and {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))

# %% [markdown]
# The environment gives the specs: cartpole swing-up from 64x64 pixels, built with TorchRL
# transforms by `make_env`.

# %%
env = make_env("dmc:cartpole-swingup", from_pixels=True, seed=0)
action_spec = env.action_spec
STATE, BELIEF, HIDDEN, CHANNELS = cfg.state, cfg.belief, cfg.hidden, cfg.channels  # PlaNet: 30, 200, 200, 32

# %% [markdown]
# ## 1. The RSSM modules: change the import
#
# This is TorchRL's Dreamer world model, written as in its example
# (`_dreamer_make_world_model`): encoder, `RSSMRollout(prior, posterior)` and a
# probabilistic decoder in a `TensorDictSequential`, a probabilistic reward head, both in a
# `WorldModelWrapper`. The only thing we parameterise is **where the five module classes
# come from**: `nn_lib` is either `torchrl.modules` or `torchrl_rssm.modules`. In your own
# code that is the line `from torchrl.modules import RSSMPrior, ...` becoming
# `from torchrl_rssm.modules import RSSMPrior, ...`.

# %%
def dreamer_world_model(nn_lib):
    """TorchRL's Dreamer world model, with the RSSM classes taken from `nn_lib`."""
    rssm_prior = nn_lib.RSSMPrior(hidden_dim=HIDDEN, rnn_hidden_dim=BELIEF, state_dim=STATE,
                                  action_spec=action_spec)
    rssm_posterior = nn_lib.RSSMPosterior(hidden_dim=HIDDEN, state_dim=STATE)
    rssm_rollout = nn_lib.RSSMRollout(
        TensorDictModule(rssm_prior, in_keys=["state", "belief", "action"],
                         out_keys=[("next", "prior_mean"), ("next", "prior_std"), "_", ("next", "belief")]),
        TensorDictModule(rssm_posterior, in_keys=[("next", "belief"), ("next", "encoded_latents")],
                         out_keys=[("next", "posterior_mean"), ("next", "posterior_std"), ("next", "state")]),
    )
    decoder = ProbabilisticTensorDictSequential(
        TensorDictModule(nn_lib.ObsDecoder(channels=CHANNELS, latent_dim=STATE + BELIEF), in_keys=[("next", "state"), ("next", "belief")], out_keys=["loc"]),
        ProbabilisticTensorDictModule(in_keys=["loc"], out_keys=[("next", "reco_pixels")],
                                      distribution_class=IndependentNormal,
                                      distribution_kwargs={"scale": 1.0, "event_dim": 3}),
    )
    transition_model = TensorDictSequential(
        TensorDictModule(nn_lib.ObsEncoder(channels=CHANNELS), in_keys=[("next", "pixels")], out_keys=[("next", "encoded_latents")]),
        rssm_rollout,
        decoder,
    )
    reward_model = ProbabilisticTensorDictSequential(
        TensorDictModule(MLP(out_features=1, depth=2, num_cells=HIDDEN, activation_class=torch.nn.ELU),
                         in_keys=[("next", "state"), ("next", "belief")], out_keys=[("next", "loc")]),
        ProbabilisticTensorDictModule(in_keys=[("next", "loc")], out_keys=[("next", "reward")],
                                      distribution_class=IndependentNormal,
                                      distribution_kwargs={"scale": 1.0, "event_dim": 1}),
    )
    return WorldModelWrapper(transition_model, reward_model)

# %% [markdown]
# A batch in TorchRL's layout, recorded from the environment with random actions (row $t$:
# `action` $a_t$; `("next", ...)`: the image and reward that followed). As in TorchRL's
# example, `state` and `belief` come from the environment's primer (zeros), pixels are floats.

# %%
def record_batch(B, T):
    rollout = torch.stack([env.rollout(T, break_when_any_done=False) for _ in range(B)])
    return TensorDict({
        "state": torch.zeros(B, T, STATE), "belief": torch.zeros(B, T, BELIEF),
        "action": rollout["action"],
        ("next", "pixels"): rollout["next", "pixels"].float() / 255,
        ("next", "reward"): rollout["next", "reward"],
    }, [B, T])


batch = record_batch(cfg.B, cfg.T)
batch

# %%
import torchrl.modules
import torchrl_rssm.modules

torchrl_wm = dreamer_world_model(torchrl.modules)
our_wm = dreamer_world_model(torchrl_rssm.modules)  # the only change
with torch.no_grad():  # materialise the lazy layers, as TorchRL's example does
    torchrl_wm(batch[:1, :2].clone())
    our_wm(batch[:1, :2].clone())
print(type(our_wm[0][1]).__module__, type(our_wm[0][1].rssm_prior.module).__module__)

# %% [markdown]
# The weights are interchangeable: each of TorchRL's modules' state dicts loads into ours
# (same parameter names and shapes), so a trained TorchRL model can move over.

# %%
theirs = {"prior": torchrl_wm[0][1].rssm_prior.module, "posterior": torchrl_wm[0][1].rssm_posterior.module,
          "encoder": torchrl_wm[0][0].module, "decoder": torchrl_wm[0][2][0].module}
mine = {"prior": our_wm[0][1].rssm_prior.module, "posterior": our_wm[0][1].rssm_posterior.module,
        "encoder": our_wm[0][0].module, "decoder": our_wm[0][2][0].module}
for name in theirs:
    mine[name].load_state_dict(theirs[name].state_dict())  # strict
our_wm[1].load_state_dict(torchrl_wm[1].state_dict())  # the reward MLP is TorchRL's on both sides
print("loaded:", ", ".join(theirs))

# %% [markdown]
# Now `DreamerModelLoss`, TorchRL's loss, on both world models: forward and backward over
# the whole batch. Only the modules differ.

# %%
def train_step(loss_module):
    def step():
        losses = loss_module(batch.clone())
        losses = losses[0] if isinstance(losses, tuple) else losses  # DreamerModelLoss: (losses, td)
        total = sum(v for k, v in losses.items() if k.startswith("loss_"))
        total.backward()
        return total
    return step


dreamer_loss_torchrl_wm = DreamerModelLoss(torchrl_wm)
dreamer_loss_our_wm = DreamerModelLoss(our_wm)
t_ms = median_ms(train_step(dreamer_loss_torchrl_wm))
o_ms = median_ms(train_step(dreamer_loss_our_wm))
timings[f"world model fwd+bwd\n[{cfg.B}, {cfg.T}] 64x64"] = (t_ms, o_ms)
print(f"DreamerModelLoss fwd+bwd, B={cfg.B}, T={cfg.T}: TorchRL modules {t_ms:.0f} ms, ours {o_ms:.0f} ms "
      f"({t_ms / o_ms:.2f}x)")

# %% [markdown]
# The convolutions cost the same on both sides (same layers); the difference is the RSSM's
# time loop. TorchRL's `RSSMRollout` steps through time with a tensordict `select`/`stack`
# per step; ours loops over plain tensors and moves the work that does not depend on the
# recurrence (the input projections, the prior head) out of the loop. Timed alone, on
# PlaNet's training batch of 50 chunks of 50 steps with the embeddings given:

# %%
B, T = cfg.rssm_B, cfg.rssm_T
rssm_batch = TensorDict({
    "state": torch.zeros(B, T, STATE), "belief": torch.zeros(B, T, BELIEF),
    "action": torch.rand(B, T, 1) * 2 - 1,
    ("next", "encoded_latents"): torch.randn(B, T, 32 * CHANNELS),  # the conv encoder's output size
}, [B, T])


def rssm_step(rollout):
    def step():
        out = rollout(rssm_batch.clone())
        (out["next", "state"].square().mean() + out["next", "prior_std"].mean()).backward()
    return step


t_ms = median_ms(rssm_step(torchrl_wm[0][1]))
o_ms = median_ms(rssm_step(our_wm[0][1]))
timings[f"RSSM rollout fwd+bwd\n[{B}, {T}]"] = (t_ms, o_ms)
print(f"RSSMRollout fwd+bwd, B={B}, T={T}: TorchRL {t_ms:.0f} ms, ours {o_ms:.0f} ms ({t_ms / o_ms:.2f}x)")

# %% [markdown]
# Ours also takes any number of batch dims (TorchRL's `GRUCell` path accepts only one), e.g.
# `[2, B, T]`:

# %%
with torch.no_grad():
    out = our_wm[0][1](torch.stack([rssm_batch, rssm_batch]))
out["next", "belief"].shape

# %% [markdown]
# ## 2. The loss: `RSSMLoss` instead of `DreamerModelLoss`
#
# `RSSMLoss` is a TorchRL `LossModule` too and runs on the same Dreamer world model (it
# reads the true reward before the model overwrites `("next", "reward")` with its
# prediction). Differences in use: it returns one tensordict (not a tuple); the KL is
# PlaNet's (summed over latent dims, free nats per step), with KL balancing and latent
# overshooting as options; the reconstruction is summed over each observation's own dims
# and averaged over batch and time.

# %%
from torchrl_rssm.objectives import RSSMLoss

rssm_loss_our_wm = RSSMLoss(our_wm, free_nats=3.0)
losses = rssm_loss_our_wm(batch.clone())
{k: round(v.item(), 3) for k, v in losses.items()}

# %%
t_ms = median_ms(train_step(dreamer_loss_torchrl_wm))
o_ms = median_ms(train_step(rssm_loss_our_wm))
timings[f"loss + world model fwd+bwd\n[{cfg.B}, {cfg.T}] 64x64"] = (t_ms, o_ms)
print(f"TorchRL (modules + DreamerModelLoss) {t_ms:.0f} ms, ours (modules + RSSMLoss) {o_ms:.0f} ms "
      f"({t_ms / o_ms:.2f}x)")

# %% [markdown]
# ## 3. The planner: our `CEMPlanner` instead of TorchRL's
#
# TorchRL's `CEMPlanner` plans by rolling candidate action sequences out in a model-based
# environment. For an RSSM that is a `DreamerEnv` around the prior and the reward head,
# built as TorchRL's Dreamer example builds it (`_dreamer_make_mbenv`). We build one per
# world model: each uses its own prior (TorchRL's or ours, with the same weights) and the
# same reward MLP.

# %%
from torchrl.data import Unbounded
from torchrl.envs import DreamerEnv, TensorDictPrimer
from torchrl.modules import SafeModule, SafeProbabilisticTensorDictSequential, SafeSequential

# the specs of the real env, with the latent primer TorchRL's example adds
proof_env = make_env("dmc:cartpole-swingup", from_pixels=True, seed=0, primers=TensorDictPrimer(
    random=False, default_value=0, state=Unbounded((STATE,)), belief=Unbounded((BELIEF,))))


def dreamer_model_env(world_model):
    """A DreamerEnv over the world model's prior and reward MLP, as in `_dreamer_make_mbenv`."""
    transition_model = SafeSequential(SafeModule(
        world_model[0][1].rssm_prior.module, in_keys=["state", "belief", "action"],
        out_keys=["_", "_", "state", "belief"]))
    reward_model = SafeProbabilisticTensorDictSequential(
        SafeModule(world_model[1][0].module, in_keys=["state", "belief"], out_keys=["loc"]),
        ProbabilisticTensorDictModule(in_keys=["loc"], out_keys=["reward"], distribution_class=IndependentNormal,
                                      distribution_kwargs={"scale": 1.0, "event_dim": 1}),
    )
    model_env = DreamerEnv(world_model=WorldModelWrapper(transition_model, reward_model),
                           prior_shape=torch.Size([STATE]), belief_shape=torch.Size([BELIEF]))
    model_env.set_specs_from_env(proof_env)
    return model_env


torchrl_model_env = dreamer_model_env(torchrl_wm)
our_model_env = dreamer_model_env(our_wm)

# %% [markdown]
# The planner swap is again the import. Our `CEMPlanner` takes TorchRL's positional
# arguments and accepts the `DreamerEnv`; when the env's prior is `torchrl_rssm`'s
# `RSSMPrior` it plans with its tensor loop (no `env.rollout`, no tensordict per imagined
# step). PlaNet's sizes in the full run: 1000 candidates, horizon 12, 10 iterations, top 100.

# %%
import torchrl.modules.planners
import torchrl_rssm.planners


def make_planner(planners_lib, model_env):
    return planners_lib.CEMPlanner(model_env, planning_horizon=cfg.horizon, optim_steps=cfg.iterations,
                                   num_candidates=cfg.candidates, top_k=cfg.top_k)


torchrl_planner = make_planner(torchrl.modules.planners, torchrl_model_env)
our_planner = make_planner(torchrl_rssm.planners, our_model_env)  # the only change

# one environment's latent, e.g. after filtering an observation
latent = TensorDict(state=torch.randn(STATE), belief=torch.randn(BELIEF))
with torch.no_grad():
    print("TorchRL's action:", torchrl_planner(latent.clone())["action"])
    print("our action:      ", our_planner(latent.clone())["action"])

# %%
def plan(planner):
    def step():
        with torch.no_grad():
            return planner(latent.clone())
    return step


t_ms = median_ms(plan(torchrl_planner), repeats=min(cfg.repeats, 3))
o_ms = median_ms(plan(our_planner), repeats=min(cfg.repeats, 3))
timings[f"CEM plan one action\nN={cfg.candidates}, H={cfg.horizon}, I={cfg.iterations}"] = (t_ms, o_ms)
print(f"one action: TorchRL CEMPlanner {t_ms:.0f} ms, ours {o_ms:.0f} ms ({t_ms / o_ms:.2f}x)")

# %% [markdown]
# Ours also plans for a batch of environments in one call (TorchRL's plans for one latent
# at a time), which is how a collector with several environments uses it:

# %%
with torch.no_grad():
    batch_latent = TensorDict(state=torch.randn(4, STATE), belief=torch.randn(4, BELIEF), batch_size=[4])
    print(our_planner(batch_latent)["action"].shape)

# %% [markdown]
# ## Summary
#
# Each bar is TorchRL's time divided by ours for the same work on this machine (above 1:
# ours is faster); the labels give both medians.

# %%
names = list(timings)
ratios = [timings[n][0] / timings[n][1] for n in names]
fig, ax = plt.subplots(figsize=(9, 0.9 + 0.75 * len(names)))
ax.barh(range(len(names)), ratios, color=["C1" if r >= 1 else "C0" for r in ratios])
ax.axvline(1.0, color="gray", linestyle="--")
for i, n in enumerate(names):
    t_ms, o_ms = timings[n]
    ax.text(ratios[i] + 0.03, i, f"{ratios[i]:.2f}x  (TorchRL {t_ms:.0f} ms, ours {o_ms:.0f} ms)", va="center")
ax.set_yticks(range(len(names)), names)
ax.invert_yaxis()
ax.set_xlim(0, max(ratios) * 1.9)
ax.set_xlabel("speed-up: TorchRL time / torchrl_rssm time")
fig.tight_layout()
plt.show()
