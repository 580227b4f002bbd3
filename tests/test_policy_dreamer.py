"""Dreamer's acting policy (policies/dreamer.py) on the shared belief filter: a TorchRL
ProbabilisticActor (TanhNormal) samples under RANDOM, gives its mode under DETERMINISTIC,
exploration noise on top under RANDOM only; under a TorchRL Collector the carried latents
equal those training's observe recomputes; the default observation transform."""
from __future__ import annotations

import functools

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import nn
from torchrl.collectors import Collector
from torchrl.data import Bounded, Composite, Unbounded
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import ProbabilisticActor, TanhNormal

from test_policy import HID, OBS, SMALL, D, S, check_training_filter_reproduces, deterministic_posterior, pendulum
from torchrl_rssm.envs import dequantize
from torchrl_rssm.modules import make_world_model
from torchrl_rssm.policies import BeliefFilter, DreamerPolicy, PlaNetPolicy, dequantize_pixels

SPEC = Bounded(-2, 2, (1,))


class LatentNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(S + D, 2), NormalParamExtractor())

    def forward(self, state, belief):
        return self.net(torch.cat([state, belief], -1))


def tanh_actor(spec=SPEC) -> ProbabilisticActor:
    module = TensorDictModule(LatentNet(), in_keys=["state", "belief"], out_keys=["loc", "scale"])
    return ProbabilisticActor(module, in_keys=["loc", "scale"], out_keys=["action"], spec=spec,
                              distribution_class=TanhNormal,
                              distribution_kwargs={"low": spec.space.low, "high": spec.space.high})


def make_dreamer(exploration_noise: float = 0.3, spec=SPEC, **wm_kw) -> DreamerPolicy:
    torch.manual_seed(0)
    wm = make_world_model(Composite(observation=Unbounded((OBS,))), spec, state_dim=S, belief_dim=D,
                          hidden_dim=HID, **wm_kw)
    return DreamerPolicy(wm, tanh_actor(spec), exploration_noise=exploration_noise)


def batch(n: int = 256) -> TensorDict:
    torch.manual_seed(3)
    return TensorDict(observation=torch.randn(n, OBS), belief=torch.randn(n, D),
                      is_init=torch.zeros(n, 1, dtype=torch.bool), batch_size=[n])


def test_actor_mode_under_deterministic_sample_plus_noise_under_random():
    policy = make_dreamer(exploration_noise=0.3)
    quiet = DreamerPolicy(policy.world_model, policy.actor, exploration_noise=0.0)
    td = batch()
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        a1 = policy(td.clone())
        mode = policy.actor(a1.select("state", "belief"))["action"]  # the TanhNormal's mode, no noise
    torch.testing.assert_close(a1["action"], mode)
    with torch.no_grad():  # the next belief uses the executed action
        expected = policy.world_model.rollout.prior.transition(a1["state"], a1["belief"], a1["action"])
    torch.testing.assert_close(a1["next", "belief"], expected)
    with set_exploration_type(ExplorationType.RANDOM):
        torch.manual_seed(1)
        sampled = quiet(td.clone())["action"]  # the actor's sample alone
        torch.manual_seed(1)
        noisy = policy(td.clone())["action"]  # the same sample, then N(0, 0.3^2), clipped
    assert (sampled - mode).abs().max() > 0.05  # a sample, not the mode
    assert (noisy.abs() <= 2).all()
    inside = noisy.abs() < 2
    noise = (noisy - sampled)[inside]
    assert 0.2 < noise.std() < 0.4 and noise.mean().abs() < 0.06


def test_dreamer_and_planet_policies_share_the_belief_filter():
    dreamer = make_dreamer()
    planet = PlaNetPolicy(dreamer.world_model, action_spec=SPEC, **SMALL)
    assert type(dreamer.belief_filter) is type(planet.belief_filter) is BeliefFilter
    td = batch(8)
    td["is_init"][:3] = True
    torch.manual_seed(5)
    a = dreamer(td.clone())
    torch.manual_seed(5)
    b = planet(td.clone())
    torch.testing.assert_close(a["state"], b["state"])
    torch.testing.assert_close(a["belief"], b["belief"])
    assert set(dreamer.make_tensordict_primer().primers.keys()) == {"state", "belief"}


def test_collector_carries_the_belief_as_training_recomputes_it():
    torch.manual_seed(0)
    env = pendulum(max_steps=4)
    wm = make_world_model(env.observation_spec, env.action_spec, state_dim=S, belief_dim=D, hidden_dim=HID,
                          min_std=0.0)
    deterministic_posterior(wm)
    policy = DreamerPolicy(wm, tanh_actor(env.action_spec))
    env.append_transform(policy.make_tensordict_primer())
    env.set_seed(0)
    collector = Collector(env, policy, frames_per_batch=10, total_frames=-1)  # RANDOM: samples plus noise
    try:
        data = next(iter(collector))
    finally:
        collector.shutdown()
    is_init = data["is_init"][..., 0]
    assert is_init[0] and is_init[4] and is_init[8] and is_init.sum() == 3
    check_training_filter_reproduces(wm, data)


def test_bad_input_is_named():
    policy = make_dreamer()
    wm = policy.world_model
    with pytest.raises(TypeError, match="actor"):
        DreamerPolicy(wm, nn.Linear(3, 1))
    wrong = TensorDictModule(nn.Linear(S, 1), in_keys=["state"], out_keys=["action"])
    with pytest.raises(ValueError, match="belief"):
        DreamerPolicy(wm, wrong)
    no_spec = TensorDictModule(lambda s, h: s[..., :1], in_keys=["state", "belief"], out_keys=["action"])
    with pytest.raises(ValueError, match="action_spec"):
        DreamerPolicy(wm, no_spec)
    with pytest.raises(ValueError, match="exploration_noise"):
        DreamerPolicy(wm, policy.actor, exploration_noise=-0.1)
    with pytest.raises(KeyError, match="InitTracker"):
        policy(TensorDict(observation=torch.randn(2, OBS), batch_size=[2]))
    with pytest.raises(ValueError, match=r"is_init.*\[\*B, 1\]"):
        policy.belief_filter.filter(torch.randn(2, OBS), None, torch.zeros(2, dtype=torch.bool))


@pytest.mark.parametrize("kind", ["planet", "dreamer"])
def test_pixels_are_dequantised_by_default_as_in_training(kind):
    """The policies' default observation transform: uint8 pixels get the replay buffer's 5-bit
    dequantisation before the encoder; observation_transform=None turns it off."""
    torch.manual_seed(0)
    spec = Bounded(-1, 1, (1,))
    wm = make_world_model(Composite(pixels=Unbounded((3, 64, 64))), spec, state_dim=S, belief_dim=D, hidden_dim=HID,
                          channels=2)
    make = (lambda **kw: PlaNetPolicy(wm, action_spec=spec, **SMALL, **kw)) if kind == "planet" else (
        lambda **kw: DreamerPolicy(wm, tanh_actor(spec), **kw))
    default, off = make(), make(observation_transform=None)
    assert default.belief_filter.observation_transform is dequantize_pixels
    pixels = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    is_init, zeros = torch.ones(2, 1, dtype=torch.bool), torch.zeros(2, S)
    rollout = wm.rollout
    with torch.no_grad():
        torch.manual_seed(1)
        s_default, _ = default.belief_filter.filter(pixels, None, is_init, noise=zeros)
        torch.manual_seed(1)
        expected = rollout.initial_filtered(wm.encoder(dequantize(pixels, bits=5)), zeros)["state"]
        s_off, _ = off.belief_filter.filter(pixels, None, is_init, noise=zeros)
        undequantised = rollout.initial_filtered(wm.encoder(pixels), zeros)["state"]
    torch.testing.assert_close(s_default, expected)
    torch.testing.assert_close(s_off, undequantised)
    assert (s_default - s_off).abs().max() > 1e-6  # small networks: small, but not rounding
    # another bit depth, explicitly; vectors pass unchanged
    three = functools.partial(dequantize_pixels, bits=3)
    assert (three(pixels) * 8 % 1).max() > 0 and dequantize_pixels(zeros) is zeros
