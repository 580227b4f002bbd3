"""Milliseconds per DreamerV3 update: this package's V3 modules and losses against TorchRL 0.14.1's, same weights.

Three rows per setting, each timed on both sides with the same networks and weights:

- **world-model update**: observe a ``[B, T]`` batch of vector observations (encoder, RSSM
  with categorical latents and a block GRU, decoder, two-hot reward and continuation heads),
  the paper's model loss (separate dynamics / representation KL 0.5 / 0.1 with free bits,
  unimix 0.01, continuation weight 1), backward, Adam step;
- **behaviour update**: imagine 15 steps from every posterior state with the actor in the
  loop, REINFORCE actor loss with return normalisation and entropy 3e-4, two-hot critic with
  the slow-critic regulariser, both backward passes and Adam steps, the slow critic's EMA;
- **whole step**: the world-model update, then the behaviour update from its posterior states.

Ours: ``torchrl_rssm.modules`` V3 classes (``RSSMPriorV3``, ``RSSMPosteriorV3``,
``RSSMRolloutV3``, ``DreamerV3MLP``, ``SymExpTwoHot``) with TorchRL's state dicts loaded, and
``torchrl_rssm.objectives`` V3 losses (``from_paper``). Where this package lacks a module
class, TorchRL's is used on our side too (the row's note says so). TorchRL: its classes of the
same names, its losses with the same settings passed explicitly, imagination through
``DreamerEnv.rollout``.

Settings (TorchRL's sota DreamerV3 configs): ``smoke`` (``config.yaml``, Pendulum: 3-dim
observations, 1-dim actions, belief 32, 4 x 4 categoricals, hidden 64, block GRU of 8 blocks,
batch 16 x 16) and ``walker`` (``config_dmc_walker.yaml``: 24-dim observations, 6-dim actions,
belief 512, 32 categoricals of 4 classes, hidden 64, batch 16 x 64). Calls alternate (ours,
TorchRL, ...) and the numbers are medians after warm-up.

``--bf16`` adds the whole step under ``torch.autocast(bfloat16)``: ours against TorchRL in float32, and both under
autocast. ``--floor`` adds each row's arithmetic alone (the same networks and kernels as plain tensor code, no
tensordicts and no loss bookkeeping): a lower bound for any implementation with these networks.

    python benchmarks/bench_dreamerv3.py [--quick] [--json PATH] [--threads N] [--settings smoke walker] [--floor] [--bf16]
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
from tensordict import TensorDict
from tensordict.nn import (
    ProbabilisticTensorDictModule,
    ProbabilisticTensorDictSequential,
    TensorDictSequential,
)
from tensordict.nn import TensorDictModule as Mod

sys.path.insert(0, str(Path(__file__).parent))
import torchrl.modules as trl_modules
from _common import make_parser, parse_args, report, row
from bench_dreamer import alternating_medians
from torchrl.data import Bounded, Composite, Unbounded
from torchrl.envs.model_based.dreamer import DreamerEnv
from torchrl.modules import WorldModelWrapper
from torchrl.modules.distributions.continuous import IndependentNormal
from torchrl.objectives import DreamerV3ActorLoss as TorchRLActorLoss
from torchrl.objectives import DreamerV3ModelLoss as TorchRLModelLoss
from torchrl.objectives import DreamerV3ValueLoss as TorchRLValueLoss
from torchrl.objectives import SoftUpdate, ValueEstimators

import torchrl_rssm.modules as our_modules
from torchrl_rssm.objectives import (
    DreamerV3ActorLoss,
    DreamerV3ModelLoss,
    DreamerV3ValueLoss,
)

SETTINGS = {
    "smoke": {"B": 16, "T": 16, "C": 4, "K": 4, "D": 32, "hidden": 64, "blocks": 8, "obs": 3, "A": 1},
    "walker": {"B": 16, "T": 64, "C": 32, "K": 4, "D": 512, "hidden": 64, "blocks": 8, "obs": 24, "A": 6},
}
QUICK_T = 8
H = 15
BINS = 255
MODULE_NAMES = ("RSSMPriorV3", "RSSMPosteriorV3", "RSSMRolloutV3", "DreamerV3MLP", "SymExpTwoHot")


def classes(ours: bool) -> tuple[dict, list[str]]:
    """The V3 module classes for one side, and the names that side borrows from TorchRL."""
    out, borrowed = {}, []
    for name in MODULE_NAMES:
        cls = getattr(our_modules, name, None) if ours else getattr(trl_modules, name)
        if cls is None:
            cls = getattr(trl_modules, name)
            borrowed.append(name)
        out[name] = cls
    return out, borrowed


class _Actor(torch.nn.Module):
    """TorchRL's DreamerV3 recipe actor: an MLP trunk, tanh mean, bounded std (a Normal policy)."""

    def __init__(self, mlp, S: int, D: int, A: int, hidden: int):
        super().__init__()
        self.trunk = mlp(S + D, None, depth=2, num_cells=hidden)
        self.mean = torch.nn.Linear(hidden, A)
        self.std = torch.nn.Linear(hidden, A)

    def forward(self, state, belief):
        h = self.trunk(belief, state)
        return self.mean(h).tanh(), 0.9 * torch.sigmoid(self.std(h) + 2) + 0.1


class _Continue(torch.nn.Module):
    """The continuation probability from the world model's continuation logit (shared weights)."""

    def __init__(self, logit: torch.nn.Module):
        super().__init__()
        self.logit = logit

    def forward(self, state, belief):
        return torch.sigmoid(self.logit(state, belief))


def build(cfg: dict, ours: bool, weights: dict | None = None, device: str = "cpu"):
    """The world model, actor and value (``nets``), the imagination env, the continuation model, the module
    names borrowed from TorchRL, and the raw networks (for the floor) of one side."""
    cls, borrowed = classes(ours)
    C, K, D, HID, OBS, A = cfg["C"], cfg["K"], cfg["D"], cfg["hidden"], cfg["obs"], cfg["A"]
    S = C * K
    mlp = cls["DreamerV3MLP"]
    prior_net = cls["RSSMPriorV3"](action_shape=(A,), hidden_dim=HID, rnn_hidden_dim=D, num_categoricals=C,
                                   num_classes=K, action_dim=A, recurrent_model="block_gru",
                                   num_blocks=cfg["blocks"], unimix=0.01)
    posterior_net = cls["RSSMPosteriorV3"](hidden_dim=HID, num_categoricals=C, num_classes=K, rnn_hidden_dim=D,
                                           obs_embed_dim=HID, unimix=0.01)
    prior = Mod(prior_net, in_keys=["state", "belief", "action"],
                out_keys=[("next", "prior_logits"), ("next", "state"), ("next", "belief")])
    posterior = Mod(posterior_net, in_keys=[("next", "belief"), ("next", "encoded")],
                    out_keys=[("next", "posterior_logits"), ("next", "state")])
    nxt = [("next", "state"), ("next", "belief")]
    reward_net, cont_logit = mlp(S + D, BINS, depth=2, num_cells=HID), mlp(S + D, 1, depth=2, num_cells=HID)
    two_hot = cls["SymExpTwoHot"](BINS)
    world_model = TensorDictSequential(
        Mod(mlp(OBS, HID, depth=2, num_cells=HID), [("next", "observation")], [("next", "encoded")]),
        cls["RSSMRolloutV3"](prior, posterior, reset_key="is_init"),
        Mod(mlp(S + D, OBS, depth=2, num_cells=HID), nxt, [("next", "reco_observation")]),
        Mod(reward_net, nxt, [("next", "reward_logits")]),
        Mod(two_hot, [("next", "reward_logits")], [("next", "reward")]),
        Mod(cont_logit, nxt, [("next", "continue_pred")]),
    )
    reward = TensorDictSequential(Mod(reward_net, ["state", "belief"], ["reward_logits"]),
                                  Mod(two_hot, ["reward_logits"], ["reward"]))
    env = DreamerEnv(WorldModelWrapper(Mod(prior_net, ["state", "belief", "action"], ["_", "state", "belief"]),
                                       reward), prior_shape=(S,), belief_shape=(D,), device=device)
    env.observation_spec = Composite(state=Unbounded(S), belief=Unbounded(D), device=device)
    env.state_spec = env.observation_spec.clone()
    env.action_spec = Bounded(-1, 1, (A,), device=device)
    env.reward_spec = Unbounded((1,), device=device)
    actor = ProbabilisticTensorDictSequential(
        Mod(_Actor(mlp, S, D, A, HID), ["state", "belief"], ["loc", "scale"]),
        ProbabilisticTensorDictModule(in_keys=["loc", "scale"], out_keys=["action"],
                                      distribution_class=IndependentNormal, return_log_prob=True))
    value = TensorDictSequential(Mod(mlp(S + D, BINS, depth=2, num_cells=HID), ["state", "belief"],
                                     ["state_value_logits"]),
                                 Mod(cls["SymExpTwoHot"](BINS), ["state_value_logits"], ["state_value"]))
    continuation = Mod(_Continue(cont_logit), ["state", "belief"], ["continuation"])
    nets = {"world_model": world_model, "actor": actor, "value": value}
    if weights is not None:  # TorchRL's weights on our modules (their state dicts load)
        for name, net in nets.items():
            net.load_state_dict(weights[name])

    # the raw networks, for the arithmetic-only floor
    raw = {"prior": prior_net, "actor": actor[0].module, "reward": reward_net, "value": value[0].module,
           "continuation": cont_logit}
    return nets, env, continuation, borrowed, raw


def updates(nets: dict, env, continuation, ours: bool):
    """(world-model update, behaviour update) of one side: losses, backward passes, Adam steps, slow critic EMA."""
    wm, actor, value = nets["world_model"], nets["actor"], nets["value"]
    if ours:
        model_loss = DreamerV3ModelLoss.from_paper(wm)
        actor_loss = DreamerV3ActorLoss.from_paper(actor, value, env, continuation_model=continuation,
                                                   use_reinforce=True)
        value_loss = DreamerV3ValueLoss.from_paper(value, actor_loss=actor_loss)
    else:  # the same settings, passed explicitly (TorchRL's defaults are not the paper's)
        model_loss = TorchRLModelLoss(wm, kl_mode="separate", lambda_dynamic=0.5, lambda_representation=0.1,
                                      unimix=0.01, lambda_continue=1.0, continue_target_scale=1 - 1 / 333)
        actor_loss = TorchRLActorLoss(actor, value, env, continuation_model=continuation, imagination_horizon=H,
                                      use_reinforce=True)
        actor_loss.make_value_estimator(ValueEstimators.TDLambda, gamma=1.0, lmbda=0.95)
        value_loss = TorchRLValueLoss(value, value_loss="two_hot", actor_loss=actor_loss,
                                      slow_critic_regularization=1.0)
    model_loss.set_keys(pixels="observation", reco_pixels="reco_observation")
    slow = SoftUpdate(value_loss, tau=0.02)
    model_opt = torch.optim.Adam(wm.parameters(), lr=1e-4)
    actor_opt = torch.optim.Adam(actor.parameters(), lr=3e-5)
    value_opt = torch.optim.Adam(value_loss.value_model_params.values(True, True), lr=3e-5)

    def model_update(batch: TensorDict) -> TensorDict:
        losses, out = model_loss(batch)
        model_opt.zero_grad(set_to_none=True)
        sum(v for k, v in losses.items() if k.startswith("loss_")).sum().backward()
        model_opt.step()
        return out

    def behaviour_update(starts: TensorDict) -> None:
        losses, fake = actor_loss(starts)
        actor_opt.zero_grad(set_to_none=True)
        losses["loss_actor"].backward()
        actor_opt.step()
        losses, _ = value_loss(fake.detach())
        value_opt.zero_grad(set_to_none=True)
        losses["loss_value"].backward()
        value_opt.step()
        slow.step()

    return model_update, behaviour_update


def floor_behaviour_update(raw: dict, bins: torch.Tensor):
    """The behaviour update's arithmetic alone, as plain tensor code: the same networks, the same
    imagination, returns, percentile scale, REINFORCE and two-hot critic losses with the slow critic,
    backward passes, Adam steps and EMA, and no loss bookkeeping (a lower bound for these kernels)."""
    from torchrl_rssm.objectives.dreamer_v3 import two_hot_cross_entropy, two_hot_decode

    prior, actor, reward_net, value_net, cont_net = (raw[k] for k in ("prior", "actor", "reward", "value",
                                                                       "continuation"))
    slow_net = copy.deepcopy(value_net).requires_grad_(False)
    actor_opt = torch.optim.Adam(actor.parameters(), lr=3e-5)
    value_opt = torch.optim.Adam(value_net.parameters(), lr=3e-5)
    low = high = torch.zeros((), device=bins.device)

    def update(starts: TensorDict) -> None:
        nonlocal low, high
        s, b = starts["state"], starts["belief"]
        with torch.no_grad():
            states, beliefs, actions = [s], [b], []
            for _ in range(H):
                loc, scale = actor(s, b)
                a = loc + scale * torch.randn_like(loc)
                _, s, b = prior(s, b, a)
                states.append(s), beliefs.append(b), actions.append(a)
            st, bl, act = torch.stack(states, 1), torch.stack(beliefs, 1), torch.stack(actions, 1)
            r = two_hot_decode(reward_net(st[:, 1:], bl[:, 1:]), bins).unsqueeze(-1)
            v = two_hot_decode(value_net(st, bl), bins).unsqueeze(-1)
            c = torch.sigmoid(cont_net(st, bl))
            ret, out = v[:, -1], []
            for t in range(H - 1, -1, -1):
                ret = r[:, t] + c[:, t + 1] * (0.05 * v[:, t + 1] + 0.95 * ret)
                out.append(ret)
            ret = torch.stack(out[::-1], 1)
            w = torch.cat([c[:, :1], c[:, 1:-1]], 1).cumprod(1)
            q = torch.quantile(ret.flatten(), torch.tensor([0.05, 0.95], device=ret.device))
            low, high = low + 0.01 * (q[0] - low), high + 0.01 * (q[1] - high)
            adv = (ret - v[:, :-1]) / (high - low).clamp_min(1.0)
        root_s, root_b = st[:, :-1], bl[:, :-1]
        dist = torch.distributions.Independent(torch.distributions.Normal(*actor(root_s, root_b)), 1)
        loss = -(w * dist.log_prob(act).unsqueeze(-1) * adv).mean() - 3e-4 * (w * dist.entropy().unsqueeze(-1)).mean()
        actor_opt.zero_grad(set_to_none=True)
        loss.backward()
        actor_opt.step()
        logits = value_net(root_s, root_b)
        with torch.no_grad():
            slow = two_hot_decode(slow_net(root_s, root_b), bins)
        w = w.squeeze(-1)
        loss = (w * (two_hot_cross_entropy(logits, ret.squeeze(-1), bins)
                     + two_hot_cross_entropy(logits, slow, bins))).mean()
        value_opt.zero_grad(set_to_none=True)
        loss.backward()
        value_opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(list(slow_net.parameters()), list(value_net.parameters()), 0.02)

    return update


def floor_model_update(world_model, bins: torch.Tensor):
    """The world-model update's arithmetic alone, as plain tensor code on the same modules: encoder, the
    RSSM filter (``RSSMRolloutV3.observe``, already a tensor loop), decoder and heads, the paper's losses
    (symlog reconstruction, two-hot reward, continuation, KL 0.5 / 0.1 with free bits), backward, Adam. No
    tensordicts and no loss bookkeeping: a lower bound for these kernels. Returns the posterior latents."""
    from torchrl_rssm.modules.two_hot import symlog, two_hot_cross_entropy
    from torchrl_rssm.objectives.dreamer_v3 import categorical_kl_terms

    encoder, rollout, decoder, reward_net = (world_model[0].module, world_model[1], world_model[2].module,
                                             world_model[3].module)
    cont_net = world_model[5].module
    optimizer = torch.optim.Adam(world_model.parameters(), lr=1e-4)

    def update(batch: TensorDict) -> TensorDict:
        obs = batch.get(("next", "observation"))
        out = rollout.observe(encoder(obs), batch.get("action"), is_init=batch.get("is_init"))
        state, belief = out["state"], out["belief"]
        reco = (symlog(decoder(state, belief)) - symlog(obs)).square().sum(-1).mean()
        reward = two_hot_cross_entropy(reward_net(state, belief), batch.get(("next", "reward")), bins).mean()
        alive = (~batch.get(("next", "terminated"))).to(obs.dtype).squeeze(-1)
        cont = torch.nn.functional.binary_cross_entropy_with_logits(cont_net(state, belief).squeeze(-1), alive)
        dyn, rep = categorical_kl_terms(out["posterior_logits"], out["prior_logits"], free_nats=1.0, unimix=0.01)
        optimizer.zero_grad(set_to_none=True)
        (reco + reward + cont + 0.5 * dyn + 0.1 * rep).backward()
        optimizer.step()
        return TensorDict({("next", "state"): state, ("next", "belief"): belief}, state.shape[:2])

    return update


def starts_of(out: TensorDict) -> TensorDict:
    """Every posterior state of the batch, detached and flattened: the imagination starts."""
    state, belief = out.get(("next", "state")).detach(), out.get(("next", "belief")).detach()
    return TensorDict({"state": state.reshape(-1, state.shape[-1]), "belief": belief.reshape(-1, belief.shape[-1])},
                      [state.shape[0] * state.shape[1]])


def bench_setting(name: str, cfg: dict, args, rows: list[dict]) -> None:
    dev = args.device
    torch.manual_seed(0)
    B, T = cfg["B"], (QUICK_T if args.quick else cfg["T"])
    S, D, A = cfg["C"] * cfg["K"], cfg["D"], cfg["A"]
    theirs, trl_env, trl_cont, _, _ = build(cfg, ours=False, device=dev)
    weights = {k: copy.deepcopy(v.state_dict()) for k, v in theirs.items()}
    ours_nets, our_env, our_cont, borrowed, raw = build(cfg, ours=True, weights=weights, device=dev)
    for nets in (theirs, ours_nets):
        for net in nets.values():
            net.to(dev)
    batch = TensorDict({
        "state": torch.zeros(B, T, S), "belief": torch.zeros(B, T, D), "action": torch.rand(B, T, A) * 2 - 1,
        "is_init": torch.zeros(B, T, 1, dtype=torch.bool).index_fill_(1, torch.tensor([0]), True),
        ("next", "observation"): torch.randn(B, T, cfg["obs"]), ("next", "reward"): torch.randn(B, T, 1),
        ("next", "done"): torch.zeros(B, T, 1, dtype=torch.bool),
        ("next", "terminated"): torch.zeros(B, T, 1, dtype=torch.bool),
    }, [B, T], device=dev)
    our_model, our_behaviour = updates(ours_nets, our_env, our_cont.to(dev), ours=True)
    trl_model, trl_behaviour = updates(theirs, trl_env, trl_cont.to(dev), ours=False)
    starts = starts_of(trl_model(batch.copy()))  # (one TorchRL update, untimed)
    suites = {
        "world-model update": ({"ours": lambda: our_model(batch.copy()), "torchrl": lambda: trl_model(batch.copy())},
                               "observe + model loss (paper settings) + backward + Adam"),
        "behaviour update": ({"ours": lambda: our_behaviour(starts), "torchrl": lambda: trl_behaviour(starts)},
                             (f"imagine H={H} from {B * T} posterior states, REINFORCE actor + two-hot critic with "
                              "slow critic, backward passes, Adam steps, EMA")),
        "whole step": ({"ours": lambda: our_behaviour(starts_of(our_model(batch.copy()))),
                        "torchrl": lambda: trl_behaviour(starts_of(trl_model(batch.copy())))},
                       "the world-model update, then the behaviour update from its posterior states"),
    }
    config = {"setting": name, "batch": B, "seq": T, "starts": B * T, "horizon": H, "categoricals": cfg["C"],
              "classes": cfg["K"], "belief": D, "hidden": cfg["hidden"], "gru_blocks": cfg["blocks"],
              "obs": cfg["obs"], "action": A, "threads": torch.get_num_threads()}
    borrowed_note = (f"; our side uses TorchRL's {', '.join(borrowed)} (not in torchrl_rssm.modules)"
                     if borrowed else "; same weights (TorchRL's state dicts loaded into ours)")
    if args.floor:
        bins = DreamerV3ValueLoss.from_paper(ours_nets["value"]).value_bins
        floor = floor_behaviour_update(raw, bins)
        model_floor = floor_model_update(ours_nets["world_model"], bins)
        suites["behaviour update"][0]["floor"] = lambda: floor(starts)
        suites["world-model update"][0]["floor"] = lambda: model_floor(batch.copy())
        suites["whole step"][0]["floor"] = lambda: floor(starts_of(model_floor(batch.copy())))
    if args.bf16:  # the whole step under CPU/GPU bf16 autocast: ours, and TorchRL's where it runs under it
        def autocast(fn):
            def run():
                with torch.autocast(torch.device(dev).type, dtype=torch.bfloat16):
                    return fn()
            return run

        whole = suites["whole step"][0]
        whole["ours_bf16"] = autocast(whole["ours"])
        try:
            autocast(whole["torchrl"])()
            whole["torchrl_bf16"] = autocast(whole["torchrl"])
        except Exception as err:  # noqa: BLE001 -- reported in the row's note
            print(f"TorchRL's whole step fails under bf16 autocast: {type(err).__name__}: {err}", file=sys.stderr)
    repeats = args.repeats or (3 if args.quick else 7)
    for label, (fns, what) in suites.items():
        ms, cpu = alternating_medians(fns, 1 if args.quick else 2, repeats, dev)
        rows.append(row(f"dreamerv3 {label} {name} ({B}x{T})", ms["ours"], ms["torchrl"], dev, config,
                        what + borrowed_note + f"; process CPU ms: ours {cpu['ours']:.0f}, "
                        f"TorchRL {cpu['torchrl']:.0f}"))
        if "ours_bf16" in ms:
            rows.append(row(f"dreamerv3 {label} {name} ({B}x{T}), ours bf16 autocast vs TorchRL fp32", ms["ours_bf16"],
                            ms["torchrl"], dev, config, what + "; ours under torch.autocast(bfloat16) "
                            "(two-hot, KL and return arithmetic in float32), TorchRL in float32"))
        if "torchrl_bf16" in ms:
            rows.append(row(f"dreamerv3 {label} {name} ({B}x{T}), both under bf16 autocast", ms["ours_bf16"],
                            ms["torchrl_bf16"], dev, config, what + "; both under torch.autocast(bfloat16)"))
        if "floor" in ms:
            rows.append(row(f"dreamerv3 {label} {name} ({B}x{T}), arithmetic only", ms["floor"], ms["torchrl"], dev,
                            config, "a lower bound, not a loss: the same networks and arithmetic (" + what + ") as "
                            f"plain tensor code; ours is {ms['ours'] / ms['floor']:.2f}x this (CPU time: "
                            f"{cpu['ours'] / cpu['floor']:.2f}x; TorchRL CPU {cpu['torchrl'] / cpu['floor']:.2f}x)"))


def main() -> None:
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--floor", action="store_true", help="add each row's arithmetic-only floor")
    parser.add_argument("--bf16", action="store_true", help="add whole-step rows under bf16 autocast")
    args = parse_args(__doc__.splitlines()[0], parser)
    if args.threads is None and not str(args.device).startswith("cuda"):
        torch.set_num_threads(min(2, torch.get_num_threads()))  # the project's reference CPU: 2 threads
    rows: list[dict] = []
    for name in args.settings:
        bench_setting(name, SETTINGS[name], args, rows)
    report(rows, args.json)


if __name__ == "__main__":
    main()
