"""DreamerV3's RSSM: categorical latents on a GRU or block-GRU core (Hafner et al. 2023).

The stochastic ``state`` z_t is ``num_categoricals`` (C) one-hot vectors of ``num_classes``
(K) classes, flattened to ``[*B, C * K]``; it is sampled straight-through (forward: the
one-hot sample; backward: the gradient of the probabilities) from probabilities mixed with
``unimix`` uniform. The ``belief`` h_t is the recurrent state.

- :class:`RSSMPriorV3`: h_t = f(h_{t-1}, z_{t-1}, a_{t-1}); p(z_t | h_t).
- :class:`RSSMPosteriorV3`: q(z_t | h_t, e(o_t)).
- :class:`RSSMRolloutV3`: ``observe`` (filtering over ``[*B, T]``, resetting state, belief
  and previous action at ``is_init``) and ``imagine`` (prior-only), as tensor loops; as a
  TensorDict module it reads and writes TorchRL's keys.

The step core is two tensor functions, :func:`filter_step` (prior transition, then posterior
correction) and :func:`imagine_step` (prior transition, then prior sample); ``observe`` scans
the first; ``imagine`` is :func:`~torchrl_rssm.modules.engine.imagine`, the package's one
imagination loop (PlaNet's rollout, Dreamer's actor loss and the planners run it too), which
steps the second on this prior (:meth:`RSSMPriorV3.step_projected`). Both take the action and the
embedding already projected into the first layers (:meth:`RSSMPriorV3.project_action`,
:meth:`RSSMPosteriorV3.project_embedding`), work a loop does once for all steps; filtering
also applies the prior head once to all beliefs after the loop.

Constructor arguments, call conventions and parameter names are TorchRL's
(``torchrl.modules.RSSMPriorV3`` etc.): TorchRL state dicts load, and the block GRU computes
the same function. Unlike TorchRL's, every module takes any number of batch dims.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Literal

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictModuleBase, TensorDictSequential
from tensordict.utils import NestedKey, unravel_key
from torch import nn
from torch.nn import functional as F
from torch.nn.parameter import is_lazy

from .engine import _batch_major, _time_major, imagine
from .layers_v3 import BlockLinear, RMSNorm, dreamer_v3_init, norm_silu_layers

__all__ = ["RSSMPosteriorV3", "RSSMPriorV3", "RSSMRolloutV3", "filter_step", "imagine_step",
           "straight_through_categorical", "unimix_probs"]

Latent = dict[str, torch.Tensor]

# Below this belief size the block GRU steps on dense (block-diagonal) weights: a few larger matmuls
# cost less than many tiny ones there; above it, the blocks save G times the arithmetic.
DENSE_MAX_BELIEF = 64


def _check_unimix(unimix: float) -> float:
    if not 0 <= unimix < 1:
        raise ValueError(f"unimix must be in [0, 1), got {unimix!r}.")
    return float(unimix)


def unimix_probs(logits: torch.Tensor, unimix: float = 0.0) -> torch.Tensor:
    """``(1 - unimix) * softmax(logits) + unimix / K`` over the last dim (K classes).

    Mixing in uniform keeps every class at probability ``unimix / K`` or more, so KL terms
    and log-probabilities stay finite.

    Examples:
        >>> import torch
        >>> unimix_probs(torch.tensor([0.0, -1e9]), 0.1)
        tensor([0.9500, 0.0500])
    """
    probs = torch.softmax(logits, dim=-1)
    if unimix:
        probs = (1 - unimix) * probs + unimix / logits.shape[-1]
    return probs


def straight_through_categorical(logits: torch.Tensor, unimix: float = 0.0,
                                 uniform: torch.Tensor | None = None) -> torch.Tensor:
    """One-hot samples of ``[..., C, K]`` logits with straight-through gradients.

    Forward: a one-hot sample of ``unimix_probs(logits)``; backward: the gradient of those
    probabilities (``probs + (one_hot - probs).detach()``). ``uniform`` (``[..., C]`` in
    ``[0, 1)``) draws by the inverse CDF; it is drawn when not given. The same uniforms
    give the same samples as TorchRL's sampler.

    Examples:
        >>> import torch
        >>> logits = torch.tensor([[2.0, 0.0, -2.0]], requires_grad=True)
        >>> sample = straight_through_categorical(logits, uniform=torch.tensor([0.5]))
        >>> sample
        tensor([[1., 0., 0.]], grad_fn=<AddBackward0>)
        >>> (sample * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
        >>> bool(logits.grad.abs().sum() > 0)
        True
    """
    probs = unimix_probs(logits, unimix)
    if uniform is None:
        # float32 uniforms whatever the logits' dtype: a bf16 uniform has only 256 levels
        uniform = torch.rand(probs.shape[:-1], device=probs.device)
    index = (uniform.unsqueeze(-1) > probs.cumsum(-1)).sum(-1).clamp_max(probs.shape[-1] - 1)
    one_hot = F.one_hot(index, probs.shape[-1]).to(probs.dtype)
    return probs + (one_hot - probs).detach()


def _action_shape(action_spec, action_shape) -> torch.Size | None:
    if action_spec is not None and action_shape is not None:
        raise ValueError("RSSMPriorV3: pass only one of `action_spec` or `action_shape`, not both.")
    if action_spec is not None:
        return torch.Size(action_spec.shape)
    return torch.Size(action_shape) if action_shape is not None else None


def _gru(cell: nn.GRUCell, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    # nn.GRUCell takes 1-D or 2-D inputs only: fold the batch dims into one
    if x.ndim <= 2:
        return cell(x, h)
    return cell(x.reshape(-1, x.shape[-1]), h.reshape(-1, h.shape[-1])).reshape(h.shape)


class _BlockGRU(nn.Module):
    """The reference DreamerV3 recurrent core: ``num_blocks`` GRUs over slices of the belief.

    Inputs (belief, state, action) each pass Linear -> RMSNorm -> SiLU; every block sees its
    slice of the belief and all three projections; ``num_layers`` block-linear layers (with
    RMSNorm, SiLU) feed the reset/candidate/update gates (update bias -1). Parameter names
    are those of TorchRL's core. The first block layer is applied as three sums (the belief
    slice, the belief and state projections shared by all blocks, the action term hoisted
    out of time loops) instead of on the concatenation repeated per block.
    """

    def __init__(self, *, state_dim: int, action_dim: int, hidden_dim: int, belief_dim: int, num_blocks: int,
                 num_layers: int, norm_eps: float, device=None):
        super().__init__()
        if num_blocks < 1 or belief_dim % num_blocks:
            raise ValueError(f"RSSMPriorV3: rnn_hidden_dim ({belief_dim}) must be divisible by num_blocks ({num_blocks}).")
        if num_layers < 1:
            raise ValueError(f"RSSMPriorV3: num_layers must be at least 1, got {num_layers}.")
        self.belief_dim, self.num_blocks, self.hidden_dim = belief_dim, num_blocks, hidden_dim

        def projection(in_dim):
            return nn.Sequential(nn.Linear(in_dim, hidden_dim, device=device), RMSNorm(hidden_dim, norm_eps, device),
                                 nn.SiLU())

        self.belief_projection = projection(belief_dim)
        self.state_projection = projection(state_dim)
        self.action_projection = projection(action_dim)
        layers: list[nn.Module] = []
        width = belief_dim + 3 * hidden_dim * num_blocks
        for _ in range(num_layers):
            layers += [BlockLinear(width, belief_dim, num_blocks, device=device),
                       RMSNorm(belief_dim, norm_eps, device), nn.SiLU()]
            width = belief_dim
        self.hidden_layers = nn.Sequential(*layers)
        self.gates = BlockLinear(belief_dim, 3 * belief_dim, num_blocks, device=device)
        self.apply(dreamer_v3_init)

    def _first_weights(self):
        """Rows of the first block layer, per block ``[belief slice | belief proj | state proj | action proj]``."""
        w = self.hidden_layers[0].weight  # [G, D/G + 3H, D/G]
        block, hidden = self.belief_dim // self.num_blocks, self.hidden_dim
        w_belief, w_feat, w_action = w.split([block, 2 * hidden, hidden], 1)
        # shared inputs: [2H or H, G * D/G] so that one matmul serves every block
        return w_belief, w_feat.transpose(0, 1).flatten(1), w_action.transpose(0, 1).flatten(1)

    def project_action(self, action: torch.Tensor) -> tuple[tuple, torch.Tensor]:
        """``(weights, act_in)``: the action's share of the first block layer (its bias included), ``[..., D]``.

        ``weights`` are the recurrent weights as :meth:`step` uses them, prepared once per
        loop: for a small belief (``<= DENSE_MAX_BELIEF``) the block-diagonal matrices are
        laid out densely, so that a step is a few large matmuls instead of many tiny ones
        (the per-op overhead dominates there); otherwise they stay in blocks.
        """
        w_belief, w_feat, w_action = self._first_weights()
        # actions are scaled into [-1, 1] by their own magnitude (no gradient through the scale)
        action = action / action.detach().abs().clamp_min(1)
        act_in = self.action_projection(action) @ w_action.to(action.dtype) + self.hidden_layers[0].bias
        if self.belief_dim <= DENSE_MAX_BELIEF:
            w_first = torch.cat([torch.block_diag(*w_belief.unbind(0)), w_feat], 0)  # [D + 2H, D]
            return ("dense", w_first, torch.block_diag(*self.gates.weight.unbind(0))), act_in  # gates [D, 3D]
        return ("block", w_belief, w_feat), act_in

    def step(self, state: torch.Tensor, belief: torch.Tensor, act_in: torch.Tensor, weights) -> torch.Tensor:
        layout, w_first, w_other = weights
        G = self.num_blocks
        feat = torch.cat([self.belief_projection(belief), self.state_projection(state)], -1)
        if layout == "dense":
            x = torch.cat([belief, feat], -1) @ w_first + act_in
        else:
            x = torch.einsum("...gi,gio->...go", belief.unflatten(-1, (G, -1)), w_first).flatten(-2)
            x = x + feat @ w_other + act_in
        for layer in self.hidden_layers[1:]:
            x = layer(x)
        gates = x @ w_other + self.gates.bias if layout == "dense" else self.gates(x)
        reset, cand, update = gates.unflatten(-1, (G, 3, -1)).unbind(-2)
        reset = torch.sigmoid(reset.flatten(-2))
        cand = torch.tanh(reset * cand.flatten(-2))
        update = torch.sigmoid(update.flatten(-2) - 1.0)
        return update * cand + (1 - update) * belief

    def forward(self, state: torch.Tensor, belief: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        weights, act_in = self.project_action(action)
        return self.step(state, belief, act_in, weights)


class RSSMPriorV3(nn.Module):
    """DreamerV3's prior (sequence model + dynamics predictor), drop-in for TorchRL's.

    h_t = f(h_{t-1}, z_{t-1}, a_{t-1}); p(z_t | h_t) = Cat(logits), C x K.
    ``recurrent_model="gru"`` is TorchRL's default core (Linear+SiLU, ``nn.GRUCell``, a
    2-layer SiLU head); ``"block_gru"`` is the reference core (RMSNorm, SiLU, block GRU of
    ``num_blocks`` blocks, a ``prior_num_layers`` RMSNorm head; actions are scaled into
    ``[-1, 1]`` by their own magnitude).

    ``forward(state, belief, action)`` returns ``(prior_logits [*B, C, K], state [*B, C*K],
    belief [*B, D])``, the state a straight-through sample.

    Args:
        action_spec: the action spec (only its shape is read); or ``action_shape``.
        hidden_dim: width of the projections and of the prior head.
        rnn_hidden_dim: size D of the belief.
        num_categoricals, num_classes: C and K.
        action_dim: action size; required by ``"block_gru"``; without it the ``"gru"`` core's
            first layer is lazy (as TorchRL's).
        device: where to create the parameters.
        action_shape: the action's shape (instead of ``action_spec``).
        recurrent_model: ``"gru"`` or ``"block_gru"``.
        num_blocks, num_layers: blocks and block layers of the block GRU.
        prior_num_layers: hidden layers of the block-GRU prior head.
        norm_eps: RMSNorm epsilon.
        unimix: uniform mixed into the sampling probabilities (DreamerV3: 0.01; TorchRL's default 0).

    Examples:
        >>> import torch
        >>> prior = RSSMPriorV3(action_shape=(2,), hidden_dim=16, rnn_hidden_dim=8, num_categoricals=4,
        ...                     num_classes=4, action_dim=2, recurrent_model="block_gru", num_blocks=2)
        >>> logits, state, belief = prior(torch.zeros(3, 5, 16), torch.zeros(3, 5, 8), torch.randn(3, 5, 2))
        >>> logits.shape, state.shape, belief.shape
        (torch.Size([3, 5, 4, 4]), torch.Size([3, 5, 16]), torch.Size([3, 5, 8]))
        >>> bool((state.reshape(3, 5, 4, 4).sum(-1) == 1).all())  # one-hot per categorical
        True
    """

    def __init__(self, action_spec=None, hidden_dim: int = 512, rnn_hidden_dim: int = 512, num_categoricals: int = 32,
                 num_classes: int = 32, action_dim: int | None = None, device=None, *,
                 action_shape: torch.Size | tuple[int, ...] | None = None,
                 recurrent_model: Literal["gru", "block_gru"] = "gru", num_blocks: int = 8, num_layers: int = 1,
                 prior_num_layers: int = 2, norm_eps: float = 1e-4, unimix: float = 0.0):
        super().__init__()
        self.action_shape = _action_shape(action_spec, action_shape)
        self.num_categoricals, self.num_classes = num_categoricals, num_classes
        self.state_dim = num_categoricals * num_classes
        self.rnn_hidden_dim, self.hidden_dim = rnn_hidden_dim, hidden_dim
        self.unimix = _check_unimix(unimix)
        if recurrent_model not in ("gru", "block_gru"):
            raise ValueError(f"RSSMPriorV3: recurrent_model must be 'gru' or 'block_gru', got {recurrent_model!r}.")
        if recurrent_model == "block_gru" and action_dim is None:
            raise ValueError("RSSMPriorV3: recurrent_model='block_gru' needs an explicit action_dim.")
        self.recurrent_model = recurrent_model
        self.action_dim = action_dim
        if recurrent_model == "block_gru":
            self.rnn = _BlockGRU(state_dim=self.state_dim, action_dim=action_dim, hidden_dim=hidden_dim,
                                 belief_dim=rnn_hidden_dim, num_blocks=num_blocks, num_layers=num_layers,
                                 norm_eps=norm_eps, device=device)
            head = norm_silu_layers(rnn_hidden_dim, hidden_dim, prior_num_layers, norm_eps, device)
            width = hidden_dim if prior_num_layers else rnn_hidden_dim
            self.rnn_to_prior_projector = nn.Sequential(*head, nn.Linear(width, self.state_dim, device=device))
            self.rnn_to_prior_projector.apply(dreamer_v3_init)
            self.action_state_projector = None
        else:
            # registration order as TorchRL's (rnn, action_state_projector, head), so parameters() lines up
            self.rnn = nn.GRUCell(hidden_dim, rnn_hidden_dim, device=device)
            first = (nn.Linear(self.state_dim + action_dim, hidden_dim, device=device) if action_dim is not None
                     else nn.LazyLinear(hidden_dim, device=device))
            self.action_state_projector = nn.Sequential(first, nn.SiLU())
            self.rnn_to_prior_projector = nn.Sequential(
                nn.Linear(rnn_hidden_dim, hidden_dim, device=device), nn.SiLU(),
                nn.Linear(hidden_dim, self.state_dim, device=device))

    # The transition is written once, in two halves: ``project_action`` (the action's share of the
    # first layer, which a loop computes for every step at once) and ``transition_projected``.
    def project_action(self, action: torch.Tensor):
        """``(weights, act_in)`` for :meth:`transition_projected`; ``action`` is ``[..., A]``, any leading dims."""
        if not action.is_floating_point():
            action = action.to(torch.get_default_dtype())
        if self.recurrent_model == "block_gru":
            return self.rnn.project_action(action)
        layer = self.action_state_projector[0]
        if is_lazy(layer.weight):  # TorchRL-style lazy layer: materialise it on real shapes
            layer(action.new_zeros(1, self.state_dim + action.shape[-1]))
        w_state, w_action = layer.weight.split([self.state_dim, layer.in_features - self.state_dim], 1)
        return w_state, F.linear(action, w_action, layer.bias)

    def transition_projected(self, state: torch.Tensor, belief: torch.Tensor, act_in: torch.Tensor,
                             weights) -> torch.Tensor:
        """h_t = f(h_{t-1}, z_{t-1}, a_{t-1}) with ``(weights, act_in)`` from :meth:`project_action`."""
        if self.recurrent_model == "block_gru":
            return self.rnn.step(state, belief, act_in, weights)
        x = F.silu(F.linear(state, weights) + act_in)
        # the GRU runs in float32 (cuBLAS under autocast), as TorchRL's
        with torch.autocast(x.device.type, enabled=False):
            new = _gru(self.rnn, x.float(), belief.float())
        return new.to(x.dtype)

    def transition(self, state: torch.Tensor, belief: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """The deterministic path h_t = f(h_{t-1}, z_{t-1}, a_{t-1}), without the prior head."""
        weights, act_in = self.project_action(action)
        return self.transition_projected(state, belief, act_in, weights)

    def step_projected(self, state: torch.Tensor, belief: torch.Tensor, act_in: torch.Tensor, weights,
                       uniform: torch.Tensor | None = None):
        """One prior step on a projected action (:func:`imagine_step`): ``(z_t, h_t, prior_logits)``.

        The interface :func:`~torchrl_rssm.modules.engine.rollout_prior` steps, as
        :meth:`RSSMPrior.step_projected <torchrl_rssm.modules.RSSMPrior.step_projected>`.
        """
        return imagine_step(self, state, belief, act_in, weights, uniform)

    def logits(self, belief: torch.Tensor) -> torch.Tensor:
        """Logits of p(z_t | h_t), ``[..., C, K]``."""
        return self.rnn_to_prior_projector(belief).unflatten(-1, (self.num_categoricals, self.num_classes))

    def sample(self, logits: torch.Tensor, uniform: torch.Tensor | None = None) -> torch.Tensor:
        """A flattened straight-through one-hot sample of ``logits`` with this module's ``unimix``, ``[..., C*K]``."""
        return straight_through_categorical(logits, self.unimix, uniform).flatten(-2)

    def forward(self, state: torch.Tensor, belief: torch.Tensor, action: torch.Tensor, *,
                uniform: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        belief = self.transition(state, belief, action)
        logits = self.logits(belief)
        return logits, self.sample(logits, uniform), belief

    # TorchRL's private names, for TorchRL code that calls them (e.g. its RSSMStateEstimatorV3)
    def _update_belief(self, state, belief, action):
        return self.transition(state, belief, action)

    def _belief_and_logits(self, state, belief, action):
        belief = self.transition(state, belief, action)
        return self.logits(belief), belief


class RSSMPosteriorV3(nn.Module):
    """DreamerV3's posterior (representation model), drop-in for TorchRL's.

    q(z_t | h_t, e(o_t)) = Cat(MLP([h_t, e_t])). ``forward(belief, obs_embedding)`` returns
    ``(posterior_logits [*B, C, K], state [*B, C*K])``, the state a straight-through sample.

    Args:
        hidden_dim: width of the hidden layers.
        num_categoricals, num_classes: C and K.
        rnn_hidden_dim, obs_embed_dim: with both, the first layer is sized; otherwise lazy.
        device: where to create the parameters.
        use_rms_norm: ``num_layers`` x (Linear, RMSNorm, SiLU) with DreamerV3's init (the
            reference network); ``False`` (TorchRL's default): Linear, SiLU, Linear.
        num_layers: hidden layers when ``use_rms_norm``.
        norm_eps: RMSNorm epsilon.
        unimix: uniform mixed into the sampling probabilities.

    Examples:
        >>> import torch
        >>> post = RSSMPosteriorV3(hidden_dim=16, num_categoricals=4, num_classes=4, rnn_hidden_dim=8,
        ...                        obs_embed_dim=12, use_rms_norm=True)
        >>> logits, state = post(torch.randn(3, 5, 8), torch.randn(3, 5, 12))
        >>> logits.shape, state.shape
        (torch.Size([3, 5, 4, 4]), torch.Size([3, 5, 16]))
    """

    def __init__(self, hidden_dim: int = 512, num_categoricals: int = 32, num_classes: int = 32,
                 rnn_hidden_dim: int | None = None, obs_embed_dim: int | None = None, device=None, *,
                 use_rms_norm: bool = False, num_layers: int = 1, norm_eps: float = 1e-4, unimix: float = 0.0):
        super().__init__()
        self.num_categoricals, self.num_classes = num_categoricals, num_classes
        self.state_dim, self.hidden_dim = num_categoricals * num_classes, hidden_dim
        self.unimix = _check_unimix(unimix)
        sized = rnn_hidden_dim is not None and obs_embed_dim is not None
        if use_rms_norm and not sized:
            raise ValueError("RSSMPosteriorV3: use_rms_norm=True needs rnn_hidden_dim and obs_embed_dim.")
        if use_rms_norm and num_layers < 1:
            raise ValueError(f"RSSMPosteriorV3: num_layers must be at least 1, got {num_layers}.")
        first = (nn.Linear(rnn_hidden_dim + obs_embed_dim, hidden_dim, device=device) if sized
                 else nn.LazyLinear(hidden_dim, device=device))
        if use_rms_norm:
            layers = [first, RMSNorm(hidden_dim, norm_eps, device), nn.SiLU()]
            layers += norm_silu_layers(hidden_dim, hidden_dim, num_layers - 1, norm_eps, device)
            self.obs_rnn_to_post_projector = nn.Sequential(*layers, nn.Linear(hidden_dim, self.state_dim, device=device))
            self.obs_rnn_to_post_projector.apply(dreamer_v3_init)
        else:
            self.obs_rnn_to_post_projector = nn.Sequential(
                first, nn.SiLU(), nn.Linear(hidden_dim, self.state_dim, device=device))

    def project_embedding(self, belief_dim: int, obs_embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(w_belief, emb_in)``: the first layer split, the embedding's share (and bias) computed, ``[..., H]``."""
        layer = self.obs_rnn_to_post_projector[0]
        if is_lazy(layer.weight):
            layer(obs_embedding.new_zeros(1, belief_dim + obs_embedding.shape[-1]))
        if layer.in_features != belief_dim + obs_embedding.shape[-1]:
            raise ValueError(
                f"RSSMPosteriorV3: belief ({belief_dim}) + obs_embedding ({obs_embedding.shape[-1]}) sizes must add "
                f"up to the first layer's in_features ({layer.in_features})."
            )
        w_belief, w_emb = layer.weight.split([belief_dim, layer.in_features - belief_dim], 1)
        return w_belief, F.linear(obs_embedding, w_emb, layer.bias)

    def logits_projected(self, belief: torch.Tensor, emb_in: torch.Tensor, w_belief: torch.Tensor) -> torch.Tensor:
        """Logits of q(z_t | h_t, e_t), ``[..., C, K]``, with ``(w_belief, emb_in)`` from :meth:`project_embedding`."""
        x = F.linear(belief, w_belief) + emb_in
        for layer in self.obs_rnn_to_post_projector[1:]:
            x = layer(x)
        return x.unflatten(-1, (self.num_categoricals, self.num_classes))

    def logits(self, belief: torch.Tensor, obs_embedding: torch.Tensor) -> torch.Tensor:
        """Logits of q(z_t | h_t, e_t), ``[..., C, K]``."""
        w_belief, emb_in = self.project_embedding(belief.shape[-1], obs_embedding)
        return self.logits_projected(belief, emb_in, w_belief)

    def sample(self, logits: torch.Tensor, uniform: torch.Tensor | None = None) -> torch.Tensor:
        """A flattened straight-through one-hot sample of ``logits`` with this module's ``unimix``, ``[..., C*K]``."""
        return straight_through_categorical(logits, self.unimix, uniform).flatten(-2)

    def forward(self, belief: torch.Tensor, obs_embedding: torch.Tensor, *,
                uniform: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.logits(belief, obs_embedding)
        return logits, self.sample(logits, uniform)

    def _logits(self, belief, obs_embedding):  # TorchRL's private name
        return self.logits(belief, obs_embedding)


# ------------------------------------------------------------------------------------ step core
def filter_step(prior: RSSMPriorV3, posterior: RSSMPosteriorV3, state: torch.Tensor, belief: torch.Tensor,
                keep: torch.Tensor, act_in: torch.Tensor, prior_weights, emb_in: torch.Tensor,
                post_weights: torch.Tensor, uniform: torch.Tensor | None = None):
    """One filtering step: reset, prior transition, posterior correction. ``(state, belief, posterior_logits)``.

    ``keep`` (``[..., 1]``, 0 at an episode start) zeroes the carry entering the step; the
    action must be masked before :meth:`RSSMPriorV3.project_action`. ``act_in`` /
    ``prior_weights`` and ``emb_in`` / ``post_weights`` come from the two ``project_*``
    methods; ``uniform`` (``[..., C]``) fixes the posterior sample.
    """
    belief = prior.transition_projected(state * keep, belief * keep, act_in, prior_weights)
    logits = posterior.logits_projected(belief, emb_in, post_weights)
    return posterior.sample(logits, uniform), belief, logits


def imagine_step(prior: RSSMPriorV3, state: torch.Tensor, belief: torch.Tensor, act_in: torch.Tensor, prior_weights,
                 uniform: torch.Tensor | None = None):
    """One open-loop step: prior transition, prior sample. ``(state, belief, prior_logits)``."""
    belief = prior.transition_projected(state, belief, act_in, prior_weights)
    logits = prior.logits(belief)
    return prior.sample(logits, uniform), belief, logits


class RSSMRolloutV3(TensorDictModuleBase):
    """Runs DreamerV3's RSSM over time; drop-in for TorchRL's ``RSSMRolloutV3``.

    **TensorDict API.** ``rssm_prior`` / ``rssm_posterior`` are TensorDictModules wrapping
    :class:`RSSMPriorV3` / :class:`RSSMPosteriorV3` (plain modules get TorchRL's keys); the
    keys are read from them. Over a ``[*B, T]`` tensordict it reads ``state`` and ``belief``
    (row 0; zeros if absent), the action, ``("next", "encoded_latents")`` and ``is_init``,
    and writes ``("next", "prior_logits" | "posterior_logits" | "state" | "belief")``. Where
    ``is_init`` is set, the state, belief and previous action entering the step are zeroed;
    the masked inputs are written back to ``state``, ``belief`` and the action, and the
    result is a new tensordict sharing the untouched entries (as TorchRL's).

    **Tensor API** (the hot path): :meth:`initial`, :meth:`observe`, :meth:`imagine`.
    Networks other than this package's (e.g. TorchRL's) run a per-step loop of their
    ``forward``.

    The random draws are TorchRL's (``torch.rand(T, 2, *B, C)``, the posterior sample from
    the second half), so with the same weights and seed the two rollouts agree.

    Args:
        rssm_prior: :class:`RSSMPriorV3` or a TensorDictModule wrapping one.
        rssm_posterior: :class:`RSSMPosteriorV3` or a TensorDictModule wrapping one.
        reset_key: key of the episode-start flag (``None``: no resets).
        action_key: the action key; by default the prior's input key that is not the state
            or the belief.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> prior = RSSMPriorV3(action_shape=(2,), hidden_dim=8, rnn_hidden_dim=8, num_categoricals=4,
        ...                     num_classes=4, action_dim=2)
        >>> post = RSSMPosteriorV3(hidden_dim=8, num_categoricals=4, num_classes=4, rnn_hidden_dim=8, obs_embed_dim=6)
        >>> rollout = RSSMRolloutV3(prior, post)
        >>> td = TensorDict({"action": torch.randn(2, 3, 4, 2), ("next", "encoded_latents"): torch.randn(2, 3, 4, 6),
        ...                  "is_init": torch.zeros(2, 3, 4, 1, dtype=torch.bool)}, [2, 3, 4])
        >>> rollout(td)["next", "posterior_logits"].shape
        torch.Size([2, 3, 4, 4, 4])
        >>> out = rollout.imagine(rollout.initial([2, 3]), action=torch.zeros(2, 3, 5, 2))
        >>> out["state"].shape, out["belief"].shape
        (torch.Size([2, 3, 5, 16]), torch.Size([2, 3, 5, 8]))
    """

    def __init__(self, rssm_prior: nn.Module, rssm_posterior: nn.Module, reset_key: NestedKey | None = "is_init",
                 action_key: NestedKey | None = None):
        super().__init__()
        if not isinstance(rssm_prior, TensorDictModule):
            rssm_prior = TensorDictModule(
                rssm_prior, in_keys=["state", "belief", action_key or "action"],
                out_keys=[("next", "prior_logits"), ("next", "state"), ("next", "belief")])
        if not isinstance(rssm_posterior, TensorDictModule):
            rssm_posterior = TensorDictModule(
                rssm_posterior, in_keys=[("next", "belief"), ("next", "encoded_latents")],
                out_keys=[("next", "posterior_logits"), ("next", "state")])
        if len(rssm_prior.in_keys) != 3 or len(rssm_prior.out_keys) != 3:
            raise ValueError(
                "RSSMRolloutV3: rssm_prior must read (state, belief, action) and write (prior_logits, state, belief); "
                f"got in_keys={rssm_prior.in_keys}, out_keys={rssm_prior.out_keys}."
            )
        if len(rssm_posterior.in_keys) != 2 or len(rssm_posterior.out_keys) != 2:
            raise ValueError(
                "RSSMRolloutV3: rssm_posterior must read (belief, embedding) and write (posterior_logits, state); "
                f"got in_keys={rssm_posterior.in_keys}, out_keys={rssm_posterior.out_keys}."
            )
        sequential = TensorDictSequential(rssm_prior, rssm_posterior)
        self.in_keys, self.out_keys = sequential.in_keys, sequential.out_keys
        self.rssm_prior, self.rssm_posterior = rssm_prior, rssm_posterior
        self.reset_key = unravel_key(reset_key) if reset_key is not None else None
        prior_in = [unravel_key(k) for k in rssm_prior.in_keys]
        self.state_key, self.belief_key = prior_in[0], prior_in[1]
        if action_key is not None:
            self.action_key = unravel_key(action_key)
        else:
            others = [k for k in prior_in if k not in ("state", "belief")]
            if len(others) != 1:
                raise ValueError(f"RSSMRolloutV3: cannot tell the action key among {prior_in}; pass action_key.")
            self.action_key = others[0]
        prior_out = [unravel_key(k) for k in rssm_prior.out_keys]
        post_in = [unravel_key(k) for k in rssm_posterior.in_keys]
        post_out = [unravel_key(k) for k in rssm_posterior.out_keys]
        self.embedding_key = post_in[1]
        self._out = {"prior_logits": prior_out[0], "belief": prior_out[2], "posterior_logits": post_out[0],
                     "state": post_out[1]}
        self._fast = isinstance(self.prior, RSSMPriorV3) and isinstance(self.posterior, RSSMPosteriorV3)
        self._filter_step, self._imagine_step = filter_step, imagine_step

    def compile_rollout(self, scope: Literal["step", "scan"] = "step", *, unroll: int = 1, compile: bool = True,
                        **compile_kwargs) -> None:
        """Compile the step core (:func:`filter_step`, :func:`imagine_step`) with :func:`torch.compile`.

        TorchRL's signature. The time loop already runs on tensors, so both scopes compile
        the step and the loop stays in Python (``unroll`` must be 1 with ``"step"``, as in
        TorchRL, and is otherwise ignored). ``compile=False`` restores the eager step.
        ``dynamic`` defaults to ``False``. Needs this package's prior and posterior.
        """
        if not self._fast:
            raise RuntimeError("compile_rollout() needs RSSMPriorV3 and RSSMPosteriorV3 from torchrl_rssm.modules.")
        if scope not in ("step", "scan"):
            raise ValueError(f"compile_rollout: scope must be 'step' or 'scan', got {scope!r}.")
        if isinstance(unroll, bool) or not isinstance(unroll, int) or unroll < 1:
            raise ValueError(f"compile_rollout: unroll must be a positive int, got {unroll!r}.")
        if scope == "step" and unroll != 1:
            raise ValueError("compile_rollout: unroll only applies when scope='scan'.")
        compile_kwargs.setdefault("dynamic", False)
        self._filter_step, self._imagine_step = filter_step, imagine_step
        if compile:
            self._filter_step = torch.compile(filter_step, **compile_kwargs)
            self._imagine_step = torch.compile(imagine_step, **compile_kwargs)

    def __getstate__(self) -> dict:
        # a compiled callable does not pickle: the copy starts eager
        state = super().__getstate__()
        state["_filter_step"], state["_imagine_step"] = filter_step, imagine_step
        return state

    # properties, not attributes: a second registration would duplicate the parameters in state_dict
    @property
    def prior(self) -> nn.Module:
        return self.rssm_prior.module

    @property
    def posterior(self) -> nn.Module:
        return self.rssm_posterior.module

    @property
    def state_dim(self) -> int:
        return self.prior.num_categoricals * self.prior.num_classes

    @property
    def belief_dim(self) -> int:
        return self.prior.rnn_hidden_dim

    def initial(self, batch_shape, device=None, dtype=None) -> Latent:
        """The latent at an episode start: zeros, ``{"state": [*B, C*K], "belief": [*B, D]}``."""
        p = next(self.prior.parameters())
        kw = {"device": device or p.device, "dtype": dtype or (p.dtype if p.is_floating_point() else None)}
        return {"state": torch.zeros(*batch_shape, self.state_dim, **kw),
                "belief": torch.zeros(*batch_shape, self.belief_dim, **kw)}

    def initial_belief(self, device=None, dtype=None) -> torch.Tensor:
        """h_0 = f(0, 0, a=0): the belief entering an episode's first filtering step (``observe``
        zeroes state, belief and action at ``is_init``), ``[D]``. The acting belief filter starts here."""
        zeros = self.initial((1,), device, dtype)
        action = zeros["state"].new_zeros(1, self._action_dim())
        if self._fast:
            return self.prior.transition(zeros["state"], zeros["belief"], action)[0]
        return self.prior(zeros["state"], zeros["belief"], action)[-1][0]

    def posterior_sample(self, belief: torch.Tensor, embedding: torch.Tensor,
                         noise: torch.Tensor | None = None) -> torch.Tensor:
        """z_t ~ q(z_t | h_t, e(o_t)), a flattened one-hot ``[*B, C*K]``, any leading dims; ``noise``
        (``[*B, C]`` uniforms) fixes the draw. The acting belief filter's one posterior step."""
        if self._fast:
            return self.posterior.sample(self.posterior.logits(belief, embedding), noise)
        return self.posterior(belief, embedding)[-1]

    def _action_dim(self) -> int:
        dim = getattr(self.prior, "action_dim", None)
        if dim is None:
            shape = getattr(self.prior, "action_shape", None)
            if not shape:
                raise ValueError("RSSMRolloutV3: the prior declares neither action_dim nor action_shape.")
            dim = shape[-1]
        return int(dim)

    # ------------------------------------------------------------------ observe
    def observe(self, embedding: torch.Tensor, action: torch.Tensor, is_init: torch.Tensor | None = None,
                start: Latent | None = None, uniform: torch.Tensor | None = None) -> Latent:
        """Posterior filtering over ``[*B, T]``: step t consumes ``action[..., t, :]`` and the
        embedding of the observation that follows it (TorchRL's ``("next", ...)`` layout).

        Where ``is_init[..., t]`` (``[*B, T]`` or ``[*B, T, 1]``) is set, the state, belief and
        action entering step t are zeroed. ``uniform`` (``[T, 2, *B, C]``, TorchRL's draw)
        fixes the samples. Returns ``state, belief, prior_logits, posterior_logits`` (the
        step outputs, ``[*B, T, ...]``) and ``input_state, input_belief, input_action``
        (what entered each step, after the reset).
        """
        *batch, T, _ = action.shape
        batch = torch.Size(batch)
        if embedding.shape[:-1] != action.shape[:-1]:
            raise ValueError(
                f"observe: embedding and action must share [*B, T]; got {tuple(embedding.shape)} and "
                f"{tuple(action.shape)}."
            )
        nb = len(batch)
        dtype = embedding.dtype
        start = start if start is not None else self.initial(batch, embedding.device, dtype)
        state = start["state"].reshape(-1, self.state_dim).to(dtype)
        belief = start["belief"].reshape(-1, self.belief_dim).to(dtype)
        N = state.shape[0]
        if uniform is None:
            uniform = torch.rand(T, 2, N, self.posterior.num_categoricals, device=embedding.device)
        else:
            uniform = uniform.reshape(T, 2, N, -1)
        post_uniform = uniform[:, 1]
        act = _time_major(action, nb)
        if not act.is_floating_point():
            act = act.to(dtype)
        if is_init is None:
            keep = torch.ones(T, N, 1, device=embedding.device, dtype=dtype)
        else:
            keep = 1.0 - _time_major(is_init.reshape(*batch, T, 1), nb).to(dtype)
        act = act * keep  # a new episode does not see the previous episode's last action
        emb = _time_major(embedding, nb)

        if not self._fast:
            return self._observe_generic(emb, act, keep, state, belief, post_uniform, batch)

        prior_weights, act_in = self.prior.project_action(act)  # all steps at once, off the loop
        post_weights, emb_in = self.posterior.project_embedding(self.belief_dim, emb)
        # unbind, not [t]: indexing a tensor that needs grad makes autograd zero-fill a full
        # [T, N, F] gradient at every step; unbind's backward is one stack
        states, beliefs, in_states, in_beliefs, post_logits = [], [], [], [], []
        for keep_t, act_t, emb_t, u_t in zip(keep.unbind(0), act_in.unbind(0), emb_in.unbind(0),
                                             post_uniform.unbind(0)):
            in_states.append(state * keep_t), in_beliefs.append(belief * keep_t)
            state, belief, logits = self._filter_step(self.prior, self.posterior, state, belief, keep_t, act_t,
                                                      prior_weights, emb_t, post_weights, u_t)
            states.append(state), beliefs.append(belief), post_logits.append(logits)
        belief_seq = torch.stack(beliefs)
        out = {"state": torch.stack(states), "belief": belief_seq,
                   "prior_logits": self.prior.logits(belief_seq),  # all steps at once, off the loop
                   "posterior_logits": torch.stack(post_logits), "input_state": torch.stack(in_states),
                   "input_belief": torch.stack(in_beliefs), "input_action": act}
        return {k: _batch_major(v, batch) for k, v in out.items()}

    def _observe_generic(self, emb, act, keep, state, belief, post_uniform, batch) -> Latent:
        """Per-step loop of foreign networks with TorchRL's signatures (their own sampling)."""
        outs: dict[str, list] = {k: [] for k in ("state", "belief", "prior_logits", "posterior_logits",
                                                 "input_state", "input_belief")}
        for t in range(emb.shape[0]):
            state, belief = state * keep[t], belief * keep[t]
            outs["input_state"].append(state), outs["input_belief"].append(belief)
            prior_logits, _, belief = self.prior(state, belief, act[t])
            post_logits, state = self.posterior(belief, emb[t])
            for k, v in zip(("state", "belief", "prior_logits", "posterior_logits"),
                            (state, belief, prior_logits, post_logits)):
                outs[k].append(v)
        out = {k: _batch_major(torch.stack(v), batch) for k, v in outs.items()}
        out["input_action"] = _batch_major(act, batch)
        return out

    # ------------------------------------------------------------------ imagine
    def imagine(self, start: Latent, action: torch.Tensor | None = None,
                policy: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                horizon: int | None = None, uniform: torch.Tensor | None = None) -> Latent:
        """Open-loop prior rollout from ``start`` (``{"state": [*B, C*K], "belief": [*B, D]}``).

        Give ``action`` (``[*B, H, A]``) or ``policy(state, belief) -> action`` and
        ``horizon``. ``uniform`` (``[*B, H, C]``) fixes the samples. Returns ``state, belief,
        prior_logits, action``, each ``[*B, H, ...]``; differentiable throughout.
        """
        if (action is None) == (policy is None):
            raise ValueError("imagine: give exactly one of `action` or `policy`.")
        if action is not None:
            if horizon is not None and horizon != action.shape[-2]:
                raise ValueError(f"imagine: horizon ({horizon}) differs from the actions' length ({action.shape[-2]}).")
        elif horizon is None or horizon < 1:
            raise ValueError(f"imagine: a policy needs a positive horizon, got {horizon!r}.")
        # the package's one imagination loop, stepping this rollout's (possibly compiled) step core
        step = functools.partial(self._imagine_step, self.prior) if self._fast else None
        out = imagine(self.prior, start, action=action, policy=policy, horizon=None if action is not None else horizon,
                      noise=uniform, step=step)
        return {"state": out["state"], "belief": out["belief"], "prior_logits": out["prior_logits"],
                "action": out["action"]}

    # --------------------------------------------------------------- tensordict
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        if tensordict.ndim < 1:
            raise ValueError("RSSMRolloutV3 expects a tensordict with a time dimension: batch_size [*B, T].")
        action = tensordict.get(self.action_key)
        embedding = tensordict.get(self.embedding_key)
        state0, belief0 = tensordict.get(self.state_key, None), tensordict.get(self.belief_key, None)
        start = None
        if state0 is not None or belief0 is not None:
            start = self.initial(tensordict.batch_size[:-1], embedding.device, embedding.dtype)
            if state0 is not None:
                start["state"] = state0[..., 0, :]
            if belief0 is not None:
                start["belief"] = belief0[..., 0, :]
        is_init = tensordict.get(self.reset_key, None) if self.reset_key is not None else None
        out = self.observe(embedding, action, is_init=is_init, start=start)
        result = tensordict.exclude(*self.out_keys)
        result.set(self.state_key, out["input_state"])
        result.set(self.belief_key, out["input_belief"])
        if is_init is not None:  # the masked action, in the action's own dtype
            reset = is_init.reshape(*tensordict.batch_size, *([1] * (action.ndim - tensordict.ndim)))
            result.set(self.action_key, torch.where(reset, torch.zeros((), dtype=action.dtype), action))
        for name, key in self._out.items():
            result.set(key, out[name])
        return result
