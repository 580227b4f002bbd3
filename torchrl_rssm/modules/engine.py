"""The imagination engine: the one prior-only loop of the package, for either latent distribution.

:func:`rollout_prior` (time-major) and :func:`imagine` (``[*B]`` batches) step a prior from
start latents with given actions or a ``policy(state, belief)`` in the loop. Every
imagination runs here: :meth:`~torchrl_rssm.modules.RSSMRollout.imagine` (PlaNet's Gaussian
latent), :meth:`~torchrl_rssm.modules.RSSMRolloutV3.imagine` (DreamerV3's categorical latent),
Dreamer's actor loss, and the planners' :class:`~torchrl_rssm.planners.TensorReturns`.

The loop reads the prior through its interface, not its class, so that this module depends
on neither model module (both import it):

- this package's priors (:class:`~torchrl_rssm.modules.RSSMPrior`,
  :class:`~torchrl_rssm.modules.RSSMPriorV3`) offer ``project_action(action) -> (weights,
  projected)`` (the action's share of the first layer, once for all steps) and
  ``step_projected(state, belief, projected, weights, noise)``, the step core;
- the latent is categorical when the prior has ``num_categoricals`` (``state`` is C
  flattened one-hots, ``noise`` uniforms ``[.., C]``, outputs ``prior_logits``), Gaussian
  otherwise (``noise`` standard normal ``[.., S]``, outputs ``prior_mean``, ``prior_std``);
- any other prior is called with TorchRL's convention: ``prior(state, belief, action)``
  returning ``(mean, std, state, belief)`` or, categorical, ``(logits, state, belief)``.

The planners' fused no-grad scorer for PlaNet's prior
(:class:`~torchrl_rssm.modules.FastRSSMReturns`) spells the Gaussian step out again for
speed; a test ties it to this loop.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

Latent = dict[str, torch.Tensor]
Policy = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _time_major(x: torch.Tensor, batch_ndim: int) -> torch.Tensor:
    """``[*B, T, *F] -> [T, prod(B), *F]`` (contiguous per-step slices for the loop)."""
    return x.reshape(-1, *x.shape[batch_ndim:]).transpose(0, 1).contiguous()


def _batch_major(x: torch.Tensor, batch: torch.Size) -> torch.Tensor:
    """``[T, prod(B), *F] -> [*B, T, *F]``."""
    return x.transpose(0, 1).reshape(*batch, x.shape[0], *x.shape[2:])


def is_categorical(prior: nn.Module) -> bool:
    """Whether ``prior``'s latent is categorical (DreamerV3's, this package's or TorchRL's)."""
    return hasattr(prior, "num_categoricals")


def _has_step_core(prior: nn.Module) -> bool:
    return callable(getattr(prior, "project_action", None)) and callable(getattr(prior, "step_projected", None))


def _mode(logits: torch.Tensor, unimix: float) -> torch.Tensor:
    """The most likely one-hot per categorical, flattened ``[..., C*K]``, straight-through like a sample."""
    probs = torch.softmax(logits, -1)
    if unimix:
        probs = (1 - unimix) * probs + unimix / logits.shape[-1]
    one_hot = F.one_hot(probs.argmax(-1), probs.shape[-1]).to(probs.dtype)
    return (probs + (one_hot - probs).detach()).flatten(-2)


def rollout_prior(
    prior: nn.Module,
    state: torch.Tensor,
    belief: torch.Tensor,
    action: torch.Tensor | None = None,
    policy: Policy | None = None,
    horizon: int | None = None,
    noise: torch.Tensor | None = None,
    sample: bool = True,
    step: Callable | None = None,
) -> dict[str, torch.Tensor]:
    """The imagination loop, time-major: ``state [N, S]``, ``belief [N, D]`` -> ``[H, N, F]`` each.

    ``action`` is ``[H, N, A]`` (or ``policy`` and ``horizon``); ``noise`` ``[H, N, S]``
    (standard normal) fixes the prior samples: s_t = mean + std * noise. Without
    ``noise``, this package's prior draws it and a foreign prior uses its own sample;
    ``sample=False`` follows the prior means. ``step`` replaces the prior's
    ``step_projected`` (e.g. a compiled version). Returns ``belief, state, prior_mean,
    prior_std, action``. :func:`imagine` is this loop on ``[*B]`` batches; the planners'
    :class:`~torchrl_rssm.planners.TensorReturns` calls it directly.

    On a categorical prior (DreamerV3's :class:`~torchrl_rssm.modules.RSSMPriorV3`) the
    same loop steps its step core (:func:`~torchrl_rssm.modules.imagine_step`): ``noise``
    is ``[H, N, C]`` uniforms (the inverse-CDF draws of the straight-through sample),
    ``sample=False`` follows each categorical's mode, integer actions are cast to the
    latent's dtype, and the outputs are ``belief, state, prior_logits, action``.

    Examples:
        >>> import torch
        >>> from torchrl_rssm.modules import RSSMPrior, RSSMPriorV3
        >>> prior = RSSMPrior(None, action_dim=2, state_dim=4, rnn_hidden_dim=8, hidden_dim=8)
        >>> out = rollout_prior(prior, torch.zeros(5, 4), torch.zeros(5, 8), action=torch.zeros(7, 5, 2),
        ...                     sample=False)
        >>> out["belief"].shape, torch.equal(out["state"], out["prior_mean"])  # time-major; means followed
        (torch.Size([7, 5, 8]), True)
        >>> prior = RSSMPriorV3(action_shape=(2,), hidden_dim=8, rnn_hidden_dim=8, num_categoricals=3,
        ...                     num_classes=4, action_dim=2)
        >>> out = rollout_prior(prior, torch.zeros(5, 12), torch.zeros(5, 8), action=torch.zeros(7, 5, 2))
        >>> out["state"].shape, out["prior_logits"].shape
        (torch.Size([7, 5, 12]), torch.Size([7, 5, 3, 4]))
    """
    if (action is None) == (policy is None):
        raise ValueError("imagine: pass exactly one of `action` ([*B, H, A]) or `policy`.")
    if action is not None:
        horizon = action.shape[0]
    if horizon is None:
        raise ValueError("imagine: `horizon` is required with a policy.")
    if not isinstance(horizon, int) or horizon < 1:
        raise ValueError(f"imagine: `horizon` must be a positive int, got {horizon!r}.")
    N = state.shape[0]
    categorical = is_categorical(prior)
    ours = _has_step_core(prior)
    if categorical:
        names = ("belief", "state", "prior_logits", "action")
        unimix = getattr(prior, "unimix", 0.0)
        if action is not None and not action.is_floating_point():  # index or one-hot integer actions
            action = action.to(state.dtype)
        if policy is not None:
            user_policy = policy

            def policy(s, h):
                a = user_policy(s, h)
                return a if a.is_floating_point() else a.to(s.dtype)
        if ours and sample and noise is None:
            noise = torch.rand(horizon, N, prior.num_categoricals, device=state.device)
    else:
        names = ("belief", "state", "prior_mean", "prior_std", "action")
        if ours and sample and noise is None:
            noise = torch.randn(horizon, N, prior.state_dim, device=state.device, dtype=state.dtype)
    if noise is not None and sample:
        noise = noise.reshape(horizon, N, -1).unbind(0)  # unbind, not [t]: O(H) backward, not O(H^2)
    actions = action.unbind(0) if action is not None else None
    # the path is chosen once, before the loop: one step function of (state, belief, a_t, t)
    if ours:
        step = step if step is not None else prior.step_projected
        if action is not None:  # the action's share of the first layer: one matmul over all steps
            weights, act_proj = prior.project_action(action)
            act_proj = act_proj.unbind(0)
        elif categorical:  # the block GRU's weights are prepared with each projection
            weights = act_proj = None
        else:
            weights, act_proj = prior.project_action(state.new_zeros(1, prior.action_dim))[0], None

        def advance(s, h, a_t, t):
            if act_proj is not None:
                w, a_proj = weights, act_proj[t]
            elif categorical:
                w, a_proj = prior.project_action(a_t)
            else:
                w, a_proj = weights, prior.project_action(a_t)[1]
            if sample:
                return step(s, h, a_proj, w, noise[t])
            h = prior.transition_projected(s, h, a_proj, w)
            if categorical:
                logits = prior.logits(h)
                return _mode(logits, unimix), h, logits
            mean, std = prior.stats(h)
            return mean, h, mean, std
    elif categorical:  # a foreign prior with TorchRL's convention, stepped as it is (its own sampler)

        def advance(s, h, a_t, t):
            logits, drawn, h = prior(s, h, a_t)
            return (drawn if sample else _mode(logits, unimix)), h, logits
    else:

        def advance(s, h, a_t, t):
            mean, std, drawn, h = prior(s, h, a_t)
            s = (drawn if noise is None else mean + std * noise[t]) if sample else mean
            return s, h, mean, std

    outs: dict[str, list] = {k: [] for k in names}
    for t in range(horizon):
        a_t = actions[t] if actions is not None else policy(state, belief).reshape(N, -1)
        state, belief, *stats = advance(state, belief, a_t, t)
        for k, v in zip(outs, (belief, state, *stats, a_t)):
            outs[k].append(v)
    return {k: torch.stack(v) for k, v in outs.items()}


def imagine(
    prior: nn.Module,
    start: Latent,
    action: torch.Tensor | None = None,
    policy: Policy | None = None,
    horizon: int | None = None,
    noise: torch.Tensor | None = None,
    step: Callable | None = None,
) -> Latent:
    """Open-loop prior rollout from ``start`` (``{"state": [*B, S], "belief": [*B, D]}``).

    Give either ``action`` (``[*B, H, A]``) or ``policy`` (``policy(state [N, S], belief
    [N, D]) -> action [N, A]``, called once per step with ``N = prod(B)``) and ``horizon``.
    ``noise`` (``[*B, H, S]``) fixes the prior samples. Returns ``belief, state,
    prior_mean, prior_std, action``, each ``[*B, H, F]``; step k holds the latent after
    k + 1 transitions. Differentiable; no parameter is updated. On a categorical prior
    (DreamerV3's) ``noise`` is ``[*B, H, C]`` uniforms and the outputs are ``belief, state,
    prior_logits, action`` (see :func:`rollout_prior`).

    Examples:
        >>> import torch
        >>> from torchrl_rssm.modules import RSSMPrior
        >>> prior = RSSMPrior(None, action_dim=2, state_dim=4, rnn_hidden_dim=8, hidden_dim=8)
        >>> start = {"state": torch.zeros(3, 5, 4), "belief": torch.zeros(3, 5, 8)}
        >>> actor = torch.nn.Linear(12, 2)
        >>> out = imagine(prior, start, policy=lambda s, h: torch.tanh(actor(torch.cat([s, h], -1))), horizon=15)
        >>> out["state"].shape, out["action"].shape
        (torch.Size([3, 5, 15, 4]), torch.Size([3, 5, 15, 2]))
        >>> out["belief"].sum().backward()
        >>> actor.weight.grad is not None
        True
    """
    batch = start["state"].shape[:-1]
    nb = len(batch)
    if action is not None and action.shape[:-2] != batch:
        raise ValueError(
            f"imagine: action must have shape [*B, H, A] with B={tuple(batch)}, got {tuple(action.shape)}."
        )
    state = start["state"].reshape(-1, start["state"].shape[-1])
    belief = start["belief"].reshape(-1, start["belief"].shape[-1])
    if noise is None and not _has_step_core(prior) and not is_categorical(prior):
        h = action.shape[-2] if action is not None else horizon
        if isinstance(h, int) and h >= 1:  # as for ours: s_t = mean + std * noise, noise drawn here
            noise = torch.randn(h, state.shape[0], state.shape[-1], device=state.device, dtype=state.dtype)
    elif noise is not None:
        noise = _time_major(noise, nb)
    out = rollout_prior(prior, state, belief, action=None if action is None else _time_major(action, nb),
                        policy=policy, horizon=horizon, noise=noise, step=step)
    return {k: _batch_major(v, batch) for k, v in out.items()}
