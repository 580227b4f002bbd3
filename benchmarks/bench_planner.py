"""Milliseconds per planned action: our CEMPlanner against TorchRL's, same networks, one process.

Both planners plan with the same RSSM prior and reward head (this package's modules,
the same weights), from the same latents, under ``torch.no_grad()`` (what a collector
does):

- TorchRL: ``torchrl.modules.planners.CEMPlanner`` on a ``DreamerEnv`` built as
  TorchRL's Dreamer example builds it (``WorldModelWrapper(SafeSequential(SafeModule(prior,
  in_keys=["state", "belief", "action"], out_keys=["_", "_", "state", "belief"])), reward)``).
- ours: ``torchrl_rssm.planners.CEMPlanner`` on the world model's tensors, and the same
  class given TorchRL's ``DreamerEnv`` (the drop-in path: it finds the networks inside).

Settings, each for 1 and 8 environments (6-dim actions):

- ``planet``: PlaNet's planner and model (N=1000 candidates, H=12, I=10 iterations, K=100,
  stoch 30, belief 200, hidden 200). Compute-bound: most of the time is the same matmuls
  on both sides, so the ratio measures what is left around them.
- ``small``: N=100, H=12, I=10, K=10, stoch 8, belief 32, hidden 32, where the fixed cost
  per imagined step (TorchRL: ``env.rollout``'s step machinery and tensordict ops) dominates.
- ``preset``: the recipe's CPU ``quick`` preset (N=256, H=12, I=6, K=25, stoch 16, belief 64,
  hidden 64), between the two.

Calls of the compared planners alternate, so that load from other processes hits both
alike; the numbers are medians after warm-up. ``--compile`` adds ours with
``torch.compile``; on CUDA a row with the search captured in a CUDA graph is added.
``--floor`` adds, per setting, a lower bound for any planner that evaluates this model:
the I rollouts of N candidates (and their noise) alone, without the CEM bookkeeping.
Its ratio against TorchRL is the most such a planner could reach on the machine.

    python benchmarks/bench_planner.py [--quick] [--json PATH] [--device cuda] [--threads 2] [--compile] [--floor]
"""
from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tensordict import TensorDict

sys.path.insert(0, str(Path(__file__).parent))
from _common import make_parser, parse_args, report, row  # noqa: E402

from torchrl.data import Bounded, Composite, Unbounded  # noqa: E402
from torchrl.envs.model_based.dreamer import DreamerEnv  # noqa: E402
from torchrl.modules import SafeModule, SafeSequential, WorldModelWrapper  # noqa: E402
from torchrl.modules.planners import CEMPlanner as TorchRLCEMPlanner  # noqa: E402

from torchrl_rssm.modules import make_world_model  # noqa: E402
from torchrl_rssm.planners import CEMPlanner  # noqa: E402

SETTINGS = {
    "planet": dict(N=1000, H=12, I=10, K=100, S=30, D=200, hidden=200, A=6),
    "small": dict(N=100, H=12, I=10, K=10, S=8, D=32, hidden=32, A=6),
    "preset": dict(N=256, H=12, I=6, K=25, S=16, D=64, hidden=64, A=6),
}


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def alternating_medians(fns: dict[str, Callable[[], object]], warmup: int, repeats: int,
                        device: str) -> dict[str, float | None]:
    """Median ms of each function, calls interleaved (A B A B ...) so that background load
    affects all of them alike. A function that raises gets ``None`` (and its error)."""
    errors: dict[str, str] = {}
    for name, fn in fns.items():
        try:
            for _ in range(warmup):
                fn()
            _sync(device)
        except Exception as err:  # noqa: BLE001 - the row reports the failure
            errors[name] = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
    times: dict[str, list[float]] = {name: [] for name in fns if name not in errors}
    for _ in range(repeats):
        for name in times:
            start = time.perf_counter()
            fns[name]()
            _sync(device)
            times[name].append((time.perf_counter() - start) * 1e3)
    out: dict[str, float | None] = {name: statistics.median(t) for name, t in times.items()}
    out.update({name: None for name in errors})
    alternating_medians.errors = errors  # type: ignore[attr-defined]
    return out


def model_evaluations(planner, td: TensorDict, device: str) -> Callable[[], None]:
    """The model evaluations a plan needs, alone: ``optim_steps`` calls of the planner's
    returns model on ``[M, N, H, A]`` candidates (the prior's noise drawn inside) and the
    candidates' Gaussian noise, with no CEM bookkeeping (clipping, top-k, refits) and no
    tensordict handling. Its time is about the least any planner can take that evaluates
    this model on as many candidates with the same kernels (not strictly: allocation and
    cache effects differ a little from inside a search).
    """
    state = td["state"].reshape(-1, td["state"].shape[-1])
    belief = td["belief"].reshape(-1, td["belief"].shape[-1])
    M, N, H, I = state.shape[0], planner.num_candidates, planner.planning_horizon, planner.optim_steps
    A = planner.space.dim
    actions = torch.rand(M, N, H, A, device=device) * 2 - 1

    model = planner.returns_model

    def evaluations() -> None:
        with torch.no_grad():
            weights = model.weights()  # folded once per search, as the planner does
            for _ in range(I):
                torch.randn(M, N, H, A, device=device)
                model(state, belief, actions, weights=weights)

    return evaluations


def dreamer_env(world_model, S: int, D: int, action_spec, device: str) -> DreamerEnv:
    """TorchRL's Dreamer model-based env around our prior and reward head."""
    prior = world_model.rollout.prior
    transition = SafeSequential(SafeModule(prior, in_keys=["state", "belief", "action"],
                                           out_keys=["_", "_", "state", "belief"]))
    reward = SafeModule(world_model.reward_model, in_keys=["state", "belief"], out_keys=["reward"])
    env = DreamerEnv(world_model=WorldModelWrapper(transition, reward), prior_shape=torch.Size([S]),
                     belief_shape=torch.Size([D]), device=device)
    env.observation_spec = Composite(state=Unbounded((S,)), belief=Unbounded((D,)), device=device)
    env.state_spec = Composite(state=Unbounded((S,)), belief=Unbounded((D,)), device=device)
    env.action_spec = action_spec
    env.reward_spec = Unbounded((1,), device=device)
    return env


def bench_setting(name: str, cfg: dict, envs: int, args, rows: list[dict]) -> None:
    dev = args.device
    torch.manual_seed(0)
    S, D, A = cfg["S"], cfg["D"], cfg["A"]
    action_spec = Bounded(-1, 1, (A,), device=dev)
    wm = make_world_model(Composite(observation=Unbounded((8,))), action_spec, state_dim=S, belief_dim=D,
                          hidden_dim=cfg["hidden"], device=dev)
    sizes = (cfg["H"], cfg["I"], cfg["N"], cfg["K"])
    env = dreamer_env(wm, S, D, action_spec, dev)
    theirs = TorchRLCEMPlanner(env, *sizes)
    ours = CEMPlanner(wm, *sizes, action_spec=action_spec)
    ours_dropin = CEMPlanner(env, *sizes)  # TorchRL's signature on TorchRL's env
    assert type(ours_dropin.returns_model).__name__ == "FastRSSMReturns"
    batch = [envs] if envs > 1 else []
    g = torch.Generator(device=dev).manual_seed(1)
    td = TensorDict(state=torch.randn(*batch, S, device=dev, generator=g),
                    belief=torch.randn(*batch, D, device=dev, generator=g), batch_size=batch, device=dev)

    def call(planner):
        def fn():
            with torch.no_grad():
                return planner(td.clone())
        return fn

    fns = {"torchrl": call(theirs), "ours": call(ours), "ours_dropin": call(ours_dropin)}
    planners = {}
    if args.compile:
        planners["ours_compiled"] = CEMPlanner(wm, *sizes, action_spec=action_spec, compile=True)
        fns["ours_compiled"] = call(planners["ours_compiled"])
    if args.floor:
        fns["floor_ours"] = model_evaluations(ours, td, dev)
        if "ours_compiled" in planners and not str(dev).startswith("cuda"):
            planners["ours_compiled"]._optimizer(torch.device(dev))  # on CPU: compiles the rollout (lazily)
            fns["floor_ours_compiled"] = model_evaluations(planners["ours_compiled"], td, dev)
    if str(dev).startswith("cuda"):
        fns["ours_cuda_graph"] = call(CEMPlanner(wm, *sizes, action_spec=action_spec, cuda_graph=True))
    slow = name == "planet" and not str(dev).startswith("cuda")
    warmup = 1 if slow else 2
    if args.compile:
        warmup = max(warmup, 2)  # the first call compiles
    repeats = args.repeats or ((3 if args.quick else 5) if slow else (5 if args.quick else 9))
    ms = alternating_medians(fns, warmup, repeats, dev)
    errors = getattr(alternating_medians, "errors", {})
    config = dict(setting=name, envs=envs, num_candidates=cfg["N"], planning_horizon=cfg["H"],
                  optim_steps=cfg["I"], top_k=cfg["K"], stoch=S, belief=D, hidden=cfg["hidden"], action=A,
                  threads=torch.get_num_threads(), grad="no_grad")
    t_ms = ms["torchrl"]
    base = "same networks and weights; TorchRL: CEMPlanner on DreamerEnv (env.rollout per iteration)"
    if t_ms is None:
        base = f"TorchRL's CEMPlanner failed here: {errors.get('torchrl')}"
    label = f"cem {name} ({cfg['N']}x{cfg['H']}x{cfg['I']}), {envs} env{'s' if envs > 1 else ''}"
    rows.append(row(f"{label}", ms["ours"], t_ms, dev, config, "ours on the world model's tensors; " + base))
    rows.append(row(f"{label}, drop-in on DreamerEnv", ms["ours_dropin"], t_ms, dev, config,
                    "ours given TorchRL's DreamerEnv (finds the networks, tensor path); " + base))
    compiled_what = ("torch.compile(fullgraph=True) of the whole search" if str(dev).startswith("cuda")
                     else "torch.compile(fullgraph=True) of the latent rollout (compile=True on CPU)")
    for key, what in (("ours_compiled", compiled_what),
                      ("ours_cuda_graph", "the search captured in a CUDA graph")):
        if key in ms:
            if ms[key] is None:
                print(f"{label}: {key} failed: {errors.get(key)}")
                continue
            rows.append(row(f"{label}, {key.split('_', 1)[1].replace('_', ' ')}", ms[key], t_ms, dev, config,
                            f"ours, {what}; " + base))
    for key, kind in (("floor_ours", "eager"), ("floor_ours_compiled", "compiled")):
        if ms.get(key) is not None:
            rows.append(row(f"{label}, model evaluations only ({kind})", ms[key], t_ms, dev, config,
                            "about a lower bound, not a planner: the I x [M, N, H] rollouts and candidate noise "
                            "a plan needs, without CEM bookkeeping; its ratio is about the most a planner "
                            "evaluating this model with these kernels could reach"))


def main() -> None:
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--compile", action="store_true", help="add rows with torch.compile (slow to compile on CPU)")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS),
                        help="which settings to run (default: all)")
    parser.add_argument("--floor", action="store_true",
                        help="add rows timing only the model evaluations a plan needs (a lower bound)")
    args = parse_args(__doc__.splitlines()[0], parser)
    if args.threads is None and not str(args.device).startswith("cuda"):
        torch.set_num_threads(min(2, torch.get_num_threads()))  # the project's reference CPU: 2 threads
    rows: list[dict] = []
    settings = dict(SETTINGS)
    if args.quick:  # PlaNet's networks and sizes, 2 iterations instead of 10: same per-iteration work
        settings["planet"] = dict(SETTINGS["planet"], I=2)
    for name, cfg in settings.items():
        if name not in args.settings:
            continue
        for envs in ((1,) if args.quick and name != "small" else (1, 8)):
            bench_setting(name, cfg, envs, args, rows)
    report(rows, args.json)


if __name__ == "__main__":
    main()
