"""Scoring candidates with world models other than this package's RSSM.

- :class:`TensorReturns`: any prior with TorchRL's call convention
  ``prior(state, belief, action) -> (mean, std, state, belief)``, DreamerV3's categorical
  prior, and any reward ``reward(state, belief)`` (two-hot heads decoded to their mean,
  optionally weighted by a continuation head), rolled out by :func:`~torchrl_rssm.modules.engine.rollout_prior`
  (the loop of :func:`~torchrl_rssm.modules.imagine`);
- :class:`TensorDictReturns` / :class:`EnvStepReturns`: foreign tensordict modules
  (a model-based env's ``world_model``) or any stateless env, one batched tensordict
  per step, no ``env.rollout``.

The planner takes the tensor path for a ``DreamerEnv`` whose prior and reward head
:mod:`torchrl_rssm.interop` finds, and these tensordict paths otherwise.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torch import nn
from torchrl.envs.utils import ExplorationType, set_exploration_type, step_mdp

from ..interop import strip_next
from ..modules.engine import rollout_prior


def head_value(out) -> torch.Tensor:
    """A head's prediction as a value: DreamerV3's heads return ``(logits, value)`` (a two-hot
    reward head's decoded expectation, a continuation head's probability): the last element."""
    return out[-1] if isinstance(out, (tuple, list)) else out


class TensorReturns(nn.Module):
    """Sum of predicted rewards with any prior that :func:`~torchrl_rssm.modules.engine.rollout_prior` steps.

    The prior follows TorchRL's convention: ``prior(state, belief, action) -> (mean, std,
    state, belief)`` (TorchRL's ``RSSMPrior``, or a hand-written model) or DreamerV3's
    categorical one (:class:`~torchrl_rssm.modules.RSSMPriorV3`, ours or TorchRL's:
    ``-> (logits, state, belief)``); ``reward(state, belief)`` returns ``[..., 1]`` or
    ``(logits, value)`` (a two-hot head such as
    :class:`~torchrl_rssm.modules.DreamerV3RewardHead`: its decoded expectation is summed).
    With a ``continuation`` head (``(logits, probability)``, e.g.
    :class:`~torchrl_rssm.modules.DreamerV3ContinuationHead`) the reward of step t is
    weighted by the probability that the episode is still running: the product of the
    continuation probabilities of the latents before it (the reward on entering a
    terminal latent counts, the ones after it do not). One tensor step per imagined step;
    the heads run once after the loop.

    Args:
        prior, reward: the networks.
        state_dim, belief_dim: sizes of the latent parts (read from the prior when
            it has ``state_dim`` / ``rnn_hidden_dim``).
        sample: use the prior's sample (default) or its mean (its mode when categorical).
        continuation: optional continuation head ``(state, belief) -> probability``.

    Examples:
        >>> import torch
        >>> from torchrl.modules.models.model_based import RSSMPrior as TorchRLPrior
        >>> from torchrl.data import Bounded
        >>> prior = TorchRLPrior(Bounded(-1, 1, (2,)), hidden_dim=8, rnn_hidden_dim=8, state_dim=4)
        >>> returns = TensorReturns(prior, lambda state, belief: state.sum(-1, keepdim=True), sample=False)
        >>> returns(torch.zeros(3, 4), torch.zeros(3, 8), torch.randn(3, 10, 5, 2)).shape  # [M envs, N candidates]
        torch.Size([3, 10])
        >>> from torchrl_rssm.modules import DreamerV3ContinuationHead, DreamerV3RewardHead, RSSMPriorV3
        >>> prior = RSSMPriorV3(action_shape=(2,), hidden_dim=8, rnn_hidden_dim=8, num_categoricals=2,
        ...                     num_classes=4, action_dim=2)
        >>> returns = TensorReturns(prior, DreamerV3RewardHead(16, num_cells=8),
        ...                         continuation=DreamerV3ContinuationHead(16, num_cells=8))
        >>> with torch.no_grad():  # the planners score without autograd
        ...     scores = returns(torch.zeros(3, 8), torch.zeros(3, 8), torch.randn(3, 10, 5, 2))
        >>> scores.shape, bool((scores == 0).all())  # a zero-initialised two-hot head predicts exactly 0
        (torch.Size([3, 10]), True)
    """

    def __init__(self, prior: nn.Module, reward: nn.Module, state_dim: int | None = None,
                 belief_dim: int | None = None, sample: bool = True, continuation: nn.Module | None = None):
        super().__init__()
        self.prior, self.reward, self.sample = prior, reward, sample
        self.continuation = continuation
        self.state_dim = state_dim if state_dim is not None else getattr(prior, "state_dim", None)
        self.belief_dim = belief_dim if belief_dim is not None else getattr(prior, "rnn_hidden_dim", None)

    def forward(self, state: torch.Tensor, belief: torch.Tensor, actions: torch.Tensor,
                noise: torch.Tensor | None = None) -> torch.Tensor:
        """``noise`` (time-major ``[H, M * N, F]``: standard normal, or uniforms ``[H, M * N, C]``
        for categorical latents) fixes the prior samples."""
        M, N, H, A = actions.shape
        s = state.unsqueeze(1).expand(M, N, *state.shape[1:]).reshape(M * N, *state.shape[1:])
        h = belief.unsqueeze(1).expand(M, N, *belief.shape[1:]).reshape(M * N, *belief.shape[1:])
        acts = actions.reshape(M * N, H, A).transpose(0, 1)  # time-major [H, M * N, A]
        out = rollout_prior(self.prior, s, h, action=acts, sample=self.sample, noise=noise)
        states, beliefs = out["state"].transpose(0, 1), out["belief"].transpose(0, 1)  # [M * N, H, F]
        rewards = head_value(self.reward(states, beliefs)).reshape(M, N, H)
        if self.continuation is not None:
            alive = head_value(self.continuation(states, beliefs)).reshape(M, N, H)
            # step t counts if the episode went on after every latent before it
            weights = torch.cat([torch.ones_like(alive[..., :1]), alive[..., :-1].cumprod(-1)], -1)
            rewards = rewards * weights
        return rewards.sum(-1)


def _mask_after_done(rewards: torch.Tensor, dones: torch.Tensor) -> torch.Tensor:
    """Rewards after the first ``done`` of a sequence count zero (the one at ``done`` counts)."""
    d = dones.to(torch.int64)
    return torch.where(d.cumsum(-1) > d, torch.zeros_like(rewards), rewards)


class TensorDictReturns:
    """Scores candidates by calling a model-based env's ``world_model`` on one batched
    tensordict per step (foreign modules; no ``env.rollout``, no spec checks).

    The world model reads the latent keys and ``action`` and writes the next latent
    under the same keys and the reward under ``reward_key`` without ``"next"``, as in
    TorchRL's ``ModelBasedEnvBase._step``. Stochastic reward heads are read at their
    deterministic value (the mean), as PlaNet plans with the reward mean.
    """

    def __init__(self, world_model: nn.Module, action_key: NestedKey, reward_key: NestedKey,
                 done_keys: Sequence[NestedKey] = ()):
        self.world_model, self.action_key = world_model, action_key
        self.reward_key = strip_next(reward_key)
        self.done_keys = [strip_next(k) for k in done_keys]

    def __call__(self, start: TensorDictBase, actions: torch.Tensor) -> torch.Tensor:
        M, N, H, A = actions.shape
        td = start.unsqueeze(1).expand(M, N).reshape(M * N).clone()
        acts = actions.reshape(M * N, H, A)
        rewards, dones = [], []
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            for t in range(H):
                td.set(self.action_key, acts[:, t])
                td = self.world_model(td)
                rewards.append(td.get(self.reward_key).reshape(M * N))
                dones.append(_any_done(td, self.done_keys, M * N))
        rewards = torch.stack(rewards, -1)
        if any(d is not None for d in dones):
            rewards = _mask_after_done(rewards, torch.stack([_or_false(d, M * N, rewards) for d in dones], -1))
        return rewards.sum(-1).view(M, N)


class EnvStepReturns:
    """Last resort for a stateless, not batch-locked TorchRL env that is not model-based:
    ``env.step`` on one batched tensordict per step (what TorchRL's planners do through
    ``env.rollout``, minus the rollout machinery). Rewards after ``done`` are masked.
    """

    def __init__(self, env, action_key: NestedKey, reward_key: NestedKey):
        self.env, self.action_key, self.reward_key = env, action_key, reward_key
        self.done_keys = [("next", *((k,) if isinstance(k, str) else k)) for k in env.done_keys
                          if (k if isinstance(k, str) else k[-1]) == "done"]

    def __call__(self, start: TensorDictBase, actions: torch.Tensor) -> torch.Tensor:
        M, N, H, A = actions.shape
        td = start.unsqueeze(1).expand(M, N).reshape(M * N).clone()
        acts = actions.reshape(M * N, H, A)
        rewards, dones = [], []
        for t in range(H):
            td.set(self.action_key, acts[:, t])
            td = self.env.step(td)
            rewards.append(td.get(self.reward_key).reshape(M * N))
            dones.append(_any_done(td, self.done_keys, M * N))
            td = step_mdp(td, keep_other=True)
        rewards = torch.stack(rewards, -1)
        if any(d is not None for d in dones):
            rewards = _mask_after_done(rewards, torch.stack([_or_false(d, M * N, rewards) for d in dones], -1))
        return rewards.sum(-1).view(M, N)


def _any_done(td: TensorDictBase, keys, n: int) -> torch.Tensor | None:
    flags = [td.get(k, None) for k in keys]
    flags = [f.reshape(n, -1).any(-1) for f in flags if f is not None]
    if not flags:
        return None
    out = flags[0]
    for f in flags[1:]:
        out = out | f
    return out


def _or_false(flag: torch.Tensor | None, n: int, like: torch.Tensor) -> torch.Tensor:
    return flag if flag is not None else torch.zeros(n, dtype=torch.bool, device=like.device)
