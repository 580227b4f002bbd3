"""The Recurrent State Space Model (PlaNet, Hafner et al. 2019): its step core and the two scans.

A latent state is a pair: the deterministic ``belief`` h_t (a GRU state) and the
stochastic ``state`` s_t (a diagonal Gaussian sample).

- :class:`RSSMPrior`: h_t = f(h_{t-1}, s_{t-1}, a_{t-1});  p(s_t | h_t).
- :class:`RSSMPosterior`: q(s_t | h_t, e(o_t)).
- :func:`imagine` (and its time-major loop :func:`rollout_prior`, both defined in
  :mod:`~torchrl_rssm.modules.engine` and re-exported here): the prior-only scan, from start
  latents with given actions or a ``policy(state, belief)`` in the loop, differentiable. It
  needs the prior only, Gaussian (this module's) or categorical (DreamerV3's
  :class:`~torchrl_rssm.modules.RSSMPriorV3`, whose rollout imagines through it too).
- :class:`RSSMRollout`: ``observe`` (posterior filtering over a ``[*B, T]`` sequence,
  episodes starting from their first observation filtered) and ``imagine`` (the scan
  above), as tensor loops. As a TensorDict module it reads and writes the same keys as
  TorchRL's ``RSSMRollout``.

The step core is written once: the prior transition (:meth:`RSSMPrior.project_action` +
:meth:`RSSMPrior.transition_projected`, the GRU step), followed by the prior head
(:meth:`RSSMPrior.step_projected`, imagining) or the posterior head
(:meth:`RSSMPosterior.stats_projected`, filtering). ``observe``, ``imagine``, the acting
belief filter and overshooting all step through it. Only the planners' fused no-grad scorer
(:class:`~torchrl_rssm.modules.imagination.FastRSSMReturns`, which imports this module)
spells it out again, tied to :func:`imagine` by a test.

The prior and posterior accept the constructor arguments and call convention of
TorchRL's :class:`~torchrl.modules.RSSMPrior` / :class:`~torchrl.modules.RSSMPosterior`
and use the same parameter names, so that changing the import is enough (and
TorchRL state dicts load). Unlike TorchRL's, they take any number of batch dims.
Standard deviations are ``softplus(x) + scale_lb`` (PlaNet's official code), which
keeps a gradient everywhere, where TorchRL clamps.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictModuleBase
from tensordict.utils import NestedKey, unravel_key
from torch import nn
from torch.nn import functional as F
from torch.nn.parameter import is_lazy

from .engine import _batch_major, _time_major, imagine, rollout_prior

__all__ = ["RSSMPosterior", "RSSMPrior", "RSSMRollout", "imagine", "rollout_prior"]

Latent = dict[str, torch.Tensor]


def _std(raw: torch.Tensor, scale_lb: float) -> torch.Tensor:
    # softplus + lower bound: stds never reach 0 and keep a gradient (PlaNet's min_std).
    return F.softplus(raw) + scale_lb


def _gru(cell: nn.GRUCell, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    # nn.GRUCell only takes 1-D or 2-D inputs: fold every leading batch dim into one.
    if x.ndim <= 2:
        return cell(x, h)
    return cell(x.reshape(-1, x.shape[-1]), h.reshape(-1, h.shape[-1])).reshape(h.shape)


def _action_dim(action_spec, action_dim: int | None) -> int:
    if action_dim is not None:
        return int(action_dim)
    if action_spec is None:
        raise ValueError("RSSMPrior needs `action_spec` or `action_dim` to size its input layer.")
    shape = action_spec.shape
    if len(shape) == 0:  # categorical index spec: the model consumes one-hot vectors
        return int(action_spec.space.n)
    return int(shape[-1])


class RSSMPrior(nn.Module):
    """Transition (prior) network: ``(s_{t-1}, h_{t-1}, a_{t-1}) -> (mu, sigma, s_t, h_t)``.

    h_t = GRU(ELU(W [s_{t-1}, a_{t-1}]), h_{t-1});  p(s_t | h_t) = N(mu, sigma),
    sigma = softplus(.) + ``scale_lb``.

    Args:
        action_spec: the environment's action spec (its last dim sizes the input);
            may be ``None`` when ``action_dim`` is given.
        hidden_dim: width of the hidden layers (input size of the GRU).
        rnn_hidden_dim: size of the belief h_t.
        state_dim: size of the stochastic state s_t.
        scale_lb: lower bound of the std (PlaNet's ``min_std``, 0.1).
        action_dim: size of the action vector, if ``action_spec`` is not given.
        device: where to create the parameters.

    Examples:
        >>> import torch
        >>> prior = RSSMPrior(None, action_dim=2)
        >>> mean, std, state, belief = prior(torch.zeros(4, 30), torch.zeros(4, 200), torch.zeros(4, 2))
        >>> belief.shape, bool((std >= 0.1).all())
        (torch.Size([4, 200]), True)
    """

    def __init__(
        self,
        action_spec=None,
        hidden_dim: int = 200,
        rnn_hidden_dim: int = 200,
        state_dim: int = 30,
        scale_lb: float = 0.1,
        action_dim: int | None = None,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        self.action_dim = _action_dim(action_spec, action_dim)
        self.action_state_projector = nn.Sequential(
            nn.Linear(state_dim + self.action_dim, hidden_dim, device=device), nn.ELU()
        )
        self.rnn = nn.GRUCell(hidden_dim, rnn_hidden_dim, device=device)
        self.rnn_to_prior_projector = nn.Sequential(
            nn.Linear(rnn_hidden_dim, hidden_dim, device=device),
            nn.ELU(),
            nn.Linear(hidden_dim, 2 * state_dim, device=device),
        )
        self.state_dim = state_dim
        self.rnn_hidden_dim = rnn_hidden_dim
        self.hidden_dim = hidden_dim
        self.scale_lb = scale_lb
        self.action_shape = torch.Size([self.action_dim])

    # The transition is written once, in two halves: ``project_action`` (the action's share of
    # the first layer, which a loop computes for all steps at once) and ``transition_projected``
    # (the recurrent part). Every rollout in the package (``observe``, ``imagine``, the belief
    # filter, the planners' reference path) goes through these two; only the planners' fused
    # no-grad scorer (``imagination.FastRSSMReturns``) spells them out again, and a test ties
    # it to them.
    def project_action(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Splits the first layer: ``(W_s, W_a a + b)``; ``action`` is ``[..., A]`` (any leading dims)."""
        layer = self.action_state_projector[0]
        w_state, w_action = layer.weight.split([self.state_dim, self.action_dim], 1)
        return w_state, F.linear(action.to(w_action.dtype), w_action, layer.bias)

    def transition_projected(self, state: torch.Tensor, belief: torch.Tensor, act_proj: torch.Tensor,
                             w_state: torch.Tensor) -> torch.Tensor:
        """h_t = GRU(ELU(W_s s_{t-1} + act_proj), h_{t-1}) with ``act_proj`` from :meth:`project_action`."""
        return _gru(self.rnn, F.elu(F.linear(state, w_state) + act_proj), belief)

    def transition(self, state: torch.Tensor, belief: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """The deterministic path: h_t = f(h_{t-1}, s_{t-1}, a_{t-1})."""
        w_state, act_proj = self.project_action(action)
        return self.transition_projected(state, belief, act_proj, w_state)

    def step_projected(self, state, belief, act_proj, w_state, noise):
        """One prior step on projected actions: ``(s_t, h_t, mean, std)`` with s_t = mean + std * noise."""
        belief = self.transition_projected(state, belief, act_proj, w_state)
        mean, std = self.stats(belief)
        return mean + std * noise, belief, mean, std

    def stats(self, belief: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of p(s_t | h_t)."""
        mean, raw = self.rnn_to_prior_projector(belief).chunk(2, dim=-1)
        return mean, _std(raw, self.scale_lb)

    def forward(
        self,
        state: torch.Tensor,
        belief: torch.Tensor,
        action: torch.Tensor,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        w_state, act_proj = self.project_action(action)
        if noise is None:
            noise = state.new_empty(*torch.broadcast_shapes(state.shape[:-1], act_proj.shape[:-1]),
                                    self.state_dim).normal_()
        state, belief, mean, std = self.step_projected(state, belief, act_proj, w_state, noise)
        return mean, std, state, belief


class RSSMPosterior(nn.Module):
    """Representation (posterior) network: ``(h_t, e(o_t)) -> (mu, sigma, s_t)``.

    Args:
        hidden_dim: width of the hidden layer.
        state_dim: size of the stochastic state.
        scale_lb: lower bound of the std.
        rnn_hidden_dim: size of the belief; with ``obs_embed_dim`` sizes the input
            layer, otherwise it is inferred lazily (as TorchRL does).
        obs_embed_dim: size of the observation embedding.
        device: where to create the parameters.

    Examples:
        >>> import torch
        >>> post = RSSMPosterior(rnn_hidden_dim=200, obs_embed_dim=1024)
        >>> mean, std, state = post(torch.zeros(3, 5, 200), torch.zeros(3, 5, 1024))
        >>> state.shape
        torch.Size([3, 5, 30])
    """

    def __init__(
        self,
        hidden_dim: int = 200,
        state_dim: int = 30,
        scale_lb: float = 0.1,
        rnn_hidden_dim: int | None = None,
        obs_embed_dim: int | None = None,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        first = (
            nn.Linear(rnn_hidden_dim + obs_embed_dim, hidden_dim, device=device)
            if rnn_hidden_dim is not None and obs_embed_dim is not None
            else nn.LazyLinear(hidden_dim, device=device)
        )
        self.obs_rnn_to_post_projector = nn.Sequential(
            first, nn.ELU(), nn.Linear(hidden_dim, 2 * state_dim, device=device)
        )
        self.hidden_dim = hidden_dim
        self.state_dim = state_dim
        self.scale_lb = scale_lb

    def project_embedding(self, belief_dim: int, obs_embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Splits the first layer: ``(W_h, W_e e + b)``, so that a loop projects all embeddings at once."""
        layer = self.obs_rnn_to_post_projector[0]
        if is_lazy(layer.weight):  # TorchRL-style lazy layer: materialise it on real shapes
            layer(obs_embedding.new_zeros(1, belief_dim + obs_embedding.shape[-1]))
        w_belief, w_emb = layer.weight.split([belief_dim, layer.in_features - belief_dim], 1)
        return w_belief, F.linear(obs_embedding, w_emb, layer.bias)

    def stats_projected(self, belief: torch.Tensor, emb_proj: torch.Tensor,
                        w_belief: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of q(s_t | h_t, e(o_t)) with ``emb_proj`` from :meth:`project_embedding`."""
        hidden = F.elu(F.linear(belief, w_belief) + emb_proj)
        mean, raw = self.obs_rnn_to_post_projector[2](hidden).chunk(2, -1)
        return mean, _std(raw, self.scale_lb)

    def stats(self, belief: torch.Tensor, obs_embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of q(s_t | h_t, e(o_t))."""
        w_belief, emb_proj = self.project_embedding(belief.shape[-1], obs_embedding)
        return self.stats_projected(belief, emb_proj, w_belief)

    def forward(
        self,
        belief: torch.Tensor,
        obs_embedding: torch.Tensor,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, std = self.stats(belief, obs_embedding)
        if noise is None:
            noise = torch.randn_like(std)
        return mean, std, mean + std * noise


class RSSMRollout(TensorDictModuleBase):
    """Runs the RSSM over time: ``observe`` (filtering) and ``imagine`` (open loop).

    **Tensor API** (the hot path; a small dict of tensors is carried, as in DreamerV3):

    - ``initial(batch_shape)``: the initial latent ``{"state": 0, "belief": 0}``.
    - ``observe(embedding, action, is_init=None, start=None, noise=None, init_embedding=None)``:
      step t consumes ``action[..., t, :]`` and the embedding of the observation that
      follows it (TorchRL's ``("next", ...)`` layout) and returns
      ``belief, state, prior_mean, prior_std, posterior_mean, posterior_std``,
      each ``[*B, T, F]``. Where ``is_init[..., t]`` is set, a new episode starts at
      that row: the latent entering step t is the episode's first observation o_t
      filtered from the zero latent with a zero action (``initial_filtered`` of
      ``init_embedding``, the embedding of the root observation), or the zero latent
      ``initial`` when ``init_embedding`` is not given.
    - ``imagine(start, action=None, policy=None, horizon=None, noise=None)``:
      prior-only rollout from ``start`` with given actions ``[*B, H, A]`` or a
      ``policy(state, belief) -> action``.

    Work that does not depend on the recurrence runs once over all T steps outside
    the loop: the action's and the embedding's projections into the first layers,
    and, when filtering, the prior head (the next step feeds on the posterior sample).

    **TensorDict API** (drop-in for TorchRL's ``RSSMRollout``): ``rssm_prior`` and
    ``rssm_posterior`` are TensorDictModules wrapping prior/posterior networks; the
    keys are taken from them. The default keys (when plain modules are given) are
    TorchRL's Dreamer keys: reads ``state``, ``belief`` (row 0, optional), ``action``,
    ``("next", "encoded_latents")``, ``is_init`` and, optionally, the root
    ``"encoded_latents"`` (``init_embedding``: the embedding of the root observation,
    read at ``is_init`` rows; :class:`~torchrl_rssm.objectives.RSSMLoss` writes it);
    writes ``("next", k)`` for
    ``prior_mean, prior_std, belief, posterior_mean, posterior_std, state``.
    Networks other than this package's (e.g. TorchRL's) run through a generic
    per-step tensor loop.

    Args:
        rssm_prior: :class:`RSSMPrior` or a TensorDictModule wrapping one.
        rssm_posterior: :class:`RSSMPosterior` or a TensorDictModule wrapping one.
        use_scan: accepted for TorchRL compatibility; ignored (the loop is on tensors).
        compile_step: compile the step functions with ``torch.compile(fullgraph=True)``.
        compile_backend, compile_mode: passed to ``torch.compile``.
        is_init_key: key of the episode-start flag.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> prior = RSSMPrior(None, action_dim=2)
        >>> post = RSSMPosterior(rnn_hidden_dim=200, obs_embed_dim=64)
        >>> rollout = RSSMRollout(prior, post)
        >>> td = TensorDict({"action": torch.zeros(4, 10, 2),
        ...                  ("next", "encoded_latents"): torch.zeros(4, 10, 64)}, [4, 10])
        >>> rollout(td)["next", "belief"].shape
        torch.Size([4, 10, 200])
        >>> out = rollout.imagine(rollout.initial([4]), action=torch.zeros(4, 12, 2))
        >>> out["state"].shape
        torch.Size([4, 12, 30])
    """

    def __init__(
        self,
        rssm_prior: nn.Module,
        rssm_posterior: nn.Module,
        use_scan: bool = False,
        compile_step: bool = False,
        compile_backend: str = "inductor",
        compile_mode: str | None = None,
        is_init_key: NestedKey = "is_init",
    ):
        super().__init__()
        if not isinstance(rssm_prior, TensorDictModule):
            rssm_prior = TensorDictModule(
                rssm_prior,
                in_keys=["state", "belief", "action"],
                out_keys=[("next", "prior_mean"), ("next", "prior_std"), "_", ("next", "belief")],
            )
        if not isinstance(rssm_posterior, TensorDictModule):
            rssm_posterior = TensorDictModule(
                rssm_posterior,
                in_keys=[("next", "belief"), ("next", "encoded_latents")],
                out_keys=[("next", "posterior_mean"), ("next", "posterior_std"), ("next", "state")],
            )
        self.rssm_prior = rssm_prior
        self.rssm_posterior = rssm_posterior
        self.state_key, self.belief_key, self.action_key = rssm_prior.in_keys
        pm, ps, _, nb = rssm_prior.out_keys
        _, self.embedding_key = rssm_posterior.in_keys
        qm, qs, ns = rssm_posterior.out_keys
        self._out = {"prior_mean": pm, "prior_std": ps, "belief": nb,
                     "posterior_mean": qm, "posterior_std": qs, "state": ns}
        self.is_init_key = is_init_key
        emb = unravel_key(self.embedding_key)
        # the root observation's embedding (the embedding key without "next"): episode starts filter o_t
        self.init_embedding_key = None
        if isinstance(emb, tuple) and emb[0] == "next":
            self.init_embedding_key = emb[1:] if len(emb) > 2 else emb[1]
        self.in_keys = [self.state_key, self.belief_key, self.action_key, self.embedding_key, is_init_key]
        self.out_keys = list(self._out.values())
        self.use_scan = use_scan
        self._fast = isinstance(self.prior, RSSMPrior) and isinstance(self.posterior, RSSMPosterior)
        self._filter_step = self._filter_step_eager
        self._imagine_step = self._imagine_step_eager
        if compile_step:
            opts = dict(fullgraph=True, dynamic=False, backend=compile_backend, mode=compile_mode)
            self._filter_step = torch.compile(self._filter_step_eager, **opts)
            self._imagine_step = torch.compile(self._imagine_step_eager, **opts)

    # Properties, not attributes: registering the networks a second time would duplicate their
    # parameters in state_dict (and break strict loading of TorchRL world-model state dicts).
    @property
    def prior(self) -> nn.Module:
        return self.rssm_prior.module

    @property
    def posterior(self) -> nn.Module:
        return self.rssm_posterior.module

    # ------------------------------------------------------------------ sizes
    @property
    def state_dim(self) -> int:
        return self.prior.state_dim

    @property
    def belief_dim(self) -> int:
        return self.prior.rnn_hidden_dim

    def initial(self, batch_shape, device=None, dtype=None) -> Latent:
        """The latent at an episode start: zeros, ``{"state": [*B, S], "belief": [*B, D]}``."""
        p = next(self.prior.parameters())
        kw = dict(device=device or p.device, dtype=dtype or p.dtype)
        batch_shape = torch.Size(batch_shape)
        return {"state": torch.zeros(*batch_shape, self.state_dim, **kw),
                "belief": torch.zeros(*batch_shape, self.belief_dim, **kw)}

    def initial_belief(self, device=None, dtype=None) -> torch.Tensor:
        """h_0 = f(0, 0, a=0): the belief at an episode start, one prior transition from the zero
        latent with a zero action (PlaNet filters the first observation from here). ``[D]``."""
        zeros = self.initial((1,), device, dtype)
        action = zeros["state"].new_zeros(1, self._action_dim())
        if self._fast:
            return self.prior.transition(zeros["state"], zeros["belief"], action)[0]
        return self.prior(zeros["state"], zeros["belief"], action)[3][0]

    def posterior_sample(self, belief: torch.Tensor, embedding: torch.Tensor,
                         noise: torch.Tensor | None = None) -> torch.Tensor:
        """s_t = mean + std * noise ~ q(s_t | h_t, e(o_t)), any leading dims (noise drawn if not given)."""
        if self._fast:
            mean, std = self.posterior.stats(belief, embedding)
        else:
            mean, std, _ = self.posterior(belief, embedding)
        return mean + std * (torch.randn_like(std) if noise is None else noise)

    def initial_filtered(self, embedding: torch.Tensor, noise: torch.Tensor | None = None) -> Latent:
        """The latent at an episode start given the embedding of its first observation o_0 (PlaNet).

        h_0 = :meth:`initial_belief` and s_0 ~ q(s_0 | h_0, e(o_0)). ``embedding`` is
        ``[*B, E]``; returns ``state [*B, S]``, ``belief [*B, D]``. Acting
        (:class:`~torchrl_rssm.policies.BeliefFilter`) and training (``observe`` with
        ``init_embedding``) both start episodes here.
        """
        belief = self.initial_belief(embedding.device, embedding.dtype).expand(*embedding.shape[:-1], self.belief_dim)
        return {"state": self.posterior_sample(belief, embedding, noise), "belief": belief}

    def _action_dim(self) -> int:
        dim = getattr(self.prior, "action_dim", None)
        return int(dim) if dim is not None else int(self.prior.action_shape[-1])

    # ------------------------------------------------------------ step functions
    def _filter_step_eager(self, state, belief, keep, reset_state, reset_belief, act_proj, w_state, emb_proj,
                           w_belief, noise):
        """One filtering step on ``[N, F]`` tensors (compiles with fullgraph=True)."""
        # is_init rows: the latent entering the step is the episode's start latent (reset_*; zeros elsewhere)
        state, belief = state * keep + reset_state, belief * keep + reset_belief
        belief = self.prior.transition_projected(state, belief, act_proj, w_state)
        mean, std = self.posterior.stats_projected(belief, emb_proj, w_belief)
        return mean + std * noise, belief, mean, std

    def _imagine_step_eager(self, state, belief, act_proj, w_state, noise):
        """One prior step on ``[N, F]`` tensors (compiles with fullgraph=True)."""
        return self.prior.step_projected(state, belief, act_proj, w_state, noise)

    # --------------------------------------------------------------- observe
    def observe(
        self,
        embedding: torch.Tensor,
        action: torch.Tensor,
        is_init: torch.Tensor | None = None,
        start: Latent | None = None,
        noise: torch.Tensor | None = None,
        init_embedding: torch.Tensor | None = None,
        init_noise: torch.Tensor | None = None,
    ) -> Latent:
        """Posterior filtering over a ``[*B, T]`` sequence (see the class docstring).

        ``init_embedding`` (``[*B, T, E]``): the embedding of the root observation o_t of each
        row; only rows with ``is_init`` are read. There, the latent entering step t is
        :meth:`initial_filtered` of it (h = f(0, 0, 0), s ~ q(h, e(o_t)), PlaNet's filtering of
        the first observation, as the acting policy does); without it, the zero latent
        (foreign data without root observations). ``init_noise`` (``[*B, T, S]``) fixes that
        posterior sample.
        """
        *batch, T, _ = action.shape
        batch = torch.Size(batch)
        if embedding.shape[:-1] != action.shape[:-1]:
            raise ValueError(
                f"observe: embedding and action must share [*B, T]; got {tuple(embedding.shape)} "
                f"and {tuple(action.shape)}."
            )
        if init_embedding is not None and init_embedding.shape[:-1] != action.shape[:-1]:
            raise ValueError(
                f"observe: init_embedding must have shape [*B, T, E] with [*B, T] = {tuple(action.shape[:-1])}; "
                f"got {tuple(init_embedding.shape)}."
            )
        nb = len(batch)
        start = start if start is not None else self.initial(batch, embedding.device, embedding.dtype)
        state = start["state"].reshape(-1, self.state_dim)
        belief = start["belief"].reshape(-1, self.belief_dim)
        N = state.shape[0]
        act = _time_major(action.to(embedding.dtype), nb)
        emb = _time_major(embedding, nb)
        if noise is None:
            noise = torch.randn(T, N, self.state_dim, device=embedding.device, dtype=embedding.dtype)
        else:
            noise = _time_major(noise, nb)
        if is_init is None:
            keep = torch.ones(T, N, 1, device=embedding.device, dtype=embedding.dtype)
        else:
            keep = 1.0 - _time_major(is_init.reshape(*batch, T, 1).to(embedding.dtype), nb)
        # the start latents of the episodes beginning at each row: computed for all rows at
        # once, off the loop (they start from the zero latent, not from the recurrence)
        if is_init is not None and init_embedding is not None:
            init = self.initial_filtered(_time_major(init_embedding.to(embedding.dtype), nb),
                                         None if init_noise is None else _time_major(init_noise, nb))
            reset_state, reset_belief = init["state"] * (1 - keep), init["belief"] * (1 - keep)
        else:
            reset_state = keep.new_zeros(T, N, self.state_dim)
            reset_belief = keep.new_zeros(T, N, self.belief_dim)

        if not self._fast:
            return self._observe_generic(emb, act, keep, reset_state, reset_belief, state, belief, noise, batch)

        w_state, act_proj = self.prior.project_action(act)
        w_belief, emb_proj = self.posterior.project_embedding(self.belief_dim, emb)

        # unbind, not [t]: indexing a tensor that needs grad makes autograd zero-fill a
        # full [T, N, F] gradient at every step (O(T^2)); unbind's backward is one stack.
        steps = zip(keep.unbind(0), reset_state.unbind(0), reset_belief.unbind(0), act_proj.unbind(0),
                    emb_proj.unbind(0), noise.unbind(0))
        beliefs, states, post_means, post_stds = [], [], [], []
        for keep_t, rs_t, rb_t, act_t, emb_t, noise_t in steps:
            state, belief, mean, std = self._filter_step(
                state, belief, keep_t, rs_t, rb_t, act_t, w_state, emb_t, w_belief, noise_t
            )
            beliefs.append(belief), states.append(state), post_means.append(mean), post_stds.append(std)
        belief_seq = torch.stack(beliefs)
        prior_mean, prior_std = self.prior.stats(belief_seq)  # all steps at once, off the loop
        out = dict(belief=belief_seq, state=torch.stack(states), prior_mean=prior_mean,
                   prior_std=prior_std, posterior_mean=torch.stack(post_means),
                   posterior_std=torch.stack(post_stds))
        return {k: _batch_major(v, batch) for k, v in out.items()}

    def _observe_generic(self, emb, act, keep, reset_state, reset_belief, state, belief, noise, batch) -> Latent:
        """Per-step loop for foreign prior/posterior networks with TorchRL's signatures."""
        outs: dict[str, list] = {k: [] for k in self._out}
        for t in range(emb.shape[0]):
            state, belief = state * keep[t] + reset_state[t], belief * keep[t] + reset_belief[t]
            prior_mean, prior_std, _, belief = self.prior(state, belief, act[t])
            post_mean, post_std, state = self.posterior(belief, emb[t])
            state = post_mean + post_std * noise[t]
            for k, v in zip(self._out, (prior_mean, prior_std, belief, post_mean, post_std, state)):
                outs[k].append(v)
        return {k: _batch_major(torch.stack(v), batch) for k, v in outs.items()}

    # --------------------------------------------------------------- imagine
    def imagine(
        self,
        start: Latent,
        action: torch.Tensor | None = None,
        policy: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        horizon: int | None = None,
        noise: torch.Tensor | None = None,
    ) -> Latent:
        """Open-loop prior rollout from ``start`` (``{"state": [*B, S], "belief": [*B, D]}``).

        Give either ``action`` (``[*B, H, A]``) or ``policy`` and ``horizon``. Returns
        ``belief, state, prior_mean, prior_std`` (and ``action``), each ``[*B, H, F]``.
        Differentiable (gradients reach the start latents, the actions or the policy, and the
        prior); this is :func:`imagine` with the rollout's (possibly compiled) step.
        """
        return imagine(self.prior, start, action=action, policy=policy, horizon=horizon, noise=noise,
                       step=self._imagine_step if self._fast else None)

    # ------------------------------------------------------------ tensordict
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        if tensordict.ndim < 1:
            raise ValueError("RSSMRollout expects a tensordict with a time dimension: batch_size [*B, T].")
        start = None
        state0 = tensordict.get(self.state_key, None)
        belief0 = tensordict.get(self.belief_key, None)
        if state0 is not None and belief0 is not None:
            start = {"state": state0[..., 0, :], "belief": belief0[..., 0, :]}
        out = self.observe(
            tensordict.get(self.embedding_key),
            tensordict.get(self.action_key),
            is_init=tensordict.get(self.is_init_key, None),
            start=start,
            init_embedding=None if self.init_embedding_key is None else tensordict.get(self.init_embedding_key, None),
        )
        for name, key in self._out.items():
            tensordict.set(key, out[name])
        return tensordict
