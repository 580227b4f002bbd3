"""World-model modules: shapes over batch dims, numerics, resets, imagination, compile, drop-in."""
from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torchrl.data import Bounded, Composite, Unbounded

from torchrl_rssm.modules import (
    ConvDecoder,
    ConvEncoder,
    MLPDecoder,
    MLPEncoder,
    RewardModel,
    RSSMPosterior,
    RSSMPrior,
    RSSMRollout,
    make_world_model,
)

S, D, H, A, E = 6, 16, 16, 2, 12  # small sizes: stoch, belief, hidden, action, embedding
BATCHES = [(), (3,), (2, 3)]


def small_rollout(**kw) -> RSSMRollout:
    prior = RSSMPrior(None, hidden_dim=H, rnn_hidden_dim=D, state_dim=S, action_dim=A)
    posterior = RSSMPosterior(hidden_dim=H, state_dim=S, rnn_hidden_dim=D, obs_embed_dim=E)
    return RSSMRollout(prior, posterior, **kw)


# ----------------------------------------------------------------- shapes
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("time", [False, True])
def test_single_step_modules_any_batch_dims(batch, time):
    lead = (*batch, 4) if time else batch
    prior = RSSMPrior(None, hidden_dim=H, rnn_hidden_dim=D, state_dim=S, action_dim=A)
    mean, std, state, belief = prior(torch.randn(*lead, S), torch.randn(*lead, D), torch.randn(*lead, A))
    assert mean.shape == std.shape == state.shape == (*lead, S)
    assert belief.shape == (*lead, D)
    post = RSSMPosterior(hidden_dim=H, state_dim=S, rnn_hidden_dim=D, obs_embed_dim=E)
    qm, qs, qstate = post(belief, torch.randn(*lead, E))
    assert qm.shape == qs.shape == qstate.shape == (*lead, S)
    assert RewardModel(S, D, H)(state, belief).shape == (*lead, 1)
    assert MLPEncoder(5, embed_dim=E)(torch.randn(*lead, 5)).shape == (*lead, E)
    assert MLPDecoder(5, latent_dim=S + D)(state, belief).shape == (*lead, 5)


@pytest.mark.parametrize("batch", BATCHES)
def test_conv_encoder_decoder_shapes(batch):
    lead = (*batch, 2)
    enc = ConvEncoder()
    pixels = torch.randint(0, 256, (*lead, 3, 64, 64), dtype=torch.uint8)
    emb = enc(pixels)
    assert emb.shape == (*lead, 1024)
    # uint8 storage and the model's float range give the same embedding
    assert torch.allclose(emb, enc(pixels.float() / 256 - 0.5))
    dec = ConvDecoder(latent_dim=S + D)
    assert dec(torch.randn(*lead, S), torch.randn(*lead, D)).shape == (*lead, 3, 64, 64)


@pytest.mark.parametrize("batch", BATCHES)
def test_rollout_observe_and_imagine_shapes(batch):
    T = 5
    rollout = small_rollout()
    td = TensorDict(
        {"action": torch.randn(*batch, T, A), ("next", "encoded_latents"): torch.randn(*batch, T, E)},
        [*batch, T],
    )
    rollout(td)
    for key, size in [("prior_mean", S), ("prior_std", S), ("posterior_mean", S),
                      ("posterior_std", S), ("state", S), ("belief", D)]:
        assert td["next", key].shape == (*batch, T, size), key
    out = rollout.imagine(rollout.initial(batch), action=torch.randn(*batch, 7, A))
    assert out["state"].shape == (*batch, 7, S) and out["belief"].shape == (*batch, 7, D)


def test_world_model_shapes_pixels_and_vector():
    act = Bounded(-1, 1, (A,))
    for obs_spec, key, shape in [
        (Composite(pixels=Unbounded((3, 64, 64))), "pixels", (3, 64, 64)),
        (Composite(observation=Unbounded((5,))), "observation", (5,)),
    ]:
        wm = make_world_model(obs_spec, act, state_dim=S, belief_dim=D, hidden_dim=H)
        td = TensorDict({"action": torch.randn(2, 3, 4, A), ("next", key): torch.rand(2, 3, 4, *shape)}, [2, 3, 4])
        wm(td)
        assert td["next", f"reco_{key}"].shape == (2, 3, 4, *shape)
        assert td["next", "reward_pred"].shape == (2, 3, 4, 1)
        assert wm.obs_key == key and wm.reco_key == ("next", f"reco_{key}")


# ------------------------------------------------------- other image sizes
def test_encoder_embedding_size_from_image_size():
    # side s -> (s - 4) // 2 + 1 per layer: 64 -> 2, 96 -> 4, 128 -> 6, 80 -> 3, 46 -> 1
    for size, side in [(64, 2), (96, 4), (128, 6), (80, 3), (46, 1)]:
        enc = ConvEncoder(channels=4, in_channels=1, image_size=size)
        assert enc.output_dim() == 32 * side * side
        assert enc(torch.zeros(2, 1, size, size, dtype=torch.uint8)).shape == (2, 32 * side * side)
    assert ConvEncoder().output_dim((96, 128)) == 256 * 4 * 6
    assert ConvEncoder()(torch.zeros(3, 96, 128)).shape == (256 * 4 * 6,)


@pytest.mark.parametrize("size", [64, 96, 128, (80, 112), 48])
@pytest.mark.parametrize("channels", [1, 3])
def test_world_model_other_image_sizes_and_channels(size, channels):
    hw = (size, size) if isinstance(size, int) else size
    torch.manual_seed(0)  # tiny stacks (channels=4) can start with every ReLU dead on some draws
    wm = make_world_model(Composite(pixels=Unbounded((channels, *hw))), Bounded(-1, 1, (A,)),
                          state_dim=S, belief_dim=D, hidden_dim=H, channels=4)
    assert wm.encoder.image_size == hw and wm.decoder.image_size == hw
    td = TensorDict({"action": torch.randn(2, 3, A),
                     ("next", "pixels"): torch.randint(0, 256, (2, 3, channels, *hw), dtype=torch.uint8)}, [2, 3])
    wm(td)
    assert td["next", "encoded_latents"].shape == (2, 3, wm.encoder.output_dim())
    reco = td["next", "reco_pixels"]
    assert reco.shape == (2, 3, channels, *hw)
    reco.square().mean().backward()
    for module in (wm.encoder, wm.decoder):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_decoder_64_is_planet_stack_and_other_sizes_resize_it():
    torch.manual_seed(0)
    d64 = ConvDecoder(channels=4, latent_dim=S + D)
    assert d64.native_size == d64.image_size == (64, 64)
    shapes = [tuple(m.weight.shape) for m in d64.decoder if isinstance(m, torch.nn.ConvTranspose2d)]
    assert shapes == [(128, 16, 5, 5), (16, 8, 5, 5), (8, 4, 6, 6), (4, 3, 6, 6)]  # PlaNet's kernels 5,5,6,6
    d96 = ConvDecoder(channels=4, latent_dim=S + D, image_size=96)
    d96.load_state_dict(d64.state_dict())  # same parameters for every size
    s, b = torch.randn(5, S), torch.randn(5, D)
    ref = torch.nn.functional.interpolate(d64(s, b), size=(96, 96), mode="bilinear", align_corners=False)
    torch.testing.assert_close(d96(s, b), ref)
    # a stack native to 96 (first kernel 9) needs no resize
    d = ConvDecoder(channels=4, kernel_sizes=[9, 5, 6, 6], latent_dim=S + D, image_size=96)
    assert d.native_size == (96, 96) and d(s, b).shape == (5, 3, 96, 96)


def test_decoder_has_no_activation_after_its_linear_layer():
    """PlaNet feeds the linear layer's output, negative values included, straight into the deconvs."""
    dec = ConvDecoder(channels=4, latent_dim=S + D)
    s, b = torch.randn(3, S), torch.randn(3, D)
    pre = dec.state_to_latent[0](torch.cat([s, b], -1))
    assert (pre < 0).any()
    torch.testing.assert_close(dec.state_to_latent(torch.cat([s, b], -1)), pre)
    torch.testing.assert_close(dec(s, b), dec.decoder(pre.reshape(3, -1, 1, 1)))
    assert "state_to_latent.0.weight" in dec.state_dict()


def test_decoder_infers_latent_dim_lazily_like_torchrl():
    import inspect

    import torchrl.modules as trm

    ours = inspect.signature(ConvDecoder).parameters
    theirs = inspect.signature(trm.ObsDecoder).parameters
    for name, p in theirs.items():
        assert ours[name].default == p.default, name
    for state, belief in [(30, 200), (7, 13)]:
        dec = ConvDecoder(channels=4)
        out = dec(torch.zeros(2, state), torch.zeros(2, belief))
        assert out.shape == (2, 3, 64, 64) and dec.state_to_latent[0].in_features == state + belief


# ---------------------------------------------------------------- numerics
def test_stds_bounded_below_by_min_std():
    rollout = small_rollout()
    with torch.no_grad():  # push the raw std outputs far negative: softplus -> 0, std -> min_std
        rollout.prior.rnn_to_prior_projector[-1].bias[S:] = -50.0
        rollout.posterior.obs_rnn_to_post_projector[-1].bias[S:] = -50.0
    out = rollout.observe(torch.randn(4, 6, E), torch.randn(4, 6, A))
    for k in ("prior_std", "posterior_std"):
        assert (out[k] > 0).all() and (out[k] >= rollout.prior.scale_lb - 1e-6).all()


def test_same_seed_same_sample():
    rollout = small_rollout()
    emb, act = torch.randn(3, 6, E), torch.randn(3, 6, A)
    torch.manual_seed(7)
    a = rollout.observe(emb, act)
    torch.manual_seed(7)
    b = rollout.observe(emb, act)
    torch.manual_seed(8)
    c = rollout.observe(emb, act)
    assert torch.equal(a["state"], b["state"])
    assert not torch.equal(a["state"], c["state"])


def test_gradients_reach_every_parameter():
    wm = make_world_model(Composite(pixels=Unbounded((3, 64, 64))), Bounded(-1, 1, (A,)),
                          state_dim=S, belief_dim=D, hidden_dim=H, channels=8)
    td = TensorDict({"action": torch.randn(2, 4, A),
                     ("next", "pixels"): torch.randint(0, 256, (2, 4, 3, 64, 64), dtype=torch.uint8)}, [2, 4])
    wm(td)
    loss = sum(td["next", k].square().mean() for k in
               ("reco_pixels", "reward_pred", "prior_mean", "prior_std", "posterior_mean", "posterior_std"))
    loss.backward()
    missing = [n for n, p in wm.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing


# ------------------------------------------------------------------ resets
def test_is_init_mid_sequence_equals_fresh_sequence():
    rollout = small_rollout()
    T, k = 8, 3
    emb, act, noise = torch.randn(2, T, E), torch.randn(2, T, A), torch.randn(2, T, S)
    is_init = torch.zeros(2, T, 1, dtype=torch.bool)
    is_init[:, k] = True
    start = {"state": torch.randn(2, S), "belief": torch.randn(2, D)}  # a non-initial latent at row 0
    full = rollout.observe(emb, act, is_init=is_init, start=start, noise=noise)
    fresh = rollout.observe(emb[:, k:], act[:, k:], noise=noise[:, k:])
    for key in full:
        torch.testing.assert_close(full[key][:, k:], fresh[key], rtol=0, atol=1e-6)
    # and without the reset the tail differs (the test could fail)
    no_reset = rollout.observe(emb, act, start=start, noise=noise)
    assert not torch.allclose(no_reset["state"][:, k:], fresh["state"])


# ------------------------------------------------------------- references
def test_fast_observe_matches_plain_step_by_step_loop():
    """The hoisted loop (projections and prior head outside) equals prior/posterior called per step."""
    rollout = small_rollout()
    T = 6
    emb, act, noise = torch.randn(3, T, E), torch.randn(3, T, A), torch.randn(3, T, S)
    is_init = torch.zeros(3, T, 1, dtype=torch.bool)
    is_init[1, 2] = True
    out = rollout.observe(emb, act, is_init=is_init, noise=noise)
    state, belief = torch.zeros(3, S), torch.zeros(3, D)
    for t in range(T):
        keep = (~is_init[:, t]).float()
        state, belief = state * keep, belief * keep
        pm, ps, _, belief = rollout.prior(state, belief, act[:, t])
        qm, qs, state = rollout.posterior(belief, emb[:, t], noise=noise[:, t])
        for key, ref in [("prior_mean", pm), ("prior_std", ps), ("belief", belief),
                         ("posterior_mean", qm), ("posterior_std", qs), ("state", state)]:
            torch.testing.assert_close(out[key][:, t], ref, rtol=1e-5, atol=1e-5)


def test_imagine_from_filtered_state_matches_reference_loop():
    rollout = small_rollout()
    filtered = rollout.observe(torch.randn(4, 5, E), torch.randn(4, 5, A))
    start = {"state": filtered["state"][:, -1], "belief": filtered["belief"][:, -1]}
    actions, noise = torch.randn(4, 7, A), torch.randn(4, 7, S)
    out = rollout.imagine(start, action=actions, noise=noise)
    state, belief = start["state"], start["belief"]
    for t in range(7):
        mean, std, state, belief = rollout.prior(state, belief, actions[:, t], noise=noise[:, t])
        torch.testing.assert_close(out["state"][:, t], state, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out["prior_std"][:, t], std, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out["belief"][:, t], belief, rtol=1e-5, atol=1e-5)
    # a policy gives the same rollout as the actions it returns
    step = iter(range(7))
    by_policy = rollout.imagine(start, policy=lambda s, b: actions[:, next(step)], horizon=7, noise=noise)
    torch.testing.assert_close(by_policy["state"], out["state"])


def test_compiled_step_equals_eager_step():
    eager = small_rollout()
    compiled = small_rollout(compile_step=True)
    compiled.load_state_dict(eager.state_dict())
    emb, act, noise = torch.randn(3, 5, E), torch.randn(3, 5, A), torch.randn(3, 5, S)
    is_init = torch.zeros(3, 5, 1, dtype=torch.bool)
    is_init[0, 2] = True
    a = eager.observe(emb, act, is_init=is_init, noise=noise)
    b = compiled.observe(emb, act, is_init=is_init, noise=noise)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-5)
    start = {"state": a["state"][:, -1], "belief": a["belief"][:, -1]}
    ia = eager.imagine(start, action=act, noise=noise)
    ib = compiled.imagine(start, action=act, noise=noise)
    torch.testing.assert_close(ia["state"], ib["state"], rtol=1e-5, atol=1e-5)
    # gradients through the compiled step match too
    (b["state"].sum() + b["belief"].sum()).backward()
    (a["state"].sum() + a["belief"].sum()).backward()
    for (n, p), q in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=n)


# ------------------------------------------------------------ bad input
def test_bad_observation_shape_is_named():
    with pytest.raises(ValueError, match="3 channels"):
        ConvEncoder()(torch.zeros(2, 64, 64, 3))
    with pytest.raises(ValueError, match=r"\[\*B, 5\]"):
        MLPEncoder(5)(torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"observation_spec.*\(3, 32, 32\).*>= 46"):
        make_world_model(Composite(pixels=Unbounded((3, 32, 32))), Bounded(-1, 1, (A,)))
    with pytest.raises(ValueError, match=r"image_size=\(45, 64\) is too small.*>= 46"):
        ConvEncoder(image_size=(45, 64))
    with pytest.raises(ValueError, match="too small"):
        ConvEncoder()(torch.zeros(1, 3, 40, 40))
    with pytest.raises(ValueError, match=r"\[\*B, C, 96, 96\]"):
        ConvEncoder(image_size=96)(torch.zeros(1, 3, 64, 64))
    for bad in (0, (64,), (64, 0), 64.0):
        with pytest.raises(ValueError, match="image_size"):
            ConvDecoder(image_size=bad)
    rollout = small_rollout()
    with pytest.raises(ValueError, match="embedding and action"):
        rollout.observe(torch.zeros(2, 5, E), torch.zeros(2, 4, A))


# ------------------------------------------------------------ drop-in
def _torchrl_dreamer_world_model(encoder, decoder, prior, posterior, reward_net, rollout_cls):
    """Builds a world model exactly as TorchRL's Dreamer example does (pixels)."""
    from tensordict.nn import (ProbabilisticTensorDictModule, ProbabilisticTensorDictSequential,
                               TensorDictSequential)
    from torchrl.modules import IndependentNormal, WorldModelWrapper

    rssm_rollout = rollout_cls(
        TensorDictModule(prior, in_keys=["state", "belief", "action"],
                         out_keys=[("next", "prior_mean"), ("next", "prior_std"), "_", ("next", "belief")]),
        TensorDictModule(posterior, in_keys=[("next", "belief"), ("next", "encoded_latents")],
                         out_keys=[("next", "posterior_mean"), ("next", "posterior_std"), ("next", "state")]),
    )
    decoder = ProbabilisticTensorDictSequential(
        TensorDictModule(decoder, in_keys=[("next", "state"), ("next", "belief")], out_keys=["loc"]),
        ProbabilisticTensorDictModule(in_keys=["loc"], out_keys=[("next", "reco_pixels")],
                                      distribution_class=IndependentNormal,
                                      distribution_kwargs={"scale": 1.0, "event_dim": 3}),
    )
    transition = TensorDictSequential(
        TensorDictModule(encoder, in_keys=[("next", "pixels")], out_keys=[("next", "encoded_latents")]),
        rssm_rollout, decoder)
    reward = ProbabilisticTensorDictSequential(
        TensorDictModule(reward_net, in_keys=[("next", "state"), ("next", "belief")], out_keys=[("next", "loc")]),
        ProbabilisticTensorDictModule(in_keys=[("next", "loc")], out_keys=[("next", "reward")],
                                      distribution_class=IndependentNormal,
                                      distribution_kwargs={"scale": 1.0, "event_dim": 1}),
    )
    return WorldModelWrapper(transition, reward)


def _dreamer_batch(B=2, T=4):
    return TensorDict({
        "state": torch.zeros(B, T, 30), "belief": torch.zeros(B, T, 200),
        "action": torch.rand(B, T, A) * 2 - 1,
        ("next", "pixels"): torch.rand(B, T, 3, 64, 64),
        ("next", "reward"): torch.randn(B, T, 1),
    }, [B, T])


def test_our_modules_in_torchrl_dreamer_world_model_forward_backward():
    """Changing the import is enough: TorchRL's constructor calls, our classes."""
    import torchrl_rssm.modules as ours
    from torchrl.modules import MLP
    from torchrl.objectives import DreamerModelLoss

    spec = Bounded(-1, 1, (A,))
    wm = _torchrl_dreamer_world_model(
        ours.ObsEncoder(), ours.ObsDecoder(),
        ours.RSSMPrior(hidden_dim=200, rnn_hidden_dim=200, state_dim=30, action_spec=spec),
        ours.RSSMPosterior(hidden_dim=200, state_dim=30),  # lazy input size, as in TorchRL's example
        MLP(out_features=1, depth=2, num_cells=64, activation_class=torch.nn.ELU),
        ours.RSSMRollout,
    )
    td = _dreamer_batch()
    with torch.no_grad():  # materialise lazy layers, as TorchRL's example does
        wm(td.clone())
    losses, _ = DreamerModelLoss(wm)(td)
    total = sum(v.sum() for v in losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert all(p.grad is not None for p in wm.parameters())


def test_torchrl_dreamer_model_loss_on_our_world_model():
    from torchrl.objectives import DreamerModelLoss

    wm = make_world_model(Composite(pixels=Unbounded((3, 64, 64))), Bounded(-1, 1, (A,)), reward_key="reward")
    td = _dreamer_batch()
    losses, out = DreamerModelLoss(wm)(td)
    assert set(losses.keys()) == {"loss_model_kl", "loss_model_reco", "loss_model_reward"}
    assert out["next", "reco_pixels"].shape == (2, 4, 3, 64, 64)
    sum(v.sum() for v in losses.values()).backward()
    assert wm.rollout.prior.rnn.weight_hh.grad is not None


def test_torchrl_state_dicts_load_into_our_modules():
    import torchrl.modules as trm

    spec = Bounded(-1, 1, (A,))
    for theirs, mine in [
        (trm.RSSMPrior(spec, action_dim=A), RSSMPrior(spec)),
        (trm.RSSMPosterior(rnn_hidden_dim=200, obs_embed_dim=1024), RSSMPosterior(rnn_hidden_dim=200, obs_embed_dim=1024)),
        (trm.ObsEncoder(in_channels=3), ConvEncoder()),
        (trm.ObsDecoder(latent_dim=230), ConvDecoder()),
    ]:
        mine.load_state_dict(theirs.state_dict())  # strict: same names and shapes
    enc_t, enc_o = trm.ObsEncoder(in_channels=3), ConvEncoder()
    enc_o.load_state_dict(enc_t.state_dict())
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(enc_o(x), enc_t(x))


def test_torchrl_networks_run_in_our_rollout_with_more_batch_dims():
    """TorchRL's RSSMPrior/Posterior fail on [B1, B2] batches in their rollout; ours runs them."""
    import torchrl.modules as trm

    prior = trm.RSSMPrior(Bounded(-1, 1, (A,)), action_dim=A, hidden_dim=H, rnn_hidden_dim=H, state_dim=S)
    post = trm.RSSMPosterior(hidden_dim=H, state_dim=S, rnn_hidden_dim=H, obs_embed_dim=E)
    rollout = RSSMRollout(prior, post)
    td = TensorDict({"action": torch.randn(2, 3, 5, A), ("next", "encoded_latents"): torch.randn(2, 3, 5, E)}, [2, 3, 5])
    rollout(td)
    assert td["next", "state"].shape == (2, 3, 5, S)


def test_whole_torchrl_dreamer_world_model_state_dict_loads_strictly():
    """Our classes in TorchRL's Dreamer layout hold exactly TorchRL's parameter names."""
    import torchrl.modules as trm
    import torchrl_rssm.modules as ours
    from torchrl.modules import MLP

    spec = Bounded(-1, 1, (A,))

    def build(lib):
        return _torchrl_dreamer_world_model(
            lib.ObsEncoder(in_channels=3), lib.ObsDecoder(latent_dim=230),
            lib.RSSMPrior(spec, hidden_dim=200, rnn_hidden_dim=200, state_dim=30, action_dim=A),
            lib.RSSMPosterior(hidden_dim=200, state_dim=30, rnn_hidden_dim=200, obs_embed_dim=1024),
            MLP(in_features=230, out_features=1, depth=2, num_cells=64), lib.RSSMRollout)

    theirs, mine = build(trm), build(ours)
    assert set(mine.state_dict()) == set(theirs.state_dict())
    mine.load_state_dict(theirs.state_dict())  # strict
