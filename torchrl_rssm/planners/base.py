"""PlannerBase: the TensorDict module both planners (CEM, MPPI) share.

Construction from a world model, a TorchRL model-based env or ``(prior, reward)``
(:meth:`PlannerBase._resolve`), key handling, warm start (:meth:`PlannerBase.start_plan`),
``torch.compile`` and CUDA-graph capture. Subclasses write :meth:`PlannerBase.search`.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey
from torch import nn
from torchrl.data import TensorSpec

from ..interop import find_dreamer_env_prior, find_dreamer_env_reward
from ..modules.heads_v3 import DreamerV3TwoHotHead
from ..modules.imagination import FastRSSMReturns
from ..modules.rssm import RSSMPrior
from ..modules.world_model import RSSMWorldModel
from .action_space import ActionSpace, Returns, shift_plan
from .torchrl_envs import EnvStepReturns, TensorDictReturns, TensorReturns


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
        continuation_model: nn.Module | None = None,
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
        self._resolve(model, action_spec, reward_model, sample_states, continuation_model)
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
    def _resolve(self, model, action_spec, reward_model, sample_states, continuation_model=None) -> None:
        """Turns the ``model`` argument into a returns function and the input keys."""
        from torchrl.envs import EnvBase

        self._tensor_path = True
        if isinstance(model, RSSMWorldModel):
            prior = model.rollout.prior
            reward = reward_model if reward_model is not None else model.reward_model
            self.returns_model = self._tensor_returns(prior, reward, sample_states, continuation_model)
            self.action_spec = action_spec
            if action_spec is None:
                raise ValueError("`action_spec` is required when planning with a world model "
                                 "(e.g. action_spec=env.action_spec).")
        elif isinstance(model, (tuple, list)) and len(model) in (2, 3):
            prior, reward, *continuation = model
            if continuation and continuation_model is not None:
                raise ValueError("Give the continuation head once: in `model` (prior, reward, continuation) or as "
                                 "`continuation_model`, not both.")
            continuation = continuation[0] if continuation else continuation_model
            self.returns_model = self._tensor_returns(prior, reward, sample_states, continuation)
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
            prior = reward = None
            if world_model is not None and not hasattr(model, "transform"):  # a transformed env steps more
                prior = find_dreamer_env_prior(world_model, self.state_key, self.belief_key, self.action_key)
                reward = find_dreamer_env_reward(world_model, self.state_key, self.belief_key, self.reward_key)
            if prior is not None and reward is not None:
                self.returns_model = self._tensor_returns(prior, reward, sample_states, continuation_model)
            else:
                if continuation_model is not None:
                    raise ValueError("`continuation_model` needs a tensor model (a world model, (prior, reward) or a "
                                     "DreamerEnv whose prior and reward head are found); this env runs tensordicts.")
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
                "`model` must be a torchrl_rssm RSSMWorldModel, a TorchRL model-based env (e.g. DreamerEnv), "
                f"a (prior, reward) pair or a (prior, reward, continuation) triple; got {type(model).__name__}."
            )
        self._start_keys = [self.state_key, self.belief_key]
        self.state_dim = self.returns_model.state_dim
        self.belief_dim = self.returns_model.belief_dim

    @staticmethod
    def _tensor_returns(prior, reward, sample_states, continuation=None) -> nn.Module:
        # the fused scorer spells out PlaNet's Gaussian step and a scalar reward head; every other
        # model (DreamerV3's categorical prior, two-hot heads, a continuation head) runs the shared loop
        if isinstance(prior, RSSMPrior) and continuation is None and not isinstance(reward, DreamerV3TwoHotHead):
            return FastRSSMReturns(prior, reward, sample=sample_states)
        return TensorReturns(prior, reward, sample=sample_states, continuation=continuation)

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
