"""The planners' fused imagination: scoring candidate action sequences without gradients.

:class:`FastRSSMReturns` rolls this package's RSSM prior forward from ``[M]`` start latents
for ``[M, N, H, A]`` candidate action sequences and sums the reward head's predictions:
the arithmetic of :func:`~torchrl_rssm.modules.engine.imagine` followed by the reward head,
spelled out in place for speed (CEM and MPPI call it thousands of times per action). It is
the only copy of the transition outside :mod:`~torchrl_rssm.modules.rssm`; a test ties it
to :func:`~torchrl_rssm.modules.engine.imagine` with the same noise.

The differentiable imagination (Dreamer's actor in the loop, gradients through the
dynamics) is :func:`~torchrl_rssm.modules.engine.imagine`, the package's one imagination
loop; foreign priors (TorchRL's) and DreamerV3's categorical priors are scored with its
time-major loop by :class:`~torchrl_rssm.planners.TensorReturns`.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .heads import RewardModel
from .rssm import RSSMPrior


def _write(op, args, out: torch.Tensor) -> torch.Tensor:
    """``op(*args)`` stored in ``out`` (eager: ``out=``, no temporary).

    Under ``torch.compile`` it returns ``op(*args)`` and leaves ``out`` alone: inductor
    plans its own buffers, and ``out=`` into a view would not trace.
    """
    if torch.compiler.is_compiling():
        return op(*args)
    return op(*args, out=out)


class FastRSSMReturns(nn.Module):
    """Sum of predicted rewards of candidate sequences, for this package's RSSM.

    ``returns(state [M, S], belief [M, D], actions [M, N, H, A]) -> [M, N]``: the same
    numbers as stepping ``RSSMPrior.forward`` and then the reward head (a test checks
    it), computed as a plain tensor loop that does less work:

    - the action's share of the prior's first layer is one matmul over all H steps;
    - at step 0 all N candidates of an environment share (s_0, h_0): the GRU's
      hidden-side matmul runs once per environment and is broadcast;
    - the GRU cell is spelled out (PyTorch's ``GRUCell`` equations) so that matmuls
      accumulate in place (``addmm_``) instead of adding their outputs afterwards;
    - the loop carries ``g = (h + 1) / 2`` instead of the belief ``h``. Since
      ``tanh(u) = 2 * sigmoid(2u) - 1``, the GRU update ``h' = (1 - z) * tanh(u) + z * h``
      becomes ``g' = lerp(sigmoid(2u), g, z)``: one sigmoid instead of a tanh (whose
      CPU kernel is ~5x slower) and no extra ops, because every layer that reads
      ``h = 2g - 1`` takes the affine map into its weights and bias (folded once
      per search, see :meth:`weights`);
    - beliefs and states are written straight into one ``[H, M, N, S + D]`` buffer,
      the reward head's input (no ``stack`` / ``cat``), and the reward head runs once
      over all H steps after the loop;
    - big buffers are kept between calls (a workspace per shape): on CPU, fresh
      multi-MB allocations come back from the OS as zero pages and page-fault on
      first touch, which costs more than the arithmetic here.

    Runs without autograd (in-place ops on a shared workspace); one call at a time.

    Args:
        prior: :class:`~torchrl_rssm.modules.RSSMPrior`.
        reward: ``reward(state, belief) -> [..., 1]``; for
            :class:`~torchrl_rssm.modules.RewardModel` its MLP eats the buffer directly.
        sample: sample s_t from the prior (PlaNet) or use its mean.

    Examples:
        >>> import torch
        >>> from torchrl_rssm.modules import RSSMPrior, RewardModel
        >>> from torchrl_rssm.modules.rssm import rollout_prior
        >>> prior = RSSMPrior(None, action_dim=2, state_dim=4, rnn_hidden_dim=8, hidden_dim=8)
        >>> reward = RewardModel(4, 8, hidden_dim=8)
        >>> returns = FastRSSMReturns(prior, reward, sample=False)
        >>> state, belief, actions = torch.randn(3, 4), torch.randn(3, 8), torch.randn(3, 10, 5, 2)
        >>> with torch.no_grad():  # the planners call it without autograd
        ...     fast = returns(state, belief, actions)  # [M=3 envs, N=10 candidates]
        >>> fast.shape
        torch.Size([3, 10])
        >>> # the same numbers as the reference loop followed by the reward head
        >>> with torch.no_grad():
        ...     ref = rollout_prior(prior, state.repeat_interleave(10, 0), belief.repeat_interleave(10, 0),
        ...                         action=actions.reshape(30, 5, 2).transpose(0, 1), sample=False)
        ...     ref = reward(ref["state"], ref["belief"]).sum(0).reshape(3, 10)
        >>> torch.allclose(fast, ref, atol=1e-5)
        True
    """

    def __init__(self, prior: RSSMPrior, reward: nn.Module, sample: bool = True):
        super().__init__()
        self.prior, self.reward, self.sample = prior, reward, sample
        self.state_dim, self.belief_dim = prior.state_dim, prior.rnn_hidden_dim
        self._workspace: dict[str, torch.Tensor] = {}
        self._compiled: Callable | None = None

    def _buf(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """A scratch tensor kept between calls (a fresh one under torch.compile or while a
        CUDA graph is captured: the graph must own its buffers, not share the workspace)."""
        if torch.compiler.is_compiling() or (like.is_cuda and torch.cuda.is_current_stream_capturing()):
            return like.new_empty(shape)
        buf = self._workspace.get(name)
        if buf is None or buf.shape != shape or buf.dtype != like.dtype or buf.device != like.device:
            buf = self._workspace[name] = like.new_empty(shape)
        return buf

    def release_workspace(self) -> None:
        """Frees the scratch buffers (they are re-created on the next call)."""
        self._workspace.clear()

    @torch.no_grad()
    def weights(self) -> dict[str, torch.Tensor]:
        """The networks' current weights as the loop uses them: transposed for ``addmm`` and
        folded for ``g = (h + 1) / 2``. A few small ops; the planners compute them once
        per search and pass them to every call (``weights=``). Not cached across calls:
        fused optimisers and ``.data`` edits change parameters without a trace to key on.

        In float32 the fold changes results by ~1e-7. In bfloat16/float16 it is ~3x less
        accurate than the plain GRU (g near 0.5 and the folded biases round coarser).
        """
        p, S, D = self.prior, self.state_dim, self.belief_dim
        first, gru = p.action_state_projector[0], p.rnn
        head1, head2 = p.rnn_to_prior_projector[0], p.rnn_to_prior_projector[2]
        w_hh, b_hh, w_ih, b_ih = gru.weight_hh, gru.bias_hh, gru.weight_ih, gru.bias_ih
        # A layer reading h = 2g - 1:  W h + b = (2W) g + (b - W 1).
        # Gates r, z: W_ir x + b_ir + W_hr h + b_hr (input-side biases join the hidden side).
        # Candidate:  2u = 2 (W_in x + b_in) + r * 2 (W_hn h + b_hn), and (tanh(u) + 1) / 2 = sigmoid(2u).
        hidden_scale = torch.cat([w_hh.new_full((2 * D,), 2.0), w_hh.new_full((D,), 4.0)])
        hidden_bias = torch.cat([b_hh[: 2 * D] - w_hh[: 2 * D].sum(1) + b_ih[: 2 * D],
                                 2 * (b_hh[2 * D :] - w_hh[2 * D :].sum(1))])
        w = dict(
            state_t=first.weight[:, :S].t().contiguous(), action_t=first.weight[:, S:].t().contiguous(),
            first_bias=first.bias.clone(),
            hidden_t=(w_hh * hidden_scale[:, None]).t().contiguous(), hidden_bias=hidden_bias,
            input_rz_t=w_ih[: 2 * D].t().contiguous(),
            input_n_t=(2 * w_ih[2 * D :]).t().contiguous(), input_n_bias=2 * b_ih[2 * D :],
            head1_t=(2 * head1.weight).t().contiguous(), head1_bias=head1.bias - head1.weight.sum(1),
            head2_t=head2.weight.t().contiguous(), head2_bias=head2.bias.clone(),
        )
        if isinstance(self.reward, RewardModel):  # its first layer reads [s, h]: fold the h part
            layer = self.reward.net[0]
            w_s, w_h = layer.weight[:, :S], layer.weight[:, S:]
            w["reward_t"] = torch.cat([w_s, 2 * w_h], 1).t().contiguous()
            w["reward_bias"] = layer.bias - w_h.sum(1)
        return w

    def compile_rollout(self, **options) -> None:
        """``torch.compile`` :meth:`rollout` (``options`` go to ``torch.compile``).

        The prior's noise is then drawn outside the graph, by torch's generator:
        inductor's CPU random-number kernel is several times slower.
        """
        self._compiled = torch.compile(type(self).rollout, **options)  # unbound: copies use their own modules

    def forward(self, state: torch.Tensor, belief: torch.Tensor, actions: torch.Tensor,
                noise: torch.Tensor | None = None, weights: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """``noise`` (``[H, M, N, S]``, standard normal) fixes the prior samples; ``weights``
        (from :meth:`weights`) saves folding them again when called repeatedly."""
        S, D = self.state_dim, self.belief_dim
        w = self.weights() if weights is None else weights
        M, N, H, A = actions.shape
        if self._compiled is not None or torch.compiler.is_compiling():
            if self.sample and noise is None:
                noise = torch.randn(H, M, N, S, device=actions.device, dtype=actions.dtype)
            rollout = self._compiled or type(self).rollout
            return rollout(self, w, state, belief, actions, noise if self.sample else None)
        MN, hid = M * N, w["first_bias"].shape[0]

        # The action's share of the first layer, all steps at once, time-major: [H, M*N, hid].
        act = actions.permute(2, 0, 1, 3).reshape(H, MN, A)
        x_all = _write(torch.matmul, (act, w["action_t"]), self._buf("x", (H, MN, hid), actions))
        x_all += w["first_bias"]
        latents = self._buf("latents", (H, MN, S + D), actions)  # [s_t, g_t]: the reward head's input
        lat_s, lat_g = latents[..., :S].unbind(0), latents[..., S:].unbind(0)
        if self.sample:
            if noise is None:
                noise = self._buf("noise", (H, MN, S), actions).normal_()
            noise = noise.reshape(H, MN, S).unbind(0)
        gh = self._buf("gh", (MN, 3 * D), actions)  # hidden-side GRU gates (+ input-side r, z biases)
        gh_rz, gh_n = gh[:, : 2 * D], gh[:, 2 * D :]
        gi_n = self._buf("gi_n", (MN, D), actions)
        y = self._buf("y", (MN, hid), actions)
        xs = x_all.unbind(0)
        g0 = (belief + 1) / 2
        s = g = None
        for t in range(H):
            x = xs[t]
            if t == 0:  # the N candidates of an environment share (s_0, h_0): once per environment
                x.view(M, N, hid).add_((state @ w["state_t"]).unsqueeze(1))
                gh.view(M, N, 3 * D).copy_(torch.addmm(w["hidden_bias"], g0, w["hidden_t"]).unsqueeze(1))
            else:
                x.addmm_(s, w["state_t"])
                _write(torch.addmm, (w["hidden_bias"], g, w["hidden_t"]), gh)
            F.elu(x, inplace=True)
            r, z = gh_rz.addmm_(x, w["input_rz_t"]).sigmoid_().chunk(2, -1)  # r, z = sigmoid(W_i x + W_h h + b)
            _write(torch.addmm, (w["input_n_bias"], x, w["input_n_t"]), gi_n)
            n = gi_n.addcmul_(r, gh_n).sigmoid_()  # (tanh(u) + 1) / 2, u = W_in x + b_in + r * (W_hn h + b_hn)
            # g' = (1 - z) * n + z * g, written straight into the reward head's input
            if t == 0:
                _write(torch.lerp, (n.view(M, N, D), g0.unsqueeze(1), z.view(M, N, D)), lat_g[0].view(M, N, D))
                g = lat_g[0]
            else:
                g = _write(torch.lerp, (n, g, z), lat_g[t])
            F.elu(_write(torch.addmm, (w["head1_bias"], g, w["head1_t"]), y), inplace=True)
            stats = torch.addmm(w["head2_bias"], y, w["head2_t"])  # [mean, raw std]: one matmul
            if self.sample:  # softplus on a strided view is ~20x slower on CPU than copy + softplus
                std = F.softplus(stats[:, S:].contiguous()).add_(self.prior.scale_lb)
                s = _write(torch.addcmul, (stats[:, :S], std, noise[t]), lat_s[t])
            else:
                s = lat_s[t].copy_(stats[:, :S])
        return self._reward(latents.view(H * MN, S + D), w).view(H, M, N).sum(0)

    def rollout(self, w: dict[str, torch.Tensor], state: torch.Tensor, belief: torch.Tensor,
                actions: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """:meth:`forward`'s arithmetic written plainly, out of place: what ``torch.compile``
        traces (in-place writes into a workspace would trace into copies of it).

        ``w`` is :meth:`weights`; ``noise`` ``[H, M, N, S]`` (``None`` for prior means).
        """
        S, D = self.state_dim, self.belief_dim
        M, N, H, A = actions.shape
        MN, hid = M * N, w["first_bias"].shape[0]
        act = actions.permute(2, 0, 1, 3).reshape(H * MN, A)
        x_act = torch.addmm(w["first_bias"], act, w["action_t"]).view(H, MN, hid)
        g0 = (belief + 1) / 2
        s = state.unsqueeze(1).expand(M, N, S).reshape(MN, S)
        g = g0.unsqueeze(1).expand(M, N, D).reshape(MN, D)
        states, beliefs = [], []
        for t in range(H):
            x = F.elu(torch.addmm(x_act[t], s, w["state_t"]))
            if t == 0:  # the N candidates of an environment share g_0: once per environment
                gh = torch.addmm(w["hidden_bias"], g0, w["hidden_t"]).unsqueeze(1).expand(M, N, 3 * D).reshape(MN, -1)
            else:
                gh = torch.addmm(w["hidden_bias"], g, w["hidden_t"])
            r, z = torch.addmm(gh[:, : 2 * D], x, w["input_rz_t"]).sigmoid().chunk(2, -1)
            n = torch.sigmoid(torch.addmm(w["input_n_bias"], x, w["input_n_t"]) + r * gh[:, 2 * D :])
            g = torch.lerp(n, g, z)  # n = (tanh(u) + 1) / 2
            y = F.elu(torch.addmm(w["head1_bias"], g, w["head1_t"]))
            mean, raw = torch.addmm(w["head2_bias"], y, w["head2_t"]).chunk(2, -1)
            s = mean if noise is None else mean + (F.softplus(raw) + self.prior.scale_lb) * noise[t].reshape(MN, S)
            states.append(s)
            beliefs.append(g)
        latents = torch.cat([torch.stack(states), torch.stack(beliefs)], -1)
        return self._reward(latents.view(H * MN, S + D), w).view(H, M, N).sum(0)

    def _reward(self, flat: torch.Tensor, w: dict[str, torch.Tensor]) -> torch.Tensor:
        """Reward head over all H steps at once; RewardModel's MLP runs on the workspace."""
        S = self.state_dim
        if not isinstance(self.reward, RewardModel):
            return self.reward(flat[:, :S], 2 * flat[:, S:] - 1)  # back from g to h
        x = flat
        for i, layer in enumerate(self.reward.net):
            if i == 0:  # reads [s, g]: the folded weights
                x = _write(torch.addmm, (w["reward_bias"], x, w["reward_t"]),
                           self._buf("reward0", (x.shape[0], layer.out_features), x))
            elif isinstance(layer, nn.Linear) and layer.bias is not None and layer.out_features > 1:
                x = _write(torch.addmm, (layer.bias, x, layer.weight.t()),
                           self._buf(f"reward{i}", (x.shape[0], layer.out_features), x))
            elif isinstance(layer, nn.ELU):
                x = F.elu(x, alpha=layer.alpha, inplace=True)
            else:
                x = layer(x)
        return x
