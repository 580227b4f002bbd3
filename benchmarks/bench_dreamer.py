"""Milliseconds per Dreamer behaviour update: our actor and value losses against TorchRL's, same networks.

One update = imagination from N start latents over H steps with the actor in the loop,
lambda-returns, the actor loss's backward pass and Adam step (gradient-norm clip 100), the
value loss's backward pass and Adam step. Both sides use the same world model, actor and
value networks (this package's modules, the same weights, updated by both in turn):

- TorchRL: ``torchrl.objectives.DreamerActorLoss`` + ``DreamerValueLoss`` on a ``DreamerEnv``
  built as TorchRL's Dreamer example builds it around our prior and reward head
  (:func:`torchrl_rssm.interop.to_dreamer_env`), ``make_value_estimator(gamma=0.99,
  lmbda=0.95)``.
- ours: ``torchrl_rssm.objectives.DreamerActorLoss`` + ``DreamerValueLoss`` on the world model.

Settings (N = 2500 start states, the paper's 50 x 50 batch; H = 15; 6-dim actions):

- ``paper``: stoch 30, belief 200, RSSM hidden 200, actor 4 x 400, value 3 x 400, reward 2 x 400.
- ``small``: stoch 8, belief 32, RSSM hidden 32, 32-unit heads (same depths), where the fixed
  cost per imagined step dominates.

``--floor`` adds, per setting, the arithmetic alone: the same matmuls and activations
(imagination, heads per time step, lambda-returns, both backward passes and optimiser
steps) written as plain tensor code with no loss bookkeeping, a lower bound for any
implementation with these kernels (in fp32). Unless ``--no-bf16``, two more rows per setting:
ours with ``autocast_dtype=torch.bfloat16`` (mixed precision, as the official Dreamer code
trains with fp16) against TorchRL in fp32 (its losses have no precision option), and
against TorchRL's update run inside ``torch.autocast("cpu", torch.bfloat16)`` (apples to apples).
``--compile`` adds ours with ``compile=`` (torch.compile, inductor), in fp32 and with bf16
autocast, against TorchRL in fp32; the compilation (first call) is reported, not timed. ``--whole-step`` adds a whole Dreamer training step (the
world-model loss forward and backward on a 50 x 50 batch of vector observations, then the
behaviour update from its posterior states); TorchRL's column uses its ``DreamerModelLoss``
on the same world model. Calls alternate (ours, TorchRL, ...) and the numbers are medians
after warm-up.

    python benchmarks/bench_dreamer.py [--quick] [--json PATH] [--threads N] [--floor] [--no-bf16] [--compile] [--whole-step]
"""
from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tensordict import TensorDict
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).parent))
from _common import make_parser, parse_args, report, row  # noqa: E402

from torchrl.data import Bounded, Composite, Unbounded  # noqa: E402
from torchrl.objectives import DreamerActorLoss as TorchRLActorLoss  # noqa: E402
from torchrl.objectives import DreamerValueLoss as TorchRLValueLoss  # noqa: E402

from torchrl_rssm.interop import to_dreamer_env  # noqa: E402
from torchrl_rssm.modules import RewardModel, make_dreamer_actor, make_value_model, make_world_model  # noqa: E402
from torchrl_rssm.objectives import DreamerActorLoss, DreamerValueLoss  # noqa: E402

SETTINGS = {
    "paper": dict(N=2500, H=15, S=30, D=200, hidden=200, heads=400, A=6),
    "small": dict(N=2500, H=15, S=8, D=32, hidden=32, heads=32, A=6),
}
QUICK_N = 250
OBS = 5


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def alternating_medians(fns: dict[str, Callable[[], object]], warmup: int,
                        repeats: int, device: str) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall-clock and process-CPU ms of each function, calls interleaved so that background
    load hits all alike. (On a shared CPU the CPU time is the steadier of the two.)"""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            _sync(device)
            wall[name].append((time.perf_counter() - start) * 1e3)
            cpu[name].append((time.process_time() - start_cpu) * 1e3)
    return ({name: statistics.median(t) for name, t in wall.items()},
            {name: statistics.median(t) for name, t in cpu.items()})


def build(cfg: dict, device: str):
    S, D, A = cfg["S"], cfg["D"], cfg["A"]
    spec = Bounded(-1.0, 1.0, (A,), device=device)
    wm = make_world_model(Composite(observation=Unbounded((OBS,))), spec, state_dim=S, belief_dim=D,
                          hidden_dim=cfg["hidden"], device=device)
    wm[1].module = RewardModel(S, D, cfg["heads"], device=device)  # the paper's 2 x 400 reward head
    actor = make_dreamer_actor(spec, S, D, num_cells=cfg["heads"], device=device)
    value = make_value_model(S, D, hidden_dim=cfg["heads"], device=device)
    return wm, spec, actor, value


def updater(actor_loss, value_loss, actor, value) -> Callable[[TensorDict], None]:
    """One behaviour update with either package's losses (same optimiser settings)."""
    actor_opt = torch.optim.Adam(actor.parameters(), lr=8e-5)
    value_opt = torch.optim.Adam(value.parameters(), lr=8e-5)

    def update(td: TensorDict) -> None:
        loss_a, fake = actor_loss(td)
        actor_opt.zero_grad(set_to_none=True)
        loss_a["loss_actor"].backward()
        torch.nn.utils.clip_grad_norm_(actor.parameters(), 100.0)
        actor_opt.step()
        loss_v, _ = value_loss(fake)
        value_opt.zero_grad(set_to_none=True)
        loss_v["loss_value"].backward()
        torch.nn.utils.clip_grad_norm_(value.parameters(), 100.0)
        value_opt.step()

    return update


def _linears(seq) -> list:
    return [m for m in seq if isinstance(m, torch.nn.Linear)]


def arithmetic_floor(wm, actor, value, H: int, gamma=0.99, lmbda=0.95) -> Callable[[TensorDict], None]:
    """The update's matmuls and activations as plain tensor code, no bookkeeping (a lower bound).

    Frozen weights are detached once per call; the actor's input is detached; heads run per
    time step after the loop; returns by one [H, H] matmul; the same two Adam steps and clips.
    """
    prior = wm.rollout.prior
    S = prior.state_dim
    actor_net = actor.module[0].module
    reward_net, value_net = wm.reward_model.net, value.module.net
    actor_opt = torch.optim.Adam(actor.parameters(), lr=8e-5)
    value_opt = torch.optim.Adam(value.parameters(), lr=8e-5)
    std_shift, min_std = actor_net.std_shift, actor_net.std_min_val
    t = torch.arange(H, dtype=torch.float32)
    decay = gamma * lmbda
    weights = torch.where(t[None] >= t[:, None], decay ** (t[None] - t[:, None]).clamp_min(0), torch.zeros(()))
    tail = (decay ** (H - t))[:, None]
    disc = (gamma ** t)[:, None]

    def mlp(x, layers):
        for lin in layers[:-1]:
            x = F.elu(F.linear(x, *lin))
        return F.linear(x, *layers[-1])

    def update(td: TensorDict) -> None:
        s, h = td["state"], td["belief"]
        fz = lambda ls: [(m.weight.detach(), m.bias.detach()) for m in ls]  # noqa: E731
        first = prior.action_state_projector[0]
        w_s, w_a = first.weight.detach().split([S, first.in_features - S], 1)
        b_in = first.bias.detach()
        gru = prior.rnn
        w_ih, w_hh, b_ih, b_hh = (p.detach() for p in (gru.weight_ih, gru.weight_hh, gru.bias_ih, gru.bias_hh))
        head = fz(_linears(prior.rnn_to_prior_projector))
        act_layers = [(m.weight, m.bias) for m in _linears(actor_net.backbone)]
        states, beliefs = [], []
        for _ in range(H):
            out = mlp(torch.cat([s.detach(), h.detach()], -1), act_layers)
            mu, raw = out.chunk(2, -1)
            loc = 5 * torch.tanh(mu / 5)
            scale = F.softplus(raw + std_shift) + min_std
            a = torch.tanh(loc + scale * torch.randn_like(loc))
            x = F.elu(F.linear(s, w_s) + F.linear(a, w_a, b_in))
            h = torch._VF.gru_cell(x, h, w_ih, w_hh, b_ih, b_hh)
            mean, std = mlp(h, head).chunk(2, -1)
            s = mean + (F.softplus(std) + prior.scale_lb) * torch.randn_like(mean)
            states.append(s), beliefs.append(h)
        # heads per time step (cache-sized, as ours), stacked to [N, H, 1]
        feats = [torch.cat([st, bt], -1) for st, bt in zip(states, beliefs)]
        rw, vw = fz(_linears(reward_net)), fz(_linears(value_net))
        r = torch.stack([mlp(f, rw) for f in feats], 1)
        v = torch.stack([mlp(f, vw) for f in feats], 1)
        ret = weights @ (r + gamma * (1 - lmbda) * v) + tail * v[:, -1:]
        loss_a = -(ret * disc).sum((-2, -1)).mean()
        actor_opt.zero_grad(set_to_none=True)
        loss_a.backward()
        torch.nn.utils.clip_grad_norm_(actor.parameters(), 100.0)
        actor_opt.step()
        roots = [torch.cat([td["state"], td["belief"]], -1)] + [f.detach() for f in feats[:-1]]
        vl = [(m.weight, m.bias) for m in _linears(value_net)]
        v_pred = torch.stack([mlp(f, vl) for f in roots], 1)
        loss_v = (disc * (v_pred - ret.detach()) ** 2).sum((-2, -1)).mean()
        value_opt.zero_grad(set_to_none=True)
        loss_v.backward()
        torch.nn.utils.clip_grad_norm_(value.parameters(), 100.0)
        value_opt.step()

    return update


def bench_whole_step(name: str, cfg: dict, args, rows: list[dict]) -> None:
    """World-model loss fwd/bwd + Adam on a [B, T] batch, then the behaviour update from its latents."""
    from torchrl.objectives import DreamerModelLoss

    from torchrl_rssm.objectives import RSSMLoss

    dev = args.device
    torch.manual_seed(0)
    B, T = (10, 25) if args.quick else (50, 50)
    S, D, A, H = cfg["S"], cfg["D"], cfg["A"], cfg["H"]
    spec = Bounded(-1.0, 1.0, (A,), device=dev)
    # reward_key="reward": TorchRL's DreamerModelLoss expects the model's prediction there
    wm = make_world_model(Composite(observation=Unbounded((OBS,))), spec, state_dim=S, belief_dim=D,
                          hidden_dim=cfg["hidden"], reward_key="reward", device=dev)
    wm[1].module = RewardModel(S, D, cfg["heads"], device=dev)
    actor = make_dreamer_actor(spec, S, D, num_cells=cfg["heads"], device=dev)
    value = make_value_model(S, D, hidden_dim=cfg["heads"], device=dev)
    batch = TensorDict({"action": torch.rand(B, T, A, device=dev) * 2 - 1,
                        "is_init": torch.zeros(B, T, 1, dtype=torch.bool, device=dev),
                        ("next", "observation"): torch.randn(B, T, OBS, device=dev),
                        ("next", "reward"): torch.randn(B, T, 1, device=dev)}, [B, T])
    model_opt = torch.optim.Adam(wm.parameters(), lr=6e-4)

    def model_step(loss_td) -> None:
        model_opt.zero_grad(set_to_none=True)
        sum(v for k, v in loss_td.items() if k.startswith("loss_")).backward()
        torch.nn.utils.clip_grad_norm_(wm.parameters(), 100.0)
        model_opt.step()

    ours_model = RSSMLoss(wm)
    ours_behaviour = updater(DreamerActorLoss(actor, value, wm, imagination_horizon=H), DreamerValueLoss(value),
                             actor, value)

    def ours() -> None:
        model_step(ours_model(batch))
        # RSSMLoss returns losses only: the actor loss recomputes the posterior latents (no grad)
        ours_behaviour(batch)

    trl_model = DreamerModelLoss(wm)
    trl_model.set_keys(pixels="observation", reco_pixels="reco_observation")
    trl_actor_loss = TorchRLActorLoss(actor, value, to_dreamer_env(wm, spec), imagination_horizon=H)
    trl_actor_loss.make_value_estimator(gamma=0.99, lmbda=0.95)
    trl_behaviour = updater(trl_actor_loss, TorchRLValueLoss(value), actor, value)

    def torchrl() -> None:
        loss_td, out = trl_model(batch.copy())
        model_step(loss_td)
        trl_behaviour(TensorDict({"state": out.get(("next", "state")), "belief": out.get(("next", "belief"))},
                                 [B, T]).reshape(-1))

    slow = name == "paper" and not args.quick
    ms, cpu = alternating_medians({"ours": ours, "torchrl": torchrl}, 1, args.repeats or (2 if slow else 5), dev)
    config = dict(setting=name, batch=B, seq=T, starts=B * T, horizon=H, stoch=S, belief=D,
                  rssm_hidden=cfg["hidden"], heads=cfg["heads"], obs=OBS, threads=torch.get_num_threads())
    rows.append(row(f"dreamer training step {name} ({B}x{T} batch, H={H})", ms["ours"], ms["torchrl"], dev, config,
                    "world-model loss fwd/bwd + Adam, then actor + value updates from the batch's posterior "
                    "latents; ours: RSSMLoss + our Dreamer losses (the actor loss recomputes the latents "
                    "without grad: RSSMLoss returns losses only); TorchRL: DreamerModelLoss (its vector-"
                    "observation reduction differs, same work) + its Dreamer losses on DreamerEnv; same networks"
                    f"; process CPU ms: ours {cpu['ours']:.0f}, TorchRL {cpu['torchrl']:.0f}"))


def bench_setting(name: str, cfg: dict, args, rows: list[dict]) -> None:
    dev = args.device
    torch.manual_seed(0)
    N = QUICK_N if args.quick else cfg["N"]
    H, S, D = cfg["H"], cfg["S"], cfg["D"]
    wm, spec, actor, value = build(cfg, dev)
    ours_update = updater(DreamerActorLoss(actor, value, wm, imagination_horizon=H), DreamerValueLoss(value),
                          actor, value)
    trl_actor_loss = TorchRLActorLoss(actor, value, to_dreamer_env(wm, spec), imagination_horizon=H)
    trl_actor_loss.make_value_estimator(gamma=0.99, lmbda=0.95)
    trl_update = updater(trl_actor_loss, TorchRLValueLoss(value), actor, value)
    td = TensorDict({"state": torch.randn(N, S, device=dev), "belief": torch.randn(N, D, device=dev)}, [N])
    fns = {"ours": lambda: ours_update(td), "torchrl": lambda: trl_update(td)}
    if args.bf16:
        bf16 = torch.bfloat16
        ours_bf16 = updater(DreamerActorLoss(actor, value, wm, imagination_horizon=H, autocast_dtype=bf16),
                            DreamerValueLoss(value, autocast_dtype=bf16), actor, value)
        fns["ours_bf16"] = lambda: ours_bf16(td)

        def torchrl_bf16() -> None:  # TorchRL's losses have no precision option: the caller's autocast
            with torch.autocast(torch.device(dev).type, dtype=bf16):
                trl_update(td)

        fns["torchrl_bf16"] = torchrl_bf16
    compile_s: dict[str, float] = {}
    if args.compile:
        opts = {"dynamic": False}
        variants = {"ours_compiled": None, **({"ours_compiled_bf16": torch.bfloat16} if args.bf16 else {})}
        for key, dtype in variants.items():
            fn = updater(DreamerActorLoss(actor, value, wm, imagination_horizon=H, autocast_dtype=dtype, compile=opts),
                         DreamerValueLoss(value, autocast_dtype=dtype, compile=opts), actor, value)
            start = time.perf_counter()
            fn(td)  # compiles (excluded from the medians; reported)
            compile_s[key] = time.perf_counter() - start
            fns[key] = (lambda f: lambda: f(td))(fn)
    if args.floor:
        floor = arithmetic_floor(wm, actor, value, H)
        fns["floor"] = lambda: floor(td)
    slow = name == "paper" and not args.quick
    repeats = args.repeats or (3 if slow else (5 if args.quick else 7))
    ms, cpu = alternating_medians(fns, 1 if slow else 2, repeats, dev)
    config = dict(setting=name, starts=N, horizon=H, stoch=S, belief=D, rssm_hidden=cfg["hidden"],
                  heads=cfg["heads"], action=cfg["A"], threads=torch.get_num_threads())
    base = ("same networks and weights; TorchRL: DreamerActorLoss + DreamerValueLoss on DreamerEnv "
            "(env.rollout, a tensordict per step); both with two Adam steps and grad-norm clips")
    label = f"dreamer update {name} ({N} starts x H={H})"
    cpu_note = f"; process CPU ms: ours {cpu['ours']:.0f}, TorchRL {cpu['torchrl']:.0f}"
    rows.append(row(label, ms["ours"], ms["torchrl"], dev, config, base + cpu_note))
    if "ours_bf16" in ms:
        rows.append(row(f"{label}, ours bf16 autocast vs TorchRL fp32", ms["ours_bf16"], ms["torchrl"], dev, config,
                        "ours with autocast_dtype=torch.bfloat16 (matmuls in bf16 under torch.autocast; belief, "
                        "returns, losses, parameters and Adam state fp32) against TorchRL's losses in plain fp32 "
                        "(they have no precision option); process CPU ms: ours "
                        f"{cpu['ours_bf16']:.0f}, TorchRL {cpu['torchrl']:.0f}"))
        rows.append(row(f"{label}, both under bf16 autocast", ms["ours_bf16"], ms["torchrl_bf16"], dev, config,
                        "apples to apples: ours with autocast_dtype=torch.bfloat16, TorchRL's update run inside "
                        "torch.autocast(bfloat16) by the caller; process CPU ms: ours "
                        f"{cpu['ours_bf16']:.0f}, TorchRL {cpu['torchrl_bf16']:.0f}"))
    for key, what in (("ours_compiled", "fp32"), ("ours_compiled_bf16", "bf16 autocast")):
        if key in ms:
            rows.append(row(f"{label}, ours compiled {what} vs TorchRL fp32", ms[key], ms["torchrl"], dev, config,
                            "ours with compile={'dynamic': False} (inductor)"
                            + (", autocast_dtype=bf16" if "bf16" in key else "")
                            + f"; first call (compilation) {compile_s[key]:.0f} s, not counted; process CPU ms: ours "
                            f"{cpu[key]:.0f}, TorchRL {cpu['torchrl']:.0f}"))
    if "floor" in ms:
        rows.append(row(f"{label}, arithmetic only", ms["floor"], ms["torchrl"], dev, config,
                        "a lower bound, not a loss: the same matmuls/activations, returns, backward passes and "
                        f"optimiser steps as plain tensor code; ours is {ms['ours'] / ms['floor']:.2f}x this "
                        f"(CPU time: {cpu['ours'] / cpu['floor']:.2f}x; floor CPU ms {cpu['floor']:.0f})"))


def main() -> None:
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--floor", action="store_true", help="add the arithmetic-only rows (a lower bound)")
    parser.add_argument("--no-bf16", dest="bf16", action="store_false",
                        help="drop the bfloat16-autocast rows (ours with autocast_dtype=bf16; TorchRL under autocast)")
    parser.add_argument("--compile", action="store_true",
                        help="add rows with our losses compiled (torch.compile, inductor; compilation takes minutes)")
    parser.add_argument("--whole-step", action="store_true", help="add a whole training step row (model + behaviour)")
    args = parse_args(__doc__.splitlines()[0], parser)
    if args.threads is None and not str(args.device).startswith("cuda"):
        torch.set_num_threads(min(2, torch.get_num_threads()))  # the project's reference CPU: 2 threads
    rows: list[dict] = []
    for name in args.settings:
        bench_setting(name, SETTINGS[name], args, rows)
    if args.whole_step:
        for name in args.settings:
            bench_whole_step(name, SETTINGS[name], args, rows)
    report(rows, args.json)


if __name__ == "__main__":
    main()
