"""World-model loss, forward + backward: ``RSSMLoss`` against TorchRL's ``DreamerModelLoss``.

Rows (medians after warm-up, one process):

- ``loss fwd+bwd, same world model (pixels)``: both losses on one world model of this
  package (reward at ("next", "reward"), TorchRL's convention), same data: the difference
  is the loss code itself; the world model dominates, so expect a ratio near 1.
- ``loss fwd+bwd, each its own stack (pixels)``: ours on our world model, TorchRL's on a
  world model of TorchRL's own modules built as in its Dreamer example, same sizes and data.
- ``loss fwd+bwd, vector obs, same world model``: TorchRL's loss runs but sums its
  reconstruction over batch and time for ``[B, T, obs_dim]`` (a different value).
- ``loss fwd+bwd + KL balancing + overshooting D=3``: TorchRL has neither (null).

Full size is PlaNet's: B=50, T=50, 64x64 pixels, stoch 30, belief 200, hidden 200.

    python benchmarks/bench_loss.py --quick --json /tmp/bench_loss.json
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch
from tensordict import TensorDict
from tensordict.nn import (ProbabilisticTensorDictModule, ProbabilisticTensorDictSequential, TensorDictModule,
                           TensorDictSequential)
from torchrl.data import Bounded, Composite, Unbounded
from torchrl.objectives import DreamerModelLoss

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import median_ms, parse_args, report, row  # noqa: E402

from torchrl_rssm.modules import make_world_model  # noqa: E402
from torchrl_rssm.objectives import RSSMLoss  # noqa: E402

ACTION_DIM, OBS_DIM = 6, 17


def torchrl_world_model(state_dim, belief_dim, hidden_dim, device):
    """TorchRL's Dreamer world model with TorchRL's own networks (as in its Dreamer example)."""
    import torchrl.modules as trm

    spec = Bounded(-1, 1, (ACTION_DIM,), device=device)
    rollout = trm.RSSMRollout(
        TensorDictModule(trm.RSSMPrior(spec, hidden_dim=hidden_dim, rnn_hidden_dim=belief_dim, state_dim=state_dim),
                         in_keys=["state", "belief", "action"],
                         out_keys=[("next", "prior_mean"), ("next", "prior_std"), "_", ("next", "belief")]),
        TensorDictModule(trm.RSSMPosterior(hidden_dim=hidden_dim, state_dim=state_dim, rnn_hidden_dim=belief_dim,
                                           obs_embed_dim=1024),
                         in_keys=[("next", "belief"), ("next", "encoded_latents")],
                         out_keys=[("next", "posterior_mean"), ("next", "posterior_std"), ("next", "state")]),
    )
    decoder = ProbabilisticTensorDictSequential(
        TensorDictModule(trm.ObsDecoder(latent_dim=state_dim + belief_dim),
                         in_keys=[("next", "state"), ("next", "belief")],
                         out_keys=["loc"]),
        ProbabilisticTensorDictModule(in_keys=["loc"], out_keys=[("next", "reco_pixels")],
                                      distribution_class=trm.IndependentNormal,
                                      distribution_kwargs={"scale": 1.0, "event_dim": 3}),
    )
    transition = TensorDictSequential(
        TensorDictModule(trm.ObsEncoder(in_channels=3), in_keys=[("next", "pixels")],
                         out_keys=[("next", "encoded_latents")]),
        rollout, decoder)
    reward = ProbabilisticTensorDictSequential(
        TensorDictModule(trm.MLP(in_features=state_dim + belief_dim, out_features=1, depth=2, num_cells=hidden_dim,
                                 activation_class=torch.nn.ELU),
                         in_keys=[("next", "state"), ("next", "belief")], out_keys=[("next", "loc")]),
        ProbabilisticTensorDictModule(in_keys=[("next", "loc")], out_keys=[("next", "reward")],
                                      distribution_class=trm.IndependentNormal,
                                      distribution_kwargs={"scale": 1.0, "event_dim": 1}),
    )
    return trm.WorldModelWrapper(transition, reward).to(device)


def batch(B, T, state_dim, belief_dim, device, pixels=True):
    obs = (torch.rand(B, T, 3, 64, 64) - 0.5) if pixels else torch.randn(B, T, OBS_DIM)
    return TensorDict({
        "state": torch.zeros(B, T, state_dim), "belief": torch.zeros(B, T, belief_dim),
        "action": torch.rand(B, T, ACTION_DIM) * 2 - 1,
        "is_init": torch.zeros(B, T, 1, dtype=torch.bool),
        ("next", "pixels" if pixels else "observation"): obs,  # float, model range: TorchRL's loss does not map uint8
        ("next", "reward"): torch.randn(B, T, 1),
    }, [B, T], device=device)


def step_fn(loss_fn, model, td):
    """One forward + backward; TorchRL's loss returns (losses, data), ours a TensorDict."""
    def step():
        model.zero_grad(set_to_none=True)
        out = loss_fn(td)
        out = out[0] if isinstance(out, tuple) else out
        sum(v.sum() for k, v in out.items() if k.startswith("loss_")).backward()
    return step


def paired_ms(fn_ours, fn_theirs, warmup, repeats, device) -> tuple[float, float]:
    """Medians of two functions timed alternately, so that load changes on a shared machine hit both."""
    for _ in range(warmup):
        fn_ours(), fn_theirs()
    ours, theirs = [], []
    for _ in range(repeats):
        ours.append(median_ms(fn_ours, 0, 1, device))
        theirs.append(median_ms(fn_theirs, 0, 1, device))
    return statistics.median(ours), statistics.median(theirs)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    dev = args.device
    if args.quick:
        B, T, S, Dm, H = 4, 10, 30, 200, 200
    else:
        B, T, S, Dm, H = 50, 50, 30, 200, 200
    repeats = args.repeats or (7 if args.quick else 5)
    warmup = 2
    config = dict(batch=B, time=T, state_dim=S, belief_dim=Dm, hidden_dim=H, pixels="3x64x64",
                  action_dim=ACTION_DIM, warmup=warmup, repeats=repeats, threads=torch.get_num_threads())
    act_spec = Bounded(-1, 1, (ACTION_DIM,))
    sizes = dict(state_dim=S, belief_dim=Dm, hidden_dim=H, device=dev)
    torch.manual_seed(0)
    rows = []

    # 1. same world model, same data: the loss code only
    wm = make_world_model(Composite(pixels=Unbounded((3, 64, 64))), act_spec, reward_key="reward", **sizes)
    td = batch(B, T, S, Dm, dev)
    ours, theirs = paired_ms(step_fn(RSSMLoss(wm), wm, td), step_fn(DreamerModelLoss(wm), wm, td),
                             warmup, repeats, dev)
    rows.append(row("loss fwd+bwd, same world model (pixels)", ours, theirs, dev, config,
                    "both losses on one torchrl_rssm world model; the world model dominates"))

    # 2. each loss on its own stack (ours: our world model; TorchRL's: TorchRL's modules)
    wm_ours = make_world_model(Composite(pixels=Unbounded((3, 64, 64))), act_spec, **sizes)
    wm_theirs = torchrl_world_model(S, Dm, H, dev)
    ours, theirs = paired_ms(step_fn(RSSMLoss(wm_ours), wm_ours, td),
                             step_fn(DreamerModelLoss(wm_theirs), wm_theirs, td), warmup, repeats, dev)
    rows.append(row("loss fwd+bwd, each its own stack (pixels)", ours, theirs, dev, config,
                    "RSSMLoss+make_world_model vs DreamerModelLoss+TorchRL RSSMRollout/ObsEncoder/ObsDecoder"))

    # 3. vector observations, same world model
    wm_vec = make_world_model(Composite(observation=Unbounded((OBS_DIM,))), act_spec, reward_key="reward", **sizes)
    td_vec = batch(B, T, S, Dm, dev, pixels=False)
    dreamer_vec = DreamerModelLoss(wm_vec)
    dreamer_vec.set_keys(pixels="observation", reco_pixels="reco_observation")
    ours, theirs = paired_ms(step_fn(RSSMLoss(wm_vec), wm_vec, td_vec), step_fn(dreamer_vec, wm_vec, td_vec),
                             warmup, repeats, dev)
    rows.append(row("loss fwd+bwd, vector obs, same world model", ours, theirs, dev, {**config, "obs_dim": OBS_DIM,
                    "pixels": None}, "TorchRL's reco term sums over batch and time for [B, T, obs_dim] (other value)"))

    # 4. options TorchRL does not have
    loss_opts = RSSMLoss(wm_ours, kl_balance=0.8, overshooting_distance=3, overshooting_weight=1.0)
    ours = median_ms(step_fn(loss_opts, wm_ours, td), warmup, repeats, dev)
    rows.append(row("loss fwd+bwd + KL balancing + overshooting D=3", ours, None, dev,
                    {**config, "kl_balance": 0.8, "overshooting_distance": 3},
                    "DreamerModelLoss has no KL balancing and no latent overshooting"))
    report(rows, args.json)


if __name__ == "__main__":
    main()
