"""Shared machinery of the latent-space planners (CEM, MPPI).

Three pieces, each a screenful:

- :class:`ActionSpace`: what the planner samples from a TorchRL action spec
  (bounded / unbounded boxes, one-hot, categorical) and how it turns a plan into
  the environment's action and the model's action vector.
- latent models, which score ``[M, N, H, A]`` candidate action sequences from
  ``M`` start latents and return ``[M, N]`` returns:

  * :class:`FastRSSMReturns`: this package's :class:`~torchrl_rssm.modules.RSSMPrior`
    and reward head as a plain tensor loop (no tensordict per step; the action's
    share of the first layer and the reward head run once over all H steps),
  * :class:`TensorReturns`: any prior with TorchRL's call convention
    ``prior(state, belief, action) -> (mean, std, state, belief)`` and any reward
    ``reward(state, belief)``, as a per-step tensor loop,
  * :class:`TensorDictReturns` / :class:`EnvStepReturns`: foreign tensordict
    modules (a model-based env's ``world_model``) or any stateless env, one
    batched tensordict per step, no ``env.rollout``.
- :class:`PlannerBase`: the ``TensorDictModuleBase`` both planners share
  (construction from a world model, a TorchRL model-based env or ``(prior, reward)``,
  key handling, warm start, ``torch.compile`` and CUDA-graph capture).
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
from tensordict import TensorDictBase
from tensordict.nn import (
    ProbabilisticTensorDictModule,
    TensorDictModule,
    TensorDictModuleBase,
    TensorDictSequential,
)
from tensordict.utils import NestedKey
from torch import nn
from torch.nn import functional as F
from torchrl.data import (
    Binary,
    Bounded,
    Categorical,
    MultiCategorical,
    MultiOneHot,
    OneHot,
    TensorSpec,
    Unbounded,
)
from torchrl.envs.utils import ExplorationType, set_exploration_type, step_mdp

from ..modules.heads import RewardModel
from ..modules.rssm import RSSMPrior

Returns = Callable[[torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------- actions
class ActionSpace:
    """The sampling space of a TorchRL action spec.

    ``kind`` is ``"continuous"`` (``Bounded`` / ``Unbounded``, shape ``[A]``),
    ``"one_hot"`` (``OneHot``, shape ``[A]``) or ``"categorical"`` (``Categorical``
    with ``n`` values, shape ``[]`` or ``[1]``; the model sees one-hot vectors).
    Continuous plans are Gaussians (mean, std ``[M, H, A]``); discrete plans are
    per-step categorical probabilities (``[M, H, A]``, the std is unused).
    """

    def __init__(self, spec: TensorSpec, argname: str = "action_spec"):
        if spec is None:
            raise ValueError(f"`{argname}` is required: the planner needs the action spec to sample candidates.")
        shape = tuple(spec.shape)
        self.spec = spec
        self.low = self.high = None
        self._bounds: dict = {}
        if isinstance(spec, (Binary, MultiOneHot, MultiCategorical)):
            raise TypeError(
                f"`{argname}`: {type(spec).__name__} actions are not supported; the planner handles "
                "Bounded/Unbounded float boxes [A], OneHot [n] and Categorical specs."
            )
        if isinstance(spec, OneHot):
            if len(shape) != 1:
                raise ValueError(f"`{argname}`: one-hot actions must have shape [n], got {shape} "
                                 "(for a batched env pass env.action_spec_unbatched).")
            self.kind, self.dim = "one_hot", shape[-1]
        elif isinstance(spec, Categorical):
            if shape not in ((), (1,)):
                raise ValueError(f"`{argname}`: categorical actions must have shape [] or [1], got {shape}.")
            self.kind, self.dim = "categorical", int(spec.space.n)
        elif isinstance(spec, (Bounded, Unbounded)) and spec.dtype.is_floating_point:
            if len(shape) != 1:
                raise ValueError(f"`{argname}`: continuous actions must have shape [A], got {shape} "
                                 "(for a batched env pass env.action_spec_unbatched).")
            self.kind, self.dim = "continuous", shape[-1]
            if isinstance(spec, Bounded):
                self.low = spec.space.low.detach().clone().float()
                self.high = spec.space.high.detach().clone().float()
        else:
            raise TypeError(
                f"`{argname}`: the planner handles Bounded/Unbounded float boxes [A], OneHot [n] and "
                f"Categorical specs; got {type(spec).__name__} (shape {shape}, dtype {spec.dtype})."
            )

    @property
    def discrete(self) -> bool:
        return self.kind != "continuous"

    def initial(self, batch: int, horizon: int, init_std: float, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The cold-start plan: mean/std ``[M, H, A]`` (uniform probabilities when discrete).

        A bounded box starts centred with ``init_std`` times its half-width, which is
        PlaNet's N(0, 1) for [-1, 1] actions.
        """
        shape = (batch, horizon, self.dim)
        if self.discrete:
            probs = torch.full(shape, 1.0 / self.dim, device=device, dtype=dtype)
            return probs, torch.zeros_like(probs)
        if self.low is None:
            mean = torch.zeros(shape, device=device, dtype=dtype)
            return mean, torch.full_like(mean, init_std)
        low, high = self.bounds(device if device is not None else self.low.device, dtype)
        finite = torch.isfinite(low) & torch.isfinite(high)
        centre = torch.where(finite, (low + high) / 2, torch.zeros_like(low))
        half = torch.where(finite, (high - low) / 2, torch.ones_like(low))
        return centre.expand(shape).clone(), (init_std * half).expand(shape).clone()

    def sample(self, mean: torch.Tensor, std: torch.Tensor, n: int) -> torch.Tensor:
        """``n`` candidate sequences per plan: ``[M, H, A] -> [M, n, H, A]`` (model actions)."""
        M, H, A = mean.shape
        if self.discrete:  # Gumbel-max: one sample per (candidate, step), no host sync, graph-safe
            u = torch.rand(M, n, H, A, device=mean.device, dtype=mean.dtype).clamp_(min=1e-20)
            idx = (mean.log().unsqueeze(1) - torch.log(-torch.log(u))).argmax(-1)
            return F.one_hot(idx, A).to(mean.dtype)
        actions = torch.addcmul(mean.unsqueeze(1), std.unsqueeze(1),
                                torch.randn(M, n, H, A, device=mean.device, dtype=mean.dtype))
        return self.clip(actions)

    def bounds(self, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``(low, high)`` on ``device`` (cached: no host-to-device copy per call, e.g. in a CUDA graph)."""
        key = (torch.device(device), dtype)
        if key not in self._bounds:
            self._bounds[key] = (self.low.to(device, dtype), self.high.to(device, dtype))
        return self._bounds[key]

    def clip(self, action: torch.Tensor) -> torch.Tensor:
        """Clips continuous actions to the spec's bounds (PlaNet's official code clips candidates)."""
        if self.low is None:
            return action
        return torch.clamp(action, *self.bounds(action.device, action.dtype))

    def first_action(self, mean: torch.Tensor) -> torch.Tensor:
        """The action to execute from a plan: the mean's first step (most likely value when discrete).

        Returns the model's action vector ``[M, A]`` (one-hot when discrete).
        """
        first = mean[:, 0]
        if self.discrete:
            return F.one_hot(first.argmax(-1), self.dim).to(first.dtype)
        return first

    def to_env(self, action: torch.Tensor, batch: Sequence[int]) -> torch.Tensor:
        """Model action vector ``[M, A]`` -> the spec's layout and dtype, ``[*B, *spec.shape]``."""
        if self.kind == "categorical":
            action = action.argmax(-1)
        return action.reshape(tuple(batch) + tuple(self.spec.shape)).to(self.spec.dtype)

    def to_model(self, action: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The spec's layout ``[*B, *spec.shape]`` -> the model's action vector ``[*B, A]``."""
        if self.kind == "categorical":
            index = action.long().reshape(action.shape[: action.ndim - len(self.spec.shape)])
            return F.one_hot(index, self.dim).to(dtype)
        return action.to(dtype)


def shift_plan(prev: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
    """Warm start: the previous plan moved one step earlier, its last step from ``fresh``."""
    return torch.cat([prev[:, 1:], fresh[:, -1:]], dim=1)


def top_k_elites(actions: torch.Tensor, returns: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best candidates: ``[M, N, H, A], [M, N] -> [M, k, H, A], [M, k]``."""
    best, idx = returns.topk(k, dim=1)
    M, _, H, A = actions.shape
    return actions.gather(1, idx[:, :, None, None].expand(M, k, H, A)), best


# ------------------------------------------------------------------------- latent models
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


class TensorReturns(nn.Module):
    """Sum of predicted rewards with any prior following TorchRL's convention.

    ``prior(state, belief, action) -> (mean, std, state, belief)`` (TorchRL's
    ``RSSMPrior``, or a hand-written model) and ``reward(state, belief) -> [..., 1]``.
    One tensor step per imagined step; the reward head runs once after the loop.

    Args:
        prior, reward: the networks.
        state_dim, belief_dim: sizes of the latent parts (read from the prior when
            it has ``state_dim`` / ``rnn_hidden_dim``).
        sample: use the prior's sample (default) or its mean as the next state.
    """

    def __init__(self, prior: nn.Module, reward: nn.Module, state_dim: int | None = None,
                 belief_dim: int | None = None, sample: bool = True):
        super().__init__()
        self.prior, self.reward, self.sample = prior, reward, sample
        self.state_dim = state_dim if state_dim is not None else getattr(prior, "state_dim", None)
        self.belief_dim = belief_dim if belief_dim is not None else getattr(prior, "rnn_hidden_dim", None)

    def forward(self, state: torch.Tensor, belief: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        M, N, H, A = actions.shape
        s = state.unsqueeze(1).expand(M, N, *state.shape[1:]).reshape(M * N, *state.shape[1:])
        h = belief.unsqueeze(1).expand(M, N, *belief.shape[1:]).reshape(M * N, *belief.shape[1:])
        acts = actions.reshape(M * N, H, A)
        states, beliefs = [], []
        for t in range(H):
            mean, _, sample, h = self.prior(s, h, acts[:, t])
            s = sample if self.sample else mean
            states.append(s), beliefs.append(h)
        rewards = self.reward(torch.stack(states, 1), torch.stack(beliefs, 1))  # [M * N, H, 1]
        return rewards.reshape(M, N, H).sum(-1)


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
        self.reward_key = _strip_next(reward_key)
        self.done_keys = [_strip_next(k) for k in done_keys]

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


def _strip_next(key: NestedKey) -> NestedKey:
    if isinstance(key, tuple) and len(key) > 1 and key[0] == "next":
        return key[1:] if len(key) > 2 else key[1]
    return key


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


# --------------------------------------------------------------- finding the networks
def _leaf_modules(module: nn.Module) -> list[TensorDictModuleBase]:
    if isinstance(module, TensorDictSequential):
        return [leaf for m in module.module for leaf in _leaf_modules(m)]
    return [module]


def _fast_networks(world_model: nn.Module, state_key, belief_key, action_key, reward_key):
    """Finds (prior, reward, reward_args_order) inside a TorchRL Dreamer-style world model.

    Accepts ``WorldModelWrapper(transition, reward)`` where ``transition`` contains a
    ``TensorDictModule`` wrapping a prior with in_keys ``(state, belief, action)`` and
    out_keys ``(_, _, state, belief)`` (TorchRL's Dreamer ``DreamerEnv``), and ``reward``
    is a ``TensorDictModule`` on ``(state, belief)`` writing the reward, possibly followed
    by a probabilistic module that turns its output ("loc") into the reward (TorchRL's
    Dreamer example). Returns ``None`` when the layout is different.
    """
    try:
        transition, reward = world_model[0], world_model[1]
    except (TypeError, IndexError, KeyError):
        return None
    priors = [m for m in _leaf_modules(transition) if isinstance(m, TensorDictModule)
              and list(m.in_keys) == [state_key, belief_key, action_key]
              and len(m.out_keys) == 4 and list(m.out_keys[2:]) == [state_key, belief_key]]
    if len(priors) != 1 or len(_leaf_modules(transition)) != 1:
        return None
    reward_leaves = _leaf_modules(reward)
    rkey = _strip_next(reward_key)
    head = reward_leaves[0]
    if not isinstance(head, TensorDictModule) or set(head.in_keys) != {state_key, belief_key}:
        return None
    if len(reward_leaves) == 1:
        if head.out_keys[0] != rkey:
            return None
    elif len(reward_leaves) == 2:  # TorchRL's Dreamer: loc -> IndependentNormal -> reward
        tail = reward_leaves[1]
        if not (isinstance(tail, ProbabilisticTensorDictModule) and list(tail.in_keys) == list(head.out_keys[:1])
                and tail.out_keys[0] == rkey):
            return None
    else:
        return None
    swapped = list(head.in_keys) != [state_key, belief_key]
    return priors[0].module, head.module, swapped


class _SwapArgs(nn.Module):
    """A reward network whose in_keys are (belief, state): called as reward(state, belief)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, state, belief):
        return self.net(belief, state)


# ------------------------------------------------------------------------------ base
class PlannerBase(TensorDictModuleBase):
    """Model-predictive planning over action sequences in a latent model.

    Subclasses provide :meth:`search` (the optimiser: CEM or MPPI) on plain tensors.
    See :class:`~torchrl_rssm.planners.CEMPlanner` for the arguments.
    """

    def __init__(
        self,
        model,
        planning_horizon: int = 12,
        optim_steps: int = 10,
        num_candidates: int = 1000,
        top_k: int | None = 100,
        reward_key: NestedKey = ("next", "reward"),
        action_key: NestedKey = "action",
        *,
        action_spec: TensorSpec | None = None,
        reward_model: nn.Module | None = None,
        state_key: NestedKey = "state",
        belief_key: NestedKey = "belief",
        warm_start: bool = False,
        plan_key: NestedKey = "plan",
        is_init_key: NestedKey = "is_init",
        init_std: float = 1.0,
        warm_std: float = 0.25,
        min_std: float = 1e-3,
        sample_states: bool = True,
        compile: bool | dict = False,
        cuda_graph: bool = False,
    ):
        super().__init__()
        for name, value in dict(planning_horizon=planning_horizon, optim_steps=optim_steps,
                                num_candidates=num_candidates).items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
        top_k = num_candidates if top_k is None else top_k
        if not isinstance(top_k, int) or not 1 <= top_k <= num_candidates:
            raise ValueError(f"`top_k` must be an int in [1, num_candidates={num_candidates}], got {top_k!r}.")
        if min_std < 0:
            raise ValueError(f"`min_std` must be >= 0, got {min_std}.")
        self.planning_horizon, self.optim_steps = planning_horizon, optim_steps
        self.num_candidates, self.top_k = num_candidates, top_k
        self.reward_key, self.action_key = reward_key, action_key
        self.state_key, self.belief_key = state_key, belief_key
        self.warm_start, self.plan_key, self.is_init_key = warm_start, plan_key, is_init_key
        self.init_std, self.warm_std, self.min_std = init_std, warm_std, min_std
        self.env = None
        self._resolve(model, action_spec, reward_model, sample_states)
        self.space = ActionSpace(self.action_spec)
        out = [action_key] + ([plan_key] if warm_start else [])
        self.in_keys = list(self._start_keys) + ([plan_key, is_init_key] if warm_start else [])
        self.out_keys = out
        self._compile_options: dict | None = None
        self._compile_scope = None
        if compile:
            if not self._tensor_path:
                raise ValueError("`compile=True` needs a tensor model (our RSSMWorldModel, a DreamerEnv holding "
                                 "an RSSMPrior, or (prior, reward)); this planner runs foreign tensordict modules.")
            opts = dict(fullgraph=True, dynamic=False)
            opts.update(compile if isinstance(compile, dict) else {})
            self._compile_scope = opts.pop("scope", "auto")
            if self._compile_scope not in ("auto", "search", "rollout"):
                raise ValueError(f"`compile['scope']` must be 'auto', 'search' or 'rollout', got {self._compile_scope!r}.")
            self._compile_options = opts
        self._compiled_search = None
        self._rollout_compiled = False
        self.cuda_graph = cuda_graph
        self._graphs: dict = {}

    # ------------------------------------------------------------ construction
    def _resolve(self, model, action_spec, reward_model, sample_states) -> None:
        """Turns the ``model`` argument into a returns function and the input keys."""
        from torchrl.envs import EnvBase

        from ..modules.world_model import RSSMWorldModel

        self._tensor_path = True
        if isinstance(model, RSSMWorldModel):
            prior = model.rollout.prior
            reward = reward_model if reward_model is not None else model.reward_model
            self.returns_model = self._tensor_returns(prior, reward, sample_states)
            self.action_spec = action_spec
            if action_spec is None:
                raise ValueError("`action_spec` is required when planning with a world model "
                                 "(e.g. action_spec=env.action_spec).")
        elif isinstance(model, (tuple, list)) and len(model) == 2:
            prior, reward = model
            self.returns_model = self._tensor_returns(prior, reward, sample_states)
            self.action_spec = action_spec
            if action_spec is None:
                raise ValueError("`action_spec` is required when planning with (prior, reward).")
        elif isinstance(model, EnvBase):
            if model.batch_locked:
                raise ValueError("`env` is batch-locked: planners need an environment that accepts any batch "
                                 "size (such as TorchRL's DreamerEnv).")
            self.env = model
            self.action_spec = action_spec if action_spec is not None else getattr(
                model, "action_spec_unbatched", model.action_spec)
            world_model = getattr(model, "world_model", None)
            nets = None
            if world_model is not None and not hasattr(model, "transform"):
                nets = _fast_networks(world_model, self.state_key, self.belief_key, self.action_key,
                                      self.reward_key)
            if nets is not None:
                prior, reward, swapped = nets
                self.returns_model = self._tensor_returns(prior, _SwapArgs(reward) if swapped else reward,
                                                          sample_states)
            else:
                self._tensor_path = False
                self._start_keys = list(model.observation_spec.keys(True, True))
                if world_model is not None and not hasattr(model, "transform"):
                    self.returns_model = TensorDictReturns(world_model, self.action_key, self.reward_key,
                                                           [k for k in model.done_keys])
                else:
                    self.returns_model = EnvStepReturns(model, self.action_key, self.reward_key)
                self.state_dim = self.belief_dim = None
                return
        else:
            raise TypeError(
                "`model` must be a torchrl_rssm RSSMWorldModel, a TorchRL model-based env (e.g. DreamerEnv) "
                f"or a (prior, reward) pair; got {type(model).__name__}."
            )
        self._start_keys = [self.state_key, self.belief_key]
        self.state_dim = self.returns_model.state_dim
        self.belief_dim = self.returns_model.belief_dim

    @staticmethod
    def _tensor_returns(prior, reward, sample_states) -> nn.Module:
        if isinstance(prior, RSSMPrior):
            return FastRSSMReturns(prior, reward, sample=sample_states)
        return TensorReturns(prior, reward, sample=sample_states)

    # ------------------------------------------------------------- optimiser
    def search(self, returns_fn: Returns, mean: torch.Tensor, std: torch.Tensor,
               optim_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The optimiser: ``optim_steps`` refits of the plan ``(mean, std) [M, H, A]``."""
        raise NotImplementedError

    def _optimize_eager(self, state, belief, mean, std):
        # One function of tensors, so that torch.compile(fullgraph=True) and CUDA graphs see it whole.
        with torch.no_grad():
            model = self.returns_model
            if isinstance(model, FastRSSMReturns):  # fold the weights once for all iterations
                weights = model.weights()
                return self.search(lambda a: model(state, belief, a, weights=weights), mean, std, self.optim_steps)
            return self.search(lambda a: model(state, belief, a), mean, std, self.optim_steps)

    def _optimizer(self, device: torch.device) -> Callable:
        """The search function for inputs on ``device``, compiled on first use if asked.

        ``compile`` scope ``"auto"`` compiles the whole search on CUDA and only the
        latent rollout on CPU, where inductor's random-number and top-k kernels make a
        whole-search graph slower than eager (measured at the small bench_planner.py
        setting with 8 envs: 39 ms with aten's RNG, 83 ms with inductor's, 32 ms eager).
        """
        if self._compile_options is None:
            return self._optimize_eager
        scope = self._compile_scope
        if scope == "auto":
            scope = "search" if device.type == "cuda" else "rollout"
        if scope == "search":
            if self._compiled_search is None:  # unbound: a deepcopy must run its own modules
                self._compiled_search = torch.compile(type(self)._optimize_eager, **self._compile_options)
            return functools.partial(self._compiled_search, self)
        if not self._rollout_compiled:
            model = self.returns_model  # ours: its plain rollout; others: nn.Module.compile (forward, in place)
            (model.compile_rollout if isinstance(model, FastRSSMReturns) else model.compile)(**self._compile_options)
            self._rollout_compiled = True
        return self._optimize_eager

    def _run(self, state, belief, mean, std):
        if self.cuda_graph and state.is_cuda:
            return self._graphed(state, belief, mean, std)
        return self._optimizer(state.device)(state, belief, mean, std)

    def _graphed(self, state, belief, mean, std):
        """Replays a CUDA graph captured once per batch shape (fixed shapes, static buffers)."""
        key = (tuple(state.shape), tuple(belief.shape), state.dtype, state.device)
        entry = self._graphs.get(key)
        optimize = self._optimizer(state.device)
        if entry is None:
            static_in = [x.clone() for x in (state, belief, mean, std)]
            stream = torch.cuda.Stream(device=state.device)
            stream.wait_stream(torch.cuda.current_stream(state.device))
            with torch.cuda.stream(stream):  # warm-up outside the capture (lazy init, autotuning)
                for _ in range(2):
                    optimize(*static_in)
            torch.cuda.current_stream(state.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = optimize(*static_in)
            entry = self._graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = entry
        for buf, x in zip(static_in, (state, belief, mean, std)):
            buf.copy_(x)
        graph.replay()
        return tuple(o.clone() for o in static_out)

    # --------------------------------------------------------------- tensor API
    def initial_plan(self, batch: int, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """The cold-start plan ``(mean, std)``, each ``[M, H, A]`` (probabilities when discrete)."""
        return self.space.initial(batch, self.planning_horizon, self.init_std, device, dtype)

    def _check_latent(self, state: torch.Tensor, belief: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for name, x, dim in (("state", state, self.state_dim), ("belief", belief, self.belief_dim)):
            if not isinstance(x, torch.Tensor) or x.ndim < 1 or (dim is not None and x.shape[-1] != dim):
                raise ValueError(f"`{name}` must be a tensor of shape [*B, {dim}], got "
                                 f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}.")
        if state.shape[:-1] != belief.shape[:-1]:
            raise ValueError(f"`state` {tuple(state.shape)} and `belief` {tuple(belief.shape)} must share the "
                             "batch dims [*B].")
        return state.reshape(-1, state.shape[-1]), belief.reshape(-1, belief.shape[-1])

    def optimize(self, state: torch.Tensor, belief: torch.Tensor, mean: torch.Tensor | None = None,
                 std: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Runs the optimiser from the latents ``state [M, S]``, ``belief [M, D]``.

        ``mean``/``std`` (``[M, H, A]``) give the initial plan (cold start if omitted).
        Returns the final plan ``(mean, std)``; for discrete actions ``mean`` holds
        per-step probabilities.
        """
        state, belief = self._check_latent(state, belief)
        M = state.shape[0]
        init_mean, init_std = self.initial_plan(M, state.device, state.dtype)
        mean = init_mean if mean is None else mean.reshape(M, self.planning_horizon, -1).to(state.dtype)
        std = init_std if std is None else std.reshape(M, self.planning_horizon, -1).to(state.dtype)
        return self._run(state, belief, mean, std)

    def start_plan(self, batch: int, device=None, dtype=torch.float32, prev_plan: torch.Tensor | None = None,
                   fresh_rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The plan a search starts from: cold, or warm from ``prev_plan`` (``[M, H, A]``).

        Warm start: the previous mean shifted one step earlier (its new last step is
        the cold-start mean); the shifted steps search with ``warm_std`` (a fraction of
        the box half-width, like ``init_std``) around it, the new step with ``init_std``.
        Discrete plans mix the shifted probabilities with ``warm_std`` of uniform, so
        that no action has probability 0. Rows where ``fresh_rows`` is set (episode
        starts) start cold.
        """
        mean, std = self.initial_plan(batch, device, dtype)
        if prev_plan is None:
            return mean, std
        prev = prev_plan.reshape(batch, self.planning_horizon, -1).to(device=mean.device, dtype=mean.dtype)
        if self.space.discrete:
            w = min(max(self.warm_std, 0.0), 1.0)
            warm_mean, warm_std = shift_plan((1 - w) * prev + w * mean, mean), std
        else:
            near = self.space.initial(batch, self.planning_horizon, self.warm_std, mean.device, mean.dtype)[1]
            warm_mean, warm_std = shift_plan(prev, mean), shift_plan(near, std)
        if fresh_rows is not None:  # episode starts: no previous plan to reuse
            fresh_rows = fresh_rows.reshape(batch, 1, 1).to(mean.device)
            warm_mean, warm_std = torch.where(fresh_rows, mean, warm_mean), torch.where(fresh_rows, std, warm_std)
        return warm_mean, warm_std

    def plan(self, state: torch.Tensor, belief: torch.Tensor, prev_plan: torch.Tensor | None = None) -> torch.Tensor:
        """Plans from ``state [*B, S]``, ``belief [*B, D]``; returns the action ``[*B, *action_spec.shape]``.

        ``prev_plan`` (``[*B, H, A]``, the previous call's mean) warm-starts the search
        (see :meth:`start_plan`).
        """
        batch = state.shape[:-1]
        state, belief = self._check_latent(state, belief)
        mean, std = self.start_plan(state.shape[0], state.device, state.dtype, prev_plan)
        mean, _ = self._run(state, belief, mean, std)
        return self.space.to_env(self.space.first_action(mean), batch)

    # ----------------------------------------------------------------- tensordict
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        batch = tensordict.batch_size
        prev = fresh = None
        if self.warm_start:
            prev = tensordict.get(self.plan_key, None)
            fresh = tensordict.get(self.is_init_key, None)
            if prev is not None:
                # rows still holding the primer's zeros have no plan to reuse: they start cold,
                # decided per row on the device (no host sync, unlike `if not prev.any()`)
                unset = ~prev.reshape(*batch, -1).any(-1)
                fresh = unset if fresh is None else fresh.reshape(unset.shape).to(unset.device) | unset
        with torch.no_grad():
            if self._tensor_path:
                state, belief = tensordict.get(self.state_key, None), tensordict.get(self.belief_key, None)
                for name, key, x in (("state", self.state_key, state), ("belief", self.belief_key, belief)):
                    if x is None:
                        raise KeyError(f"The planner reads {name} from key {key!r}, which the tensordict lacks "
                                       f"(keys: {list(tensordict.keys(True, True))}).")
                state, belief = self._check_latent(state, belief)
                mean, std = self.start_plan(state.shape[0], state.device, state.dtype, prev, fresh)
                mean, _ = self._run(state, belief, mean, std)
            else:
                start = tensordict.select(*self._start_keys).reshape(-1)
                device = start.device if start.device is not None else self.action_spec.device
                mean, std = self.start_plan(start.shape[0], device, torch.float32, prev, fresh)
                mean, _ = self.search(lambda a: self.returns_model(start, a), mean, std, self.optim_steps)
            action = self.space.first_action(mean)
        tensordict.set(self.action_key, self.space.to_env(action, batch))
        if self.warm_start:
            tensordict.set(self.plan_key, mean.reshape(*batch, self.planning_horizon, -1))
        return tensordict

    def extra_repr(self) -> str:
        return (f"planning_horizon={self.planning_horizon}, optim_steps={self.optim_steps}, "
                f"num_candidates={self.num_candidates}, top_k={self.top_k}, actions={self.space.kind}, "
                f"path={type(self.returns_model).__name__}, warm_start={self.warm_start}")
