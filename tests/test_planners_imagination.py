"""The imagination engine (modules/imagination.py): the planners' fused no-grad scorer against the
plain rollout with the same noise, weight updates, copies and compilation; the differentiable
rollout (actor in the loop); episode starts filtered from the first observation in observe."""
from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torch import nn
from torchrl.data import Bounded

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
        means_only = FastRSSMReturns(prior, reward, sample=False)(state, belief, actions)
        generic = TensorReturns(prior, reward, sample=False)(state, belief, actions)
        fast_model = FastRSSMReturns(prior, reward)
        plain = fast_model.rollout(fast_model.weights(), state, belief, actions, noise)  # what compile traces
        plain_means = fast_model.rollout(fast_model.weights(), state, belief, actions, None)
    assert fast.shape == (M, N)
    torch.testing.assert_close(fast, total.view(M, N), rtol=1e-5, atol=1e-5)
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
