"""Forward+backward of the RSSM observe loop and of the full world model, ours vs TorchRL.

Both sides run the same networks with the same weights (TorchRL's state dicts load into
our modules) on the same data, in this process:

- ``rssm observe``: ``RSSMRollout`` over ``[B, T]`` with 1024-dim embeddings given
  (TorchRL: ``torchrl.modules.RSSMRollout`` with its ``RSSMPrior``/``RSSMPosterior``).
- ``rssm observe (compiled step)``: ours with ``compile_step=True``.
- ``full world model``: 64x64 conv encoder, RSSM, conv decoder, reward head (TorchRL: the
  world model as its Dreamer example builds it).

The scalar that is backpropagated is the same on both sides.

    python benchmarks/bench_world_model.py [--quick] [--json PATH] [--device cuda]
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule, TensorDictSequential

sys.path.insert(0, str(Path(__file__).parent))
from _common import median_ms, parse_args, report, row  # noqa: E402

import torchrl.modules as trm  # noqa: E402
from torchrl.data import Bounded  # noqa: E402

from torchrl_rssm import modules as ours  # noqa: E402


def rollout_pair(A: int, E: int, S: int, D: int, H: int, device: str):
    spec = Bounded(-1, 1, (A,))
    t_prior = trm.RSSMPrior(spec, hidden_dim=H, rnn_hidden_dim=D, state_dim=S, action_dim=A, device=device)
    t_post = trm.RSSMPosterior(hidden_dim=H, state_dim=S, rnn_hidden_dim=D, obs_embed_dim=E, device=device)
    o_prior = ours.RSSMPrior(spec, hidden_dim=H, rnn_hidden_dim=D, state_dim=S, device=device)
    o_post = ours.RSSMPosterior(hidden_dim=H, state_dim=S, rnn_hidden_dim=D, obs_embed_dim=E, device=device)
    o_prior.load_state_dict(t_prior.state_dict())
    o_post.load_state_dict(t_post.state_dict())

    def wrap(cls, prior, post, **kw):
        return cls(
            TensorDictModule(prior, in_keys=["state", "belief", "action"],
                             out_keys=[("next", "prior_mean"), ("next", "prior_std"), "_", ("next", "belief")]),
            TensorDictModule(post, in_keys=[("next", "belief"), ("next", "encoded_latents")],
                             out_keys=[("next", "posterior_mean"), ("next", "posterior_std"), ("next", "state")]),
            **kw,
        )

    return wrap(trm.RSSMRollout, t_prior, t_post), wrap(ours.RSSMRollout, o_prior, o_post), \
        wrap(ours.RSSMRollout, o_prior, o_post, compile_step=True)


def scalar(td: TensorDict, keys) -> torch.Tensor:
    return sum(td.get(("next", k)).float().square().mean() for k in keys)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    dev = args.device
    B, T = (8, 10) if args.quick else (50, 50)
    S, D, H, E, A = 30, 200, 200, 1024, 6
    repeats = args.repeats or (5 if args.quick else 9)
    config = dict(B=B, T=T, stoch=S, belief=D, hidden=H, embed=E, action=A, threads=torch.get_num_threads())
    rows = []

    torchrl_rollout, our_rollout, our_compiled = rollout_pair(A, E, S, D, H, dev)
    g = torch.Generator(device=dev).manual_seed(0)
    data = TensorDict({
        "state": torch.zeros(B, T, S, device=dev), "belief": torch.zeros(B, T, D, device=dev),
        "action": torch.rand(B, T, A, device=dev, generator=g) * 2 - 1,
        ("next", "encoded_latents"): torch.randn(B, T, E, device=dev, generator=g),
    }, [B, T], device=dev)
    keys = ("posterior_mean", "posterior_std", "prior_mean", "prior_std", "belief", "state")

    def step(rollout):
        def fn():
            scalar(rollout(data.clone()), keys).backward()
        return fn

    t_ms = median_ms(step(torchrl_rollout), 2, repeats, dev)
    o_ms = median_ms(step(our_rollout), 2, repeats, dev)
    rows.append(row("rssm observe fwd+bwd", o_ms, t_ms, dev, config,
                    "embeddings given; same weights; TorchRL RSSMRollout (use_scan=False)"))
    c_ms = median_ms(step(our_compiled), 3, repeats, dev)
    rows.append(row("rssm observe fwd+bwd (compiled step)", c_ms, t_ms, dev, config,
                    "ours with compile_step=True (torch.compile fullgraph)"))

    # ---- full world model: encoder, RSSM, decoder, reward head on 64x64 pixels
    Bf, Tf = (4, 10) if args.quick else (B, T)
    full_cfg = dict(config, B=Bf, T=Tf, pixels="3x64x64")
    enc_t, dec_t = trm.ObsEncoder(in_channels=3, device=dev), trm.ObsDecoder(latent_dim=S + D, device=dev)
    reward_t = torch.nn.Sequential(torch.nn.Linear(S + D, H), torch.nn.ELU(), torch.nn.Linear(H, H),
                                   torch.nn.ELU(), torch.nn.Linear(H, 1)).to(dev)

    class _Reward(torch.nn.Module):  # TorchRL-style MLP over cat(state, belief)
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, state, belief):
            return self.net(torch.cat([state, belief], -1))

    def full_model(rollout, encoder, decoder, reward):
        return TensorDictSequential(
            TensorDictModule(encoder, in_keys=[("next", "pixels")], out_keys=[("next", "encoded_latents")]),
            rollout,
            TensorDictModule(decoder, in_keys=[("next", "state"), ("next", "belief")], out_keys=[("next", "reco_pixels")]),
            TensorDictModule(reward, in_keys=[("next", "state"), ("next", "belief")], out_keys=[("next", "reward_pred")]),
        )

    enc_o, dec_o = ours.ConvEncoder(device=dev), ours.ConvDecoder(latent_dim=S + D, device=dev)
    enc_o.load_state_dict(enc_t.state_dict())
    dec_o.load_state_dict(dec_t.state_dict())
    torchrl_full = full_model(torchrl_rollout, enc_t, dec_t, _Reward(reward_t))
    our_full = full_model(our_rollout, enc_o, dec_o, _Reward(reward_t))
    pixels = (torch.rand(Bf, Tf, 3, 64, 64, device=dev, generator=g) - 0.5)
    full_data = TensorDict({
        "state": torch.zeros(Bf, Tf, S, device=dev), "belief": torch.zeros(Bf, Tf, D, device=dev),
        "action": torch.rand(Bf, Tf, A, device=dev, generator=g) * 2 - 1,
        ("next", "pixels"): pixels,
    }, [Bf, Tf], device=dev)
    full_keys = ("reco_pixels", "reward_pred", "posterior_mean", "prior_std")

    def full_step(model):
        def fn():
            scalar(model(full_data.clone()), full_keys).backward()
        return fn

    t_full = median_ms(full_step(torchrl_full), 1, max(3, repeats // 2), dev)
    o_full = median_ms(full_step(our_full), 1, max(3, repeats // 2), dev)
    rows.append(row("full world model fwd+bwd (64x64)", o_full, t_full, dev, full_cfg,
                    "conv encoder + RSSM + conv decoder + reward head; same weights"))
    report(rows, args.json)


if __name__ == "__main__":
    main()
