"""torchrl_rssm.interop: the networks found inside TorchRL's world models, and to_dreamer_env."""
from __future__ import annotations

import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.data import Bounded, Composite, Unbounded
from torchrl.envs.model_based.dreamer import DreamerEnv
from torchrl.modules import (IndependentNormal, SafeModule, SafeProbabilisticModule,
                             SafeProbabilisticTensorDictSequential, SafeSequential, WorldModelWrapper)
from torchrl.modules.models.model_based import RSSMPrior as TorchRLPrior
from torchrl.modules.models.model_based import RSSMRollout as TorchRLRollout

from torchrl_rssm.interop import (find_dreamer_env_prior, find_dreamer_env_reward, find_mean_head,
                                  find_rollout_prior, strip_next, to_dreamer_env)
from torchrl_rssm.modules import RSSMPosterior, make_world_model

S, D, A = 4, 8, 2
SPEC = Bounded(-1, 1, (A,))


class _Head(nn.Module):
    """reward(belief, state): reads the belief first, so a finder must swap the arguments."""

    def __init__(self):
        super().__init__()
        self.w_b, self.w_s = torch.randn(D), torch.randn(S)

    def forward(self, belief, state):
        return (belief * self.w_b).sum(-1, keepdim=True) + (state * self.w_s).sum(-1, keepdim=True)


def _torchrl_layout(reward_out="reward", prior_out=("state", "belief")):
    prior = TorchRLPrior(SPEC, hidden_dim=D, rnn_hidden_dim=D, state_dim=S, action_dim=A)
    head = _Head()
    reward = SafeProbabilisticTensorDictSequential(
        SafeModule(head, in_keys=["belief", "state"], out_keys=["loc"]),
        SafeProbabilisticModule(in_keys=["loc"], out_keys=[reward_out], distribution_class=IndependentNormal,
                                distribution_kwargs={"scale": 1.0, "event_dim": 1}),
    )
    transition = SafeSequential(SafeModule(prior, in_keys=["state", "belief", "action"],
                                           out_keys=["_", "_", *prior_out]))
    return WorldModelWrapper(transition, reward), prior, head


def test_finds_torchrl_dreamer_networks_in_the_env_its_world_model_and_transition():
    world_model, prior, head = _torchrl_layout()
    env = DreamerEnv(world_model, prior_shape=torch.Size([S]), belief_shape=torch.Size([D]))
    for model in (env, world_model, world_model[0]):
        assert find_dreamer_env_prior(model) is prior
    # the reward's mean: the loc network, called as (state, belief) although it reads (belief, state)
    reward = find_dreamer_env_reward(env, reward_key=("next", "reward"))
    state, belief = torch.randn(3, S), torch.randn(3, D)
    torch.testing.assert_close(reward(state, belief), head(belief, state))
    # with TorchRL's env itself: one step's predicted mean reward is what the found head gives
    td = TensorDict({"state": state, "belief": belief, "action": torch.zeros(3, A)}, [3])
    out = world_model(td.clone())
    torch.testing.assert_close(reward(out["state"], out["belief"]), out["loc"])


def test_other_layouts_are_not_taken_for_the_dreamer_one():
    world_model, _, _ = _torchrl_layout(reward_out="other")
    assert find_dreamer_env_reward(world_model, reward_key="reward") is None  # writes another key
    assert find_dreamer_env_reward(world_model) is not None  # no key asked
    wrong_keys, _, _ = _torchrl_layout(prior_out=("h", "s"))
    assert find_dreamer_env_prior(wrong_keys) is None
    assert find_dreamer_env_prior(wrong_keys, state_key="h", belief_key="s") is None  # in_keys differ
    two = TensorDictSequential(wrong_keys[0][0], TensorDictModule(nn.Identity(), ["state"], ["x"]))
    assert find_dreamer_env_prior(two) is None  # a transition of two modules
    assert find_dreamer_env_prior(nn.Linear(2, 2)) is None and find_dreamer_env_reward(nn.Linear(2, 2)) is None
    three = TensorDictSequential(*[TensorDictModule(nn.Identity(), ["state", "belief"], ["loc"])] * 3)
    assert find_mean_head(three) is None
    assert find_mean_head(TensorDictModule(nn.Identity(), ["state"], ["x"])) is None
    assert strip_next(("next", "reward")) == "reward" and strip_next("next") == "next"


def test_rollout_prior_ours_and_torchrls():
    wm = make_world_model(Composite(observation=Unbounded((5,))), SPEC, state_dim=S, belief_dim=D, hidden_dim=D)
    assert find_rollout_prior(wm) is wm.rollout.prior
    prior = TorchRLPrior(SPEC, hidden_dim=D, rnn_hidden_dim=D, state_dim=S, action_dim=A)
    rollout = TorchRLRollout(
        TensorDictModule(prior, ["state", "belief", "action"], [("next", "prior_mean"), ("next", "prior_std"), "_",
                                                              ("next", "belief")]),
        TensorDictModule(RSSMPosterior(state_dim=S, rnn_hidden_dim=D, obs_embed_dim=3),
                         [("next", "belief"), ("next", "encoded_latents")],
                         [("next", "posterior_mean"), ("next", "posterior_std"), ("next", "state")]))
    assert find_rollout_prior(TensorDictSequential(rollout)) is prior
    assert find_rollout_prior(nn.Linear(2, 2)) is None


def test_to_dreamer_env_shares_the_networks_and_round_trips():
    wm = make_world_model(Composite(observation=Unbounded((5,))), SPEC, state_dim=S, belief_dim=D, hidden_dim=D)
    env = to_dreamer_env(wm, SPEC)
    assert find_dreamer_env_prior(env) is wm.rollout.prior
    assert find_dreamer_env_reward(env, reward_key="reward") is wm.reward_model
    assert env.action_spec is SPEC and env.observation_spec["state"].shape == (S,)
    td = env.reset()
    assert td["belief"].shape == (D,)
