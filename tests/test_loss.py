"""RSSMLoss: analytic/reference values, free nats, KL balancing, overshooting, averaging,
TorchRL interoperability, bad input, and a small learning test."""
from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch.distributions import Independent, Normal, kl_divergence
from torchrl.data import Bounded, Composite, Unbounded

from torchrl_rssm.modules import make_world_model
from torchrl_rssm.objectives import RSSMLoss, balanced_kl, gaussian_entropy, gaussian_kl, overshooting_priors

OBS, ACT, S, D, H = 5, 2, 8, 32, 32  # small sizes: obs, action, stoch, belief, hidden


def vector_wm(**kw):
    return make_world_model(Composite(observation=Unbounded((OBS,))), Bounded(-1, 1, (ACT,)),
                            state_dim=S, belief_dim=D, hidden_dim=H, **kw)


def vector_batch(B=3, T=6, seed=0) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    return TensorDict({
        "action": torch.rand(B, T, ACT, generator=g) * 2 - 1,
        "is_init": torch.zeros(B, T, 1, dtype=torch.bool),
        ("next", "observation"): torch.randn(B, T, OBS, generator=g),
        ("next", "reward"): torch.randn(B, T, 1, generator=g),
    }, [B, T])


def capture(wm) -> dict:
    """Keeps the rollout's outputs (and their .grad) for inspection after the loss ran."""
    store: dict = {}

    def hook(module, args, out):
        for k in ("prior_mean", "prior_std", "posterior_mean", "posterior_std"):
            t = out["next", k]
            if t.requires_grad:
                t.retain_grad()
            store[k] = t

    wm.rollout.register_forward_hook(hook)
    return store


def run(loss_fn, td, seed=0):
    torch.manual_seed(seed)
    return loss_fn(td)


def zero_noise_observe(monkeypatch, wm):
    """Makes the posterior samples deterministic (state = mean), for exact comparisons."""
    observe = wm.rollout.observe

    def det(embedding, action, is_init=None, start=None, noise=None, init_embedding=None, init_noise=None):
        zeros = torch.zeros(*action.shape[:-1], S)
        return observe(embedding, action, is_init, start, zeros, init_embedding=init_embedding, init_noise=zeros)

    monkeypatch.setattr(wm.rollout, "observe", det)


# -------------------------------------------------------------- Gaussian helpers
def test_gaussian_kl_and_entropy_match_torch_distributions():
    g = torch.Generator().manual_seed(0)
    qm, pm = torch.randn(4, 7, S, generator=g), torch.randn(4, 7, S, generator=g)
    qs, ps = torch.rand(4, 7, S, generator=g) + 0.1, torch.rand(4, 7, S, generator=g) + 0.1
    q, p = Independent(Normal(qm, qs), 1), Independent(Normal(pm, ps), 1)
    torch.testing.assert_close(gaussian_kl(qm, qs, pm, ps), kl_divergence(q, p))
    torch.testing.assert_close(gaussian_entropy(qs), q.entropy())
    # the direction is posterior -> prior: KL(q || p) differs from KL(p || q)
    assert not torch.allclose(gaussian_kl(qm, qs, pm, ps), kl_divergence(p, q))


def test_balanced_kl_value_and_gradient_split():
    g = torch.Generator().manual_seed(1)
    leaves = [torch.randn(3, S, generator=g), torch.rand(3, S, generator=g) + 0.2,
              torch.randn(3, S, generator=g), torch.rand(3, S, generator=g) + 0.2]
    plain_in = [x.clone().requires_grad_() for x in leaves]
    bal_in = [x.clone().requires_grad_() for x in leaves]
    plain, bal = balanced_kl(*plain_in, None), balanced_kl(*bal_in, 0.8)
    torch.testing.assert_close(bal, plain)
    plain.sum().backward(), bal.sum().backward()
    for i, weight in enumerate([0.2, 0.2, 0.8, 0.8]):  # posterior mean/std, prior mean/std
        torch.testing.assert_close(bal_in[i].grad, weight * plain_in[i].grad)


# -------------------------------------------------------------- the loss: KL terms
def test_free_nats_per_step_after_summing_dims_and_zero_gradient_below():
    torch.manual_seed(0)
    wm = vector_wm()
    td = vector_batch()
    store = capture(wm)
    kl_steps = None
    with torch.no_grad():  # per-step KL of this seed, to put the free nats in the middle
        out = run(RSSMLoss(wm, free_nats=0.0), td)
        kl_steps = gaussian_kl(store["posterior_mean"], store["posterior_std"], store["prior_mean"], store["prior_std"])
    free = kl_steps.median().item()
    out = run(RSSMLoss(wm, free_nats=free), td)
    qm, qs, pm, ps = (store[k] for k in ("posterior_mean", "posterior_std", "prior_mean", "prior_std"))
    per_dim = kl_divergence(Normal(qm, qs), Normal(pm, ps))  # [B, T, S], the reference
    expected = per_dim.sum(-1).clamp_min(free).mean()
    torch.testing.assert_close(out["loss_model_kl"], expected)
    # per step after summing dims, not per dim (which would give a different value)
    assert not torch.allclose(out["loss_model_kl"], per_dim.clamp_min(free / S).sum(-1).mean())
    out["loss_model_kl"].backward()
    below = per_dim.sum(-1) < free
    assert below.any() and (~below).any()
    assert (qm.grad[below] == 0).all() and (pm.grad[below] == 0).all()
    assert (qm.grad[~below].abs().sum(-1) > 0).all()
    torch.testing.assert_close(out["kl"], per_dim.sum(-1).mean().detach())


def test_kl_balancing_same_value_splits_gradient_between_prior_and_posterior():
    torch.manual_seed(0)
    wm = vector_wm()
    td = vector_batch()
    grads = {}
    for alpha in (None, 0.8):
        store = capture(wm)
        out = run(RSSMLoss(wm, free_nats=0.0, kl_balance=alpha), td)
        out["loss_model_kl"].backward()
        grads[alpha] = (out["loss_model_kl"].detach(), {k: v.grad for k, v in store.items()})
        wm.rollout._forward_hooks.clear()
    (v_plain, g_plain), (v_bal, g_bal) = grads[None], grads[0.8]
    torch.testing.assert_close(v_bal, v_plain)
    for k in ("prior_mean", "prior_std"):
        torch.testing.assert_close(g_bal[k], 0.8 * g_plain[k])
    for k in ("posterior_mean", "posterior_std"):
        torch.testing.assert_close(g_bal[k], 0.2 * g_plain[k])


# ---------------------------------------------------------- latent overshooting
def test_overshooting_priors_d1_equals_filtered_prior_and_match_reference_loop():
    torch.manual_seed(0)
    wm = vector_wm()
    td = vector_batch(B=2, T=6)
    with torch.no_grad():
        out = wm(td.copy())
        prior = wm.rollout.prior
        state, belief, action = out["next", "state"], out["next", "belief"], td["action"]
        chains = overshooting_priors(prior, state, belief, action, 3, sample=False)
        assert [m.shape for m, _ in chains] == [(2, 5, S), (2, 4, S), (2, 3, S)]
        # d = 1 from the posterior at t-1 is exactly the prior the filter computed at t
        torch.testing.assert_close(chains[0][0], out["next", "prior_mean"][:, 1:])
        torch.testing.assert_close(chains[0][1], out["next", "prior_std"][:, 1:])
        # every (t, d) against a plain per-step loop
        T = action.shape[1]
        for d, (mean, std) in enumerate(chains, start=1):
            for t in range(d, T):
                s, h = state[:, t - d], belief[:, t - d]
                for j in range(t - d + 1, t + 1):
                    m, sd, s, h = prior(s, h, action[:, j], torch.zeros_like(s))
                torch.testing.assert_close(mean[:, t - d], m)
                torch.testing.assert_close(std[:, t - d], sd)


def test_overshooting_distance_one_is_the_plain_loss():
    wm = vector_wm()
    td = vector_batch()
    plain = run(RSSMLoss(wm), td)
    d1 = run(RSSMLoss(wm, overshooting_distance=1, overshooting_weight=5.0), td)
    assert set(plain.keys()) == set(d1.keys())
    for k in plain.keys():
        torch.testing.assert_close(d1[k], plain[k])
    # with D = 3 the d = 1 term is averaged with the two overshooting terms (PlaNet's 1/D)
    d3 = run(RSSMLoss(wm, overshooting_distance=3), td)
    torch.testing.assert_close(d3["loss_model_kl"], plain["loss_model_kl"] / 3)
    assert d3["loss_model_overshooting"] > 0 and torch.isfinite(d3["kl_overshooting"])


def test_overshooting_sends_no_gradient_to_posterior_targets():
    torch.manual_seed(0)
    wm = vector_wm()
    store = capture(wm)
    out = run(RSSMLoss(wm, overshooting_distance=3, free_nats=0.0), vector_batch())
    out["loss_model_overshooting"].backward(retain_graph=True)
    for k in ("posterior_mean", "posterior_std"):
        assert store[k].grad is None or (store[k].grad == 0).all(), k
    assert wm.rollout.prior.rnn.weight_hh.grad.abs().sum() > 0  # it trains the transition
    out["loss_model_kl"].backward()  # the d = 1 term does reach the posterior
    assert store["posterior_mean"].grad.abs().sum() > 0


def test_overshooting_chains_do_not_cross_episode_starts():
    wm = vector_wm()
    td = vector_batch()
    loss_fn = RSSMLoss(wm, overshooting_distance=3)
    assert run(loss_fn, td)["loss_model_overshooting"] > 0
    td["is_init"] = torch.ones_like(td["is_init"])  # every row starts an episode: no valid chain
    assert run(loss_fn, td)["loss_model_overshooting"] == 0


# -------------------------------------------------------- likelihood terms
def test_vector_reco_is_averaged_not_summed_over_batch_and_time(monkeypatch):
    wm = vector_wm()
    zero_noise_observe(monkeypatch, wm)
    loss_fn = RSSMLoss(wm)
    td = vector_batch(B=3, T=5)
    out = loss_fn(td)
    with torch.no_grad():
        reco = wm(td.copy())["next", "reco_observation"]
    expected = 0.5 * (reco - td["next", "observation"]).pow(2).sum(-1).mean()
    torch.testing.assert_close(out["loss_model_reco"], expected)
    doubled = loss_fn(torch.cat([td, td], 0))
    for k in out.keys():
        torch.testing.assert_close(doubled[k], out[k])


def test_pixel_target_uint8_to_model_range_summed_over_3x64x64():
    wm = make_world_model(Composite(pixels=Unbounded((3, 64, 64))), Bounded(-1, 1, (ACT,)),
                          state_dim=S, belief_dim=D, hidden_dim=H, channels=4)
    g = torch.Generator().manual_seed(0)
    td = TensorDict({"action": torch.rand(2, 3, ACT, generator=g),
                     ("next", "pixels"): torch.randint(0, 256, (2, 3, 3, 64, 64), dtype=torch.uint8, generator=g),
                     ("next", "reward"): torch.randn(2, 3, 1, generator=g)}, [2, 3])
    loss_fn = RSSMLoss(wm)
    assert loss_fn.tensor_keys.observation == "pixels"
    out = run(loss_fn, td)
    torch.manual_seed(0)
    with torch.no_grad():
        model_out = wm(td.copy())
    target = td["next", "pixels"].float() / 256 - 0.5
    sq = (model_out["next", "reco_pixels"] - target).pow(2)
    torch.testing.assert_close(out["loss_model_reco"], 0.5 * sq.sum((-3, -2, -1)).mean())
    torch.testing.assert_close(out["reco_error"], sq.mean())
    reward_sq = (model_out["next", "reward_pred"] - td["next", "reward"]).pow(2)
    torch.testing.assert_close(out["loss_model_reward"], 0.5 * reward_sq.mean())


def test_output_scalar_losses_detached_diagnostics_and_input_untouched():
    wm = vector_wm()
    td = vector_batch()
    before = {k: v for k, v in td.items(include_nested=True, leaves_only=True)}
    loss_fn = RSSMLoss(wm, lambda_reco=2.0, lambda_reward=10.0, lambda_kl=0.5, overshooting_distance=2)
    out = run(loss_fn, td)
    assert isinstance(out, TensorDict) and set(out.keys()) == set(loss_fn.out_keys)
    for k, v in out.items():
        assert v.shape == torch.Size([]), k
        assert v.requires_grad == k.startswith("loss_"), k
    # the caller's tensordict is not modified (shallow copy inside)
    after = {k: v for k, v in td.items(include_nested=True, leaves_only=True)}
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    # weights scale their terms
    unit = run(RSSMLoss(wm, overshooting_distance=2), td)
    torch.testing.assert_close(out["loss_model_reco"], 2.0 * unit["loss_model_reco"])
    torch.testing.assert_close(out["loss_model_reward"], 10.0 * unit["loss_model_reward"])
    torch.testing.assert_close(out["loss_model_kl"], 0.5 * unit["loss_model_kl"])
    torch.testing.assert_close(out["loss_model_overshooting"], 0.5 * unit["loss_model_overshooting"])
    sum(v for k, v in out.items() if k.startswith("loss_")).backward()
    assert all(p.grad is not None for p in wm.parameters())


def test_keys_default_to_the_world_model_and_set_keys():
    wm = vector_wm()
    loss_fn = RSSMLoss(wm)
    k = loss_fn.tensor_keys
    assert (k.observation, k.reco_observation, k.reward, k.reward_pred) == (
        "observation", "reco_observation", "reward", "reward_pred")
    assert ("next", "observation") in loss_fn.in_keys and ("next", "reward") in loss_fn.in_keys
    assert "loss_model_kl" in loss_fn.out_keys
    # reconstruct another key: rename the data and tell the loss
    td = vector_batch()
    td.rename_key_(("next", "observation"), ("next", "obs_vec"))
    td["next", "observation"] = td["next", "obs_vec"]  # what the encoder reads
    loss_fn.set_keys(observation="obs_vec")
    assert ("next", "obs_vec") in loss_fn.in_keys
    assert torch.isfinite(run(loss_fn, td)["loss_model_reco"])
    loss_fn.set_keys(observation=None)  # back to the world model's
    assert loss_fn.tensor_keys.observation == "observation"
    with pytest.raises(ValueError, match="not an accepted tensordict key"):
        loss_fn.set_keys(pixel="pixels")
    # select_out_keys, as in TorchRL's losses (the input must hold every in_key)
    td = vector_batch()
    td["state"], td["belief"] = torch.zeros(3, 6, S), torch.zeros(3, 6, D)
    loss_fn.select_out_keys("loss_model_kl", "kl")
    assert set(run(loss_fn, td).keys()) == {"loss_model_kl", "kl"}


# --------------------------------------------------------- TorchRL interoperability
def torchrl_world_model():
    """TorchRL's Dreamer world model with TorchRL's own networks (small), as in its example."""
    import torchrl.modules as trm
    from tensordict.nn import ProbabilisticTensorDictModule, ProbabilisticTensorDictSequential

    rollout = trm.RSSMRollout(
        TensorDictModule(trm.RSSMPrior(Bounded(-1, 1, (ACT,)), hidden_dim=H, rnn_hidden_dim=D, state_dim=S),
                         in_keys=["state", "belief", "action"],
                         out_keys=[("next", "prior_mean"), ("next", "prior_std"), "_", ("next", "belief")]),
        TensorDictModule(trm.RSSMPosterior(hidden_dim=H, state_dim=S, rnn_hidden_dim=D, obs_embed_dim=128),
                         in_keys=[("next", "belief"), ("next", "encoded_latents")],
                         out_keys=[("next", "posterior_mean"), ("next", "posterior_std"), ("next", "state")]),
    )
    decoder = ProbabilisticTensorDictSequential(
        TensorDictModule(trm.ObsDecoder(channels=4, latent_dim=S + D), in_keys=[("next", "state"), ("next", "belief")],
                         out_keys=["loc"]),
        ProbabilisticTensorDictModule(in_keys=["loc"], out_keys=[("next", "reco_pixels")],
                                      distribution_class=trm.IndependentNormal,
                                      distribution_kwargs={"scale": 1.0, "event_dim": 3}),
    )
    transition = TensorDictSequential(
        TensorDictModule(trm.ObsEncoder(channels=4, in_channels=3), in_keys=[("next", "pixels")],
                         out_keys=[("next", "encoded_latents")]),
        rollout, decoder)
    reward = ProbabilisticTensorDictSequential(
        TensorDictModule(trm.MLP(in_features=S + D, out_features=1, depth=1, num_cells=16),
                         in_keys=[("next", "state"), ("next", "belief")],
                         out_keys=[("next", "loc")]),
        ProbabilisticTensorDictModule(in_keys=[("next", "loc")], out_keys=[("next", "reward")],
                                      distribution_class=trm.IndependentNormal,
                                      distribution_kwargs={"scale": 1.0, "event_dim": 1}),
    )
    wm = trm.WorldModelWrapper(transition, reward)
    with torch.no_grad():  # materialise TorchRL's lazy layers first, as its Dreamer example does
        wm(pixel_batch())
    return wm


def pixel_batch(B=2, T=4):
    g = torch.Generator().manual_seed(0)
    return TensorDict({"state": torch.zeros(B, T, S), "belief": torch.zeros(B, T, D),
                       "action": torch.rand(B, T, ACT, generator=g) * 2 - 1,
                       ("next", "pixels"): torch.rand(B, T, 3, 64, 64, generator=g) - 0.5,
                       ("next", "reward"): torch.randn(B, T, 1, generator=g)}, [B, T])


def test_torchrl_world_model_matches_dreamer_model_loss_and_reads_true_reward():
    from torchrl.objectives import DreamerModelLoss

    wm = torchrl_world_model()
    td = pixel_batch()
    ours = RSSMLoss(wm, free_nats=0.0)  # no free nats: compare the KL itself
    assert ours.tensor_keys.reward_pred == "reward" and ours.tensor_keys.reco_observation == "reco_pixels"
    out = run(ours, td)
    theirs, _ = run(DreamerModelLoss(wm, free_nats=0), td)
    # same KL; TorchRL's l2 terms have no 0.5 (their "l2" is the squared error)
    torch.testing.assert_close(out["loss_model_kl"], theirs["loss_model_kl"].squeeze())
    close = dict(rtol=1e-4, atol=1e-5)  # different summation order over 3x64x64
    torch.testing.assert_close(2 * out["loss_model_reco"], theirs["loss_model_reco"].squeeze(), **close)
    torch.testing.assert_close(2 * out["loss_model_reward"], theirs["loss_model_reward"].squeeze(), **close)
    assert list(td["next"].keys()) == ["pixels", "reward"]  # no renamed/overwritten entries
    # overshooting also runs on TorchRL's transition network
    out = run(RSSMLoss(wm, overshooting_distance=2), td)
    sum(v for k, v in out.items() if k.startswith("loss_")).backward()
    assert torch.isfinite(out["loss_model_overshooting"])


def test_same_world_model_torchrl_reward_convention():
    wm = make_world_model(Composite(observation=Unbounded((OBS,))), Bounded(-1, 1, (ACT,)),
                          state_dim=S, belief_dim=D, hidden_dim=H, reward_key="reward")
    td = vector_batch()
    out = run(RSSMLoss(wm), td)
    torch.manual_seed(0)
    with torch.no_grad():
        pred = wm(td.copy())["next", "reward"]
    torch.testing.assert_close(out["loss_model_reward"], 0.5 * (pred - td["next", "reward"]).pow(2).mean())


# ------------------------------------------------------------------ bad input
def test_bad_input_raises_clear_value_errors():
    wm = vector_wm()
    loss_fn = RSSMLoss(wm)
    td = vector_batch()
    bad = td.clone()
    bad["next", "observation"][1, 2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite.*'observation'"):
        loss_fn(bad)
    with pytest.raises(ValueError, match=r"missing.*'reward'.*\[\*B, T, 1\]"):
        loss_fn(td.exclude(("next", "reward")))
    bad = td.clone()
    bad["next", "observation"] = torch.zeros(3, 6, 4)
    with pytest.raises(ValueError, match=r"'observation'.*\[\*B, T, 5\].*\(3, 6, 4\)"):
        loss_fn(bad)
    with pytest.raises(ValueError, match=r"\[\*B, T\]"):
        loss_fn(td[0, 0])
    pix = make_world_model(Composite(pixels=Unbounded((3, 64, 64))), Bounded(-1, 1, (ACT,)),
                           state_dim=S, belief_dim=D, hidden_dim=H, channels=4)
    td = TensorDict({"action": torch.zeros(2, 3, ACT), ("next", "pixels"): torch.zeros(2, 3, 64, 64, 3),
                     ("next", "reward"): torch.zeros(2, 3, 1)}, [2, 3])
    with pytest.raises(ValueError, match=r"'pixels'.*\[\*B, T, 3, 64, 64\]"):
        RSSMLoss(pix)(td)
    with pytest.raises(ValueError, match="kl_balance"):
        RSSMLoss(wm, kl_balance=1.5)
    no_rssm = TensorDictSequential(TensorDictModule(torch.nn.Linear(5, 5), in_keys=["x"], out_keys=["y"]))
    with pytest.raises(ValueError, match="overshooting"):
        RSSMLoss(no_rssm, overshooting_distance=2)


# ------------------------------------------------------------------- learning
def _oscillator_data(n: int, T: int, g: torch.Generator) -> TensorDict:
    """A damped, action-driven 2x2-D rotation with small process noise; reward = first coordinate."""

    def rot(a):
        return torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])

    A = 0.98 * torch.block_diag(rot(0.5), rot(0.3))
    Bm = 0.3 * torch.randn(4, ACT, generator=torch.Generator().manual_seed(7))
    x = torch.randn(n, 4, generator=g)
    actions = torch.rand(n, T, ACT, generator=g) * 2 - 1
    obs = []
    for t in range(T):
        x = x @ A.T + actions[:, t] @ Bm.T + 0.02 * torch.randn(n, 4, generator=g)
        obs.append(x)
    obs = torch.stack(obs, 1)
    is_init = torch.zeros(n, T, 1, dtype=torch.bool)
    is_init[:, 0] = True
    return TensorDict({"action": actions, "is_init": is_init, ("next", "observation"): obs,
                       ("next", "reward"): obs[..., :1].clone()}, [n, T])


def _open_loop_error(wm, data: TensorDict, context: int, horizon: int) -> tuple[float, float]:
    """MSE of decoding an open-loop imagination from the filtered state, and of repeating the last obs."""
    n = data.shape[0]
    obs = data["next", "observation"]
    with torch.no_grad():
        post = wm.rollout.observe(wm.encoder(obs[:, :context]), data["action"][:, :context],
                                  data["is_init"][:, :context], noise=torch.zeros(n, context, S))
        start = {"state": post["state"][:, -1], "belief": post["belief"][:, -1]}
        imagined = wm.rollout.imagine(start, action=data["action"][:, context:context + horizon],
                                      noise=torch.zeros(n, horizon, S))
        pred = wm.decoder(imagined["state"], imagined["belief"])
    target = obs[:, context:context + horizon]
    return (pred - target).pow(2).mean().item(), (obs[:, context - 1:context] - target).pow(2).mean().item()


@pytest.fixture
def one_thread():
    # tiny matrices: a second thread only adds synchronisation (and the CPU is shared)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_learning_reduces_loss_and_open_loop_beats_repeat_last_observation(one_thread):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    train, test = _oscillator_data(128, 25, g), _oscillator_data(64, 25, g)
    wm = make_world_model(Composite(observation=Unbounded((4,))), Bounded(-1, 1, (ACT,)),
                          state_dim=S, belief_dim=D, hidden_dim=H)
    loss_fn = RSSMLoss(wm, free_nats=1.0)
    opt = torch.optim.Adam(wm.parameters(), lr=3e-3)
    untrained, repeat_last = _open_loop_error(wm, test, context=15, horizon=10)
    losses = []
    for _ in range(300):
        out = loss_fn(train[torch.randint(0, 128, (16,))])
        loss = sum(v for k, v in out.items() if k.startswith("loss_"))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    trained, _ = _open_loop_error(wm, test, context=15, horizon=10)
    assert sum(losses[-20:]) < 0.6 * sum(losses[:20]), (losses[:20], losses[-20:])
    # 10-step open-loop prediction: far better than repeating the last observation, and than before
    assert trained < 0.1 * repeat_last, (trained, repeat_last)
    assert trained < 0.25 * untrained, (trained, untrained)


# ------------------------------------------------------------ where a sequence starts
def with_root_observations(td: TensorDict, seed: int = 1) -> TensorDict:
    """Adds root observations (o_t of row t) and episode starts at rows 0 and 3."""
    td = td.clone()
    g = torch.Generator().manual_seed(seed)
    td["observation"] = torch.randn(*td.batch_size, OBS, generator=g)
    td["is_init"][:, 0] = td["is_init"][:, 3] = True
    return td


def test_recorded_latents_are_ignored_by_default():
    """A collector's recorded state/belief (root and next) do not change the loss; chunks start from
    their first observation filtered. start_from_recorded_latents=True starts from them (TorchRL's way)."""
    wm = vector_wm()
    td = with_root_observations(vector_batch())
    td["is_init"][:, 0] = False  # a sampler that does not flag chunk starts: row 0 would read the recorded latent
    garbage = td.clone()
    B, T = td.batch_size
    for key, dim in (("state", S), ("belief", D)):
        garbage[key] = torch.randn(B, T, dim) * 100
        garbage["next", key] = torch.randn(B, T, dim) * 100
    clean, noisy = run(RSSMLoss(wm), td), run(RSSMLoss(wm), garbage)
    for k in clean.keys():
        torch.testing.assert_close(noisy[k], clean[k])
    recorded = run(RSSMLoss(wm, start_from_recorded_latents=True), garbage)
    assert (recorded["loss_model_kl"] - run(RSSMLoss(wm), td)["loss_model_kl"]).abs() > 1e-3


def test_episode_starts_filter_the_root_observation_at_is_init_rows_only(monkeypatch):
    """is_init rows start from h = f(0, 0, 0), s ~ q(h, e(o_t)); the encoder sees the root observation of
    those rows only; a batch without root observations starts them from the zero latent (documented)."""
    wm = vector_wm()
    zero_noise_observe(monkeypatch, wm)
    td = with_root_observations(vector_batch())
    seen = []
    wm[0][0].module.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[:-1].numel()))
    out = run(RSSMLoss(wm), td)
    B, T = td.batch_size
    assert sorted(seen) == [2 * B, B * T]  # the is_init rows' root observations, then every ("next", obs)
    # by hand: observe with the embedding of the root observation
    with torch.no_grad():
        emb = wm.encoder(td["next", "observation"])
        post = wm.rollout.observe(emb, td["action"], is_init=td["is_init"], init_embedding=wm.encoder(td["observation"]))
        kl = gaussian_kl(post["posterior_mean"], post["posterior_std"], post["prior_mean"], post["prior_std"])
    torch.testing.assert_close(out["kl"], kl.mean())
    # the root observation matters at is_init rows only
    other = td.clone()
    other["observation"][:, 1] += 3.0
    torch.testing.assert_close(run(RSSMLoss(wm), other)["kl"], out["kl"])
    other["observation"][:, 3] += 3.0
    assert (run(RSSMLoss(wm), other)["kl"] - out["kl"]).abs() > 1e-4
    # no root observation (foreign data): the zero latent at is_init rows
    foreign = td.exclude("observation")
    with torch.no_grad():
        post = wm.rollout.observe(emb, td["action"], is_init=td["is_init"])
        kl = gaussian_kl(post["posterior_mean"], post["posterior_std"], post["prior_mean"], post["prior_std"])
    torch.testing.assert_close(run(RSSMLoss(wm), foreign)["kl"], kl.mean())
