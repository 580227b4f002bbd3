"""Imagination: the planners' fused no-grad scorer (modules/imagination.py) against the plain prior
scan (modules/rssm.py) with the same noise, weight updates, copies and compilation; the
differentiable scan (actor in the loop); episode starts filtered from the first observation in
observe."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from planning_problems import A, BOX, D, HID, S, small_networks
from torchrl_rssm.modules import FastRSSMReturns, RSSMPosterior, RSSMPrior, RSSMRollout, imagine
from torchrl_rssm.planners import CEMPlanner, TensorReturns

def test_fast_returns_match_reference_loop_with_the_same_noise():
    prior, reward = small_networks()
    M, N, H = 3, 5, 4
    state, belief = torch.randn(M, S), torch.randn(M, D)
    actions = torch.rand(M, N, H, A) * 2 - 1
    noise = torch.randn(H, M, N, S)
    with torch.no_grad():
        fast = FastRSSMReturns(prior, reward)(state, belief, actions, noise=noise)
        # reference: the prior's own forward, one step at a time, candidates flattened
        s = state.repeat_interleave(N, 0)
        h = belief.repeat_interleave(N, 0)
        total = torch.zeros(M * N)
        for t in range(H):
            mean, std, _, h = prior(s, h, actions.reshape(M * N, H, A)[:, t])
            s = mean + std * noise[t].reshape(M * N, S)
            total += reward(s, h).squeeze(-1)
        # the fused path against the plain engine (what RSSMRollout.imagine runs), same noise
        start = {"state": state.repeat_interleave(N, 0), "belief": belief.repeat_interleave(N, 0)}
        plain_engine = imagine(prior, start, action=actions.reshape(M * N, H, A),
                               noise=noise.permute(1, 2, 0, 3).reshape(M * N, H, S))
        engine_returns = reward(plain_engine["state"], plain_engine["belief"]).squeeze(-1).sum(-1)
        means_only = FastRSSMReturns(prior, reward, sample=False)(state, belief, actions)
        generic = TensorReturns(prior, reward, sample=False)(state, belief, actions)
        fast_model = FastRSSMReturns(prior, reward)
        plain = fast_model.rollout(fast_model.weights(), state, belief, actions, noise)  # what compile traces
        plain_means = fast_model.rollout(fast_model.weights(), state, belief, actions, None)
    assert fast.shape == (M, N)
    torch.testing.assert_close(fast, total.view(M, N), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast, engine_returns.view(M, N), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(plain, total.view(M, N), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(means_only, generic, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(plain_means, generic, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("update", ["sgd", "fused_adam", "data_edit", "load_state_dict", "reward_only"])
def test_fast_returns_follow_weight_updates(update):
    # the folded weights must follow every kind of update, including those that leave no
    # version bump (fused optimisers, .data edits as in Polyak averaging)
    prior, reward = small_networks()
    fast, generic = FastRSSMReturns(prior, reward, sample=False), TensorReturns(prior, reward, sample=False)
    state, belief, actions = torch.randn(2, S), torch.randn(2, D), torch.rand(2, 3, 4, A) * 2 - 1
    params = [*prior.parameters(), *reward.parameters()]
    with torch.no_grad():
        before = fast(state, belief, actions)
    if update in ("sgd", "fused_adam"):
        opt = (torch.optim.SGD(params, lr=0.5) if update == "sgd" else torch.optim.Adam(params, lr=0.1, fused=True))
        sum(q.square().sum() for q in params).backward()
        opt.step()
    elif update == "data_edit":
        for q in params:
            q.data.mul_(0.5).add_(0.1)
    elif update == "load_state_dict":
        prior.load_state_dict(small_networks(seed=3)[0].state_dict())
    else:
        reward.load_state_dict(small_networks(seed=3)[1].state_dict())
    with torch.no_grad():
        after = fast(state, belief, actions)
        torch.testing.assert_close(after, generic(state, belief, actions), rtol=1e-5, atol=1e-5)
    assert (after - before).abs().max() > 1e-3


def test_fast_returns_deepcopy_after_compile_uses_its_own_networks():
    import copy

    prior, reward = small_networks()
    fast = FastRSSMReturns(prior, reward, sample=False)
    fast.compile_rollout(backend="aot_eager", fullgraph=True)
    state, belief, actions = torch.randn(2, S), torch.randn(2, D), torch.rand(2, 3, 4, A) * 2 - 1
    with torch.no_grad():
        fast(state, belief, actions)
        twin = copy.deepcopy(fast)
        for q in twin.parameters():
            q.mul_(0.5)
        expected = TensorReturns(twin.prior, twin.reward, sample=False)(state, belief, actions)
        torch.testing.assert_close(twin(state, belief, actions), expected, rtol=1e-5, atol=1e-5)


def test_inductor_compiled_rollout_on_cpu_matches_eager():
    # compile=True on CPU compiles the rollout with inductor (C++ kernels); the noise stays eager
    prior, reward = small_networks()
    eager, compiled = FastRSSMReturns(prior, reward), FastRSSMReturns(prior, reward)
    compiled.compile_rollout(fullgraph=True, dynamic=False)
    state, belief = torch.randn(2, S), torch.randn(2, D)
    actions, noise = torch.rand(2, 5, 3, A) * 2 - 1, torch.randn(3, 2, 5, S)
    with torch.no_grad():
        torch.testing.assert_close(compiled(state, belief, actions, noise), eager(state, belief, actions, noise),
                                   rtol=1e-4, atol=1e-4)
        prior.rnn.weight_hh.mul_(0.5)  # the folded weights are graph inputs: an update must not recompile
        with torch._dynamo.config.patch(error_on_recompile=True):
            torch.testing.assert_close(compiled(state, belief, actions, noise),
                                       eager(state, belief, actions, noise), rtol=1e-4, atol=1e-4)
    planner = CEMPlanner((prior, reward), 3, 2, 20, 4, action_spec=BOX, compile=True)
    action = planner.plan(state, belief)
    assert planner.returns_model._compiled is not None
    assert action.shape == (2, A) and (action.abs() <= 1).all()
    with pytest.raises(ValueError, match="scope"):
        CEMPlanner((prior, reward), 3, 2, 20, 4, action_spec=BOX, compile={"scope": "everything"})


# ------------------------------------------------------------- the differentiable path
def rollout_of(prior, seed: int = 0, embed: int = 6) -> RSSMRollout:
    torch.manual_seed(seed)
    return RSSMRollout(prior, RSSMPosterior(hidden_dim=HID, state_dim=S, rnn_hidden_dim=D, obs_embed_dim=embed))


def test_imagine_with_an_actor_in_the_loop_matches_the_prior_stepped_by_hand_and_keeps_gradients():
    prior, _ = small_networks()
    actor = nn.Sequential(nn.Linear(S + D, A), nn.Tanh())
    start = {"state": torch.randn(3, 2, S, requires_grad=True), "belief": torch.randn(3, 2, D)}
    H = 5
    noise = torch.randn(3, 2, H, S)
    out = imagine(prior, start, policy=lambda s, h: actor(torch.cat([s, h], -1)), horizon=H, noise=noise)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "belief": (3, 2, H, D), "state": (3, 2, H, S), "prior_mean": (3, 2, H, S), "prior_std": (3, 2, H, S),
        "action": (3, 2, H, A)}
    # reference: RSSMPrior.forward step by step with the same noise
    s, h = start["state"].reshape(6, S), start["belief"].reshape(6, D)
    for t in range(H):
        a = actor(torch.cat([s, h], -1))
        mean, std, s, h = prior(s, h, a, noise[:, :, t].reshape(6, S))
        torch.testing.assert_close(out["state"][:, :, t].reshape(6, S), s)
        torch.testing.assert_close(out["belief"][:, :, t].reshape(6, D), h)
        torch.testing.assert_close(out["action"][:, :, t].reshape(6, A), a)
    # RSSMRollout.imagine is this engine: same numbers with the same noise
    via_rollout = rollout_of(prior).imagine(start, policy=lambda s, h: actor(torch.cat([s, h], -1)), horizon=H,
                                            noise=noise)
    for k in out:
        torch.testing.assert_close(via_rollout[k], out[k])
    # gradients flow through the dynamics to the actor, the prior and the start latents
    out["state"][:, :, -1].sum().backward()
    assert actor[0].weight.grad.abs().sum() > 0 and start["state"].grad.abs().sum() > 0
    assert prior.rnn.weight_hh.grad.abs().sum() > 0


def test_imagine_bad_input_is_named():
    prior, _ = small_networks()
    start = {"state": torch.zeros(2, S), "belief": torch.zeros(2, D)}
    with pytest.raises(ValueError, match="horizon"):
        imagine(prior, start, policy=lambda s, h: torch.zeros(2, A), horizon=0)
    with pytest.raises(ValueError, match="exactly one"):
        imagine(prior, start)
    with pytest.raises(ValueError, match=r"\[\*B, H, A\]"):
        imagine(prior, start, action=torch.zeros(3, 4, A))


# ----------------------------------------------- episode starts: the first observation filtered
def test_observe_starts_episodes_from_the_first_observation_filtered():
    """At an is_init row the latent entering the step is h_0 = f(0, 0, a=0), s_0 ~ q(h_0, e(o_t)) with o_t
    the root observation: the same as filtering the rest of the sequence from that start."""
    prior, _ = small_networks()
    rollout = rollout_of(prior)
    B, T, E, k = 2, 6, 6, 3
    emb, act, root = torch.randn(B, T, E), torch.randn(B, T, A), torch.randn(B, T, E)
    noise, init_noise = torch.randn(B, T, S), torch.randn(B, T, S)
    is_init = torch.zeros(B, T, 1, dtype=torch.bool)
    is_init[:, 0] = is_init[:, k] = True
    with torch.no_grad():
        out = rollout.observe(emb, act, is_init=is_init, noise=noise, init_embedding=root, init_noise=init_noise)
        # by hand: h_0 from the zero latent and a zero action, then the posterior on the root observation
        h0 = prior.transition(torch.zeros(1, S), torch.zeros(1, D), torch.zeros(1, A))
        mean, std = rollout.posterior.stats(h0.expand(B, D), root[:, k])
        start = {"state": mean + std * init_noise[:, k], "belief": h0.expand(B, D)}
        rest = rollout.observe(emb[:, k:], act[:, k:], start=start, noise=noise[:, k:])
        first = rollout.initial_filtered(root[:, 0], init_noise[:, 0])
        head = rollout.observe(emb[:, :k], act[:, :k], start=first, noise=noise[:, :k])
        # without the root observation (foreign data): the zero latent, as before
        zeros = rollout.observe(emb, act, is_init=is_init, noise=noise)
        zero_rest = rollout.observe(emb[:, k:], act[:, k:], noise=noise[:, k:])
    for key in out:
        torch.testing.assert_close(out[key][:, k:], rest[key])
        torch.testing.assert_close(out[key][:, :k], head[key])
        torch.testing.assert_close(zeros[key][:, k:], zero_rest[key])
    assert (out["belief"][:, k:] - zeros["belief"][:, k:]).abs().max() > 1e-3
    # only is_init rows read the root observation
    other = root.clone()
    other[:, 1] += 5.0
    with torch.no_grad():
        again = rollout.observe(emb, act, is_init=is_init, noise=noise, init_embedding=other, init_noise=init_noise)
    torch.testing.assert_close(again["belief"], out["belief"])
    with pytest.raises(ValueError, match="init_embedding"):
        rollout.observe(emb, act, is_init=is_init, init_embedding=root[:, :2])
