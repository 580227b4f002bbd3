"""Dreamer's behaviour losses (Hafner et al. 2020): actor and value learned in imagination.

- :func:`lambda_return`: the paper's TD(lambda) return over an imagined trajectory.
- :class:`DreamerActorLoss`, :class:`DreamerValueLoss`: drop-in for TorchRL's classes of the
  same names (constructor arguments, ``set_keys``, ``make_value_estimator(gamma=, lmbda=)``,
  return values ``(TensorDict(loss_*), fake_data)``), taking either this package's world model
  (:func:`~torchrl_rssm.modules.make_world_model`) or a TorchRL ``DreamerEnv`` (whose
  networks :mod:`torchrl_rssm.interop` finds; :func:`~torchrl_rssm.interop.to_dreamer_env`
  builds one around this package's world model).

**Time convention** (TorchRL's ``fake_data`` layout). Imagination starts from s_0 (a
posterior state of the batch) and runs H steps: row t (t = 0..H-1) holds the state s_t it
starts from (``state``/``belief``), the action a_t ~ actor(s_t), the state it reaches
s_{t+1} (``("next", "state")``), the reward of that step r_t = E[r | s_{t+1}] (the reward
head's mean on s_{t+1}, ``("next", "reward")``), and v(s_{t+1}) (``("next", "state_value")``).
``lambda_target[t]`` is the lambda-return V_t of s_t:

    V_t = r_t + gamma * ((1 - lambda) * v(s_{t+1}) + lambda * V_{t+1}),   V_H = v(s_H),

so V_{H-1} = r_{H-1} + gamma * v(s_H). Targets cover the H states s_0..s_{H-1} (15 for the
paper's H = 15: the start state and 14 imagined ones; the official code uses 14, the imagined
s_1..s_14 with the reward of the state itself; TorchRL's layout, which this follows, uses 15).
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey
from torch import nn
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.objectives.common import LossModule
from torchrl.objectives.utils import _GAMMA_LMBDA_DEPREC_ERROR, ValueEstimators, distance_loss

from ..interop import find_dreamer_env_prior, find_dreamer_env_reward, find_mean_head
from ..modules.actor import tanh_normal_sampler
from ..modules.rssm import imagine
from ..modules.world_model import RSSMWorldModel
from .elbo import NonFiniteInputError, encode_first_observations

__all__ = ["DreamerActorLoss", "DreamerValueLoss", "lambda_return"]


# ------------------------------------------------------------------ lambda-returns
def lambda_return(
    reward: torch.Tensor,
    value: torch.Tensor,
    bootstrap: torch.Tensor | None = None,
    gamma: float = 0.99,
    lmbda: float = 0.95,
) -> torch.Tensor:
    """The paper's lambda-returns V_0..V_{H-1} over an imagined trajectory, time on dim -2.

    With ``reward[..., t, :]`` = r_t (the reward of step t, from s_t to s_{t+1}) and
    ``value[..., t, :]`` = v(s_{t+1}) (the value of the state step t reaches; TorchRL's
    ``("next", "state_value")``), both ``[*B, H, 1]`` (or ``[*B, H, F]``):

        V_t = r_t + gamma * ((1 - lmbda) * v(s_{t+1}) + lmbda * V_{t+1}),   V_H = bootstrap,

    ``bootstrap`` (``[*B, F]``) defaults to v(s_H) = ``value[..., -1, :]``, which gives
    V_{H-1} = r_{H-1} + gamma * v(s_H). No episode ends inside imagination. This equals
    ``torchrl.objectives.value.functional.vec_td_lambda_return_estimate(gamma, lmbda, value,
    reward, done=0, terminated=0, time_dim=-2)``. Computed in closed form (one ``[H, H]``
    matmul), differentiable in ``reward``, ``value`` and ``bootstrap``.

    Examples:
        >>> import torch
        >>> r, v = torch.ones(1, 3, 1), torch.full((1, 3, 1), 10.0)
        >>> lambda_return(r, v, gamma=0.5, lmbda=0.0).flatten().tolist()  # lmbda = 0: r + gamma * v
        [6.0, 6.0, 6.0]
        >>> lambda_return(r, v, gamma=0.5, lmbda=0.5).flatten().tolist()  # V_2 = 6, V_1 = 1 + 0.5 * (5 + 3)
        [4.75, 5.0, 6.0]
    """
    if reward.shape != value.shape or reward.ndim < 2:
        raise ValueError(
            f"lambda_return: reward and value must share a shape [*B, H, F]; got {tuple(reward.shape)} "
            f"and {tuple(value.shape)}."
        )
    H = reward.shape[-2]
    if bootstrap is None:
        bootstrap = value[..., -1, :]
    elif bootstrap.shape != value[..., -1, :].shape:
        raise ValueError(
            f"lambda_return: bootstrap must have shape [*B, F] = {tuple(value[..., -1, :].shape)}, "
            f"got {tuple(bootstrap.shape)}."
        )
    inputs = reward + (gamma * (1.0 - lmbda)) * value
    decay = gamma * lmbda
    t = torch.arange(H, device=reward.device, dtype=reward.dtype)
    # V_t = sum_{j >= t} decay^(j - t) inputs_j + decay^(H - t) bootstrap
    power = (t[None, :] - t[:, None]).clamp_min(0)
    weights = torch.where(t[None, :] >= t[:, None], decay ** power, torch.zeros((), dtype=reward.dtype,
                                                                                 device=reward.device))
    tail = (decay ** (H - t))[:, None]  # [H, 1]
    return torch.matmul(weights, inputs) + tail * bootstrap.unsqueeze(-2)


# ------------------------------------------------------------------ helpers
@contextlib.contextmanager
def _held_out(*modules: nn.Module | None):
    """Parameters of ``modules`` do not require grad inside; each flag is restored as it was.

    (TorchRL's ``hold_out_net`` sets every parameter back to ``requires_grad=True`` on exit,
    which would unfreeze parameters a user froze on purpose.)
    """
    params = [p for m in modules if m is not None for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


def _next(key: NestedKey) -> tuple:
    return ("next", *key) if isinstance(key, tuple) else ("next", key)


def _resolve_model(model, keys, who: str):
    """(imagine function, prior, reward-mean function, our world model or None) for ``model``.

    The imagine function is ``imagine(start, action=None, policy=None, horizon=None,
    noise=None)``: our rollout's (with its compiled step, if any) or :func:`imagine` on the
    prior found inside a ``DreamerEnv``.
    """
    from torchrl.envs import EnvBase

    if isinstance(model, RSSMWorldModel):
        try:
            reward = model.reward_model
        except (IndexError, AttributeError, KeyError):
            reward = None
        if not isinstance(reward, nn.Module):
            raise ValueError(f"{who}: the world model has no reward head (world_model[1] should be the reward "
                             "module, as make_world_model builds it); Dreamer scores imagined states with it.")
        return model.rollout.imagine, model.rollout.prior, reward, model
    if isinstance(model, EnvBase):
        world_model = getattr(model, "world_model", None)
        try:
            world_model[0], world_model[1]
        except (TypeError, IndexError, KeyError):
            raise ValueError(
                f"{who}: model_based_env.world_model must be WorldModelWrapper(transition, reward) as in "
                f"TorchRL's Dreamer example (a DreamerEnv); got {type(world_model).__name__} without a reward head."
            ) from None
        prior = find_dreamer_env_prior(world_model, keys.state, keys.belief, keys.action)
        if prior is None:
            raise ValueError(
                f"{who}: could not find the prior network in model_based_env.world_model[0]: expected one "
                f"TensorDictModule with in_keys [{keys.state!r}, {keys.belief!r}, {keys.action!r}] and out_keys "
                "(_, _, state, belief), as TorchRL's Dreamer example builds it."
            )
        reward = find_dreamer_env_reward(world_model, keys.state, keys.belief)
        if reward is None:
            raise ValueError(
                f"{who}: model_based_env.world_model[1] is not a reward head on ({keys.state!r}, {keys.belief!r}) "
                "(a TensorDictModule, optionally followed by a probabilistic module reading its 'loc')."
            )
        return functools.partial(imagine, prior), prior, reward, None
    raise TypeError(
        f"{who}: model_based_env must be a torchrl_rssm RSSMWorldModel (make_world_model) or a TorchRL "
        f"DreamerEnv; got {type(model).__name__}."
    )


def _action_dim(prior: nn.Module) -> int:
    """The action size a prior reads: ours has ``action_dim``, TorchRL's ``action_shape``."""
    dim = getattr(prior, "action_dim", None)
    return int(dim) if dim is not None else int(prior.action_shape[-1])


HEAD_CHUNK_ROWS = 2560


def _over_steps(fn, state: torch.Tensor, belief: torch.Tensor, rows: int | None = HEAD_CHUNK_ROWS) -> torch.Tensor:
    """``fn(state, belief)`` on ``[*B, H, F]`` latents, a few time steps (about ``rows`` rows) at a time.

    Same result as one call; on CPU, chunks whose activations stay in cache run the heads'
    forward and backward passes about 1.3-1.7x faster than one call over all B x H rows
    (measured with the paper's 400-unit heads, 2500 x 15 rows, 1 thread).
    """
    H = state.shape[-2]
    N = state[..., 0, 0].numel()
    if rows is None or N * H <= rows:
        return fn(state, belief)
    k = max(1, rows // max(N, 1))
    outs = [fn(s, b) for s, b in zip(state.split(k, -2), belief.split(k, -2))]
    return torch.cat(outs, -2)


def _time_weights(gamma: float, H: int, like: torch.Tensor, discount: bool) -> torch.Tensor:
    """w_t = gamma^t (1 at the first step) when ``discount``, else 1: ``[H, 1]``."""
    if not discount:
        return torch.ones(H, 1, dtype=like.dtype, device=like.device)
    return (gamma ** torch.arange(H, dtype=like.dtype, device=like.device))[:, None]


def _reduce(x: torch.Tensor, time_reduction: str) -> torch.Tensor:
    """``[*B, H, 1]`` -> scalar: TorchRL's sum over time and mean over starts, or the mean of all."""
    if time_reduction == "sum":
        return x.sum((-2, -1)).mean()
    return x.mean()


_AUTOCAST_DTYPES = (torch.bfloat16, torch.float16)


def _check_autocast_dtype(dtype, who: str):
    if dtype is not None and dtype not in _AUTOCAST_DTYPES:
        raise ValueError(f"{who}: autocast_dtype must be None, torch.bfloat16 or torch.float16, got {dtype!r}.")
    return dtype


def _autocast(like: torch.Tensor, dtype: torch.dtype | None):
    """``torch.autocast`` on ``like``'s device with ``dtype``, or nothing when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(like.device.type, dtype=dtype)


def _check_time_reduction(value: str, who: str) -> str:
    if value not in ("sum", "mean"):
        raise ValueError(f"{who}: time_reduction must be 'sum' (TorchRL's) or 'mean' (the paper's), got {value!r}.")
    return value


# ------------------------------------------------------------------ actor loss
class DreamerActorLoss(LossModule):
    """Dreamer's actor loss: minus the discounted lambda-returns of trajectories imagined with the actor.

    Drop-in for ``torchrl.objectives.DreamerActorLoss``: same constructor, keys, value
    estimator call (``make_value_estimator(gamma=0.99, lmbda=0.95)``, the defaults) and
    outputs ``(TensorDict(loss_actor), fake_data)``. Differences, on purpose:

    - ``lambda_target`` is the paper's lambda-return (TorchRL 0.14.1 gives the one-step TD
      target r + gamma v: its estimator reads the feature dimension as time).
    - Rewards and values of imagined states are the heads' means (TorchRL samples them
      from probabilistic heads).
    - Imagination runs on tensors through the package's one prior scan
      (:func:`~torchrl_rssm.modules.imagine`, ``RSSMRollout.imagine`` for its world model), no
      tensordict per step; the heads run after the loop, a few steps at a time (cache-sized chunks).
    - ``model_based_env`` may be this package's world model or TorchRL's ``DreamerEnv``
      (whose prior and reward networks are found inside ``env.world_model``).

    **Start states.** Every latent of the batch, detached: ``("next", state)`` /
    ``("next", belief)`` (the posterior states written by the world model, e.g. by
    ``world_model(td)``) when present, else the root ``state``/``belief`` (TorchRL's
    choice), else, with this package's world model and the observation in the batch,
    the posterior recomputed without gradients.

    **Gradients.** The actor's input is stop-gradiented (the official code's); its samples
    are reparameterised; the returns depend on the actions through the dynamics, reward and
    value heads, whose parameters are held out (``requires_grad`` off during the forward pass,
    restored after, flag by flag), so ``loss_actor.backward()`` fills only the actor's
    gradients. The value model is a plain attribute, not a submodule (as in TorchRL).

    **Time convention, 15 targets**: see :mod:`torchrl_rssm.objectives.dreamer`.

    Args:
        actor_model: the actor (``make_dreamer_actor``, or any module writing ``action``
            from ``state``/``belief``; ``TanhNormal`` actors are sampled on tensors).
        value_model: the value (``make_value_model``, or TorchRL's Dreamer value module).
        model_based_env: ``RSSMWorldModel`` or TorchRL ``DreamerEnv``.
        imagination_horizon: H >= 1 (paper: 15).
        discount_loss: weight step t by gamma^t.
        time_reduction: ``"sum"`` over time then mean over starts (TorchRL's) or
            ``"mean"`` over both (the paper's).
        check_finite: raise :class:`~torchrl_rssm.objectives.NonFiniteInputError` when the
            imagined returns hold NaN/inf (one host sync per call), so the recipe's NaN
            policy (skip the batch) catches it as it does for the model loss.
        autocast_dtype: ``None`` (default: plain float32), ``torch.bfloat16`` or
            ``torch.float16``: mixed precision, as the official Dreamer code trains (fp16).
            Imagination (actor, prior) and the reward and value heads run under
            ``torch.autocast(device_type, autocast_dtype)``: matmuls in low precision, the
            recurrent belief, the sampled states and actions stay float32. The rewards and
            values are cast back to float32 before the lambda-returns, the loss reduction and
            ``fake_data`` (all float32). Parameters, gradients and optimiser state stay
            float32 (autocast casts weights per op). About 3x faster at the paper's sizes on a
            CPU with native bfloat16 matmuls; losses and gradients within ~1% of float32
            (measured ~0.5% on a small model with the same noise; a test bounds it at 2.5%).
            Prefer bfloat16: float16 gradients can underflow without a ``torch.amp.GradScaler``.
        compile: ``False`` (default: eager), ``True`` or a dict of ``torch.compile`` options
            (e.g. ``{"backend": "aot_eager"}``, ``{"mode": "max-autotune"}``): the imagination
            (actor, prior, H steps unrolled) and the reward and value heads are one compiled
            graph, forward and backward (inductor fuses the elementwise work around the
            matmuls; on the whole update, 1 thread: ~1.5x at state 8 / belief 32 / 32-unit
            heads, ~1.1x at the paper's sizes, ~1.2x on top of bfloat16 autocast there). The noise is drawn outside the graph in the
            eager path's order, so a seed gives the same numbers as eager (a test checks
            losses and gradients). The first call compiles (a minute or more on CPU); a new
            batch shape recompiles. Needs a TanhNormal actor on ``(state, belief)``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded, Composite, Unbounded
        >>> from torchrl_rssm.modules import make_dreamer_actor, make_value_model, make_world_model
        >>> wm = make_world_model(Composite(observation=Unbounded((5,))), Bounded(-1, 1, (2,)),
        ...                       state_dim=8, belief_dim=16, hidden_dim=32)
        >>> actor = make_dreamer_actor(Bounded(-1, 1, (2,)), 8, 16, num_cells=32)
        >>> value = make_value_model(8, 16, hidden_dim=32)
        >>> actor_loss = DreamerActorLoss(actor, value, wm, imagination_horizon=5)
        >>> value_loss = DreamerValueLoss(value)
        >>> td = TensorDict({("next", "state"): torch.randn(4, 3, 8), ("next", "belief"): torch.randn(4, 3, 16)}, [4, 3])
        >>> loss_a, fake_data = actor_loss(td)
        >>> loss_v, _ = value_loss(fake_data)
        >>> fake_data["lambda_target"].shape, loss_a["loss_actor"].shape
        (torch.Size([4, 3, 5, 1]), torch.Size([]))
    """

    @dataclass
    class _AcceptedKeys:
        """Keys of the input and of ``fake_data``.

        Attributes:
            state: the stochastic state (``"state"``; start states at ``("next", state)``).
            belief: the deterministic belief (``"belief"``).
            action: the actor's output (``"action"``).
            reward: the imagined reward, under ``"next"`` (``"reward"``).
            value: the value of imagined states, under ``"next"`` (``"state_value"``).
            done, terminated: all-False flags written under ``"next"`` (TorchRL's layout).
        """

        state: NestedKey = "state"
        belief: NestedKey = "belief"
        action: NestedKey = "action"
        reward: NestedKey = "reward"
        value: NestedKey = "state_value"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys
    default_value_estimator = ValueEstimators.TDLambda
    SUPPORTED_VALUE_ESTIMATORS = (ValueEstimators.TD0, ValueEstimators.TD1, ValueEstimators.TDLambda)

    def __init__(
        self,
        actor_model: TensorDictModuleBase,
        value_model: TensorDictModuleBase,
        model_based_env,
        *,
        imagination_horizon: int = 15,
        discount_loss: bool = True,
        gamma: float | None = None,
        lmbda: float | None = None,
        time_reduction: str = "sum",
        check_finite: bool = True,
        autocast_dtype: torch.dtype | None = None,
        compile: bool | dict = False,
    ):
        super().__init__()
        if gamma is not None or lmbda is not None:
            raise TypeError(_GAMMA_LMBDA_DEPREC_ERROR)
        if int(imagination_horizon) != imagination_horizon or imagination_horizon < 1:
            raise ValueError(f"DreamerActorLoss: imagination_horizon must be an integer >= 1, got {imagination_horizon}.")
        self.actor_model = actor_model
        self.__dict__["value_model"] = value_model  # not a submodule: its parameters are the value loss's
        self.model_based_env = model_based_env
        self.imagination_horizon = int(imagination_horizon)
        self.discount_loss = discount_loss
        self.time_reduction = _check_time_reduction(time_reduction, "DreamerActorLoss")
        self.check_finite = check_finite
        self.autocast_dtype = _check_autocast_dtype(autocast_dtype, "DreamerActorLoss")
        self.gamma, self.lmbda = 0.99, 0.95
        imagine_fn, prior, reward, world_model = _resolve_model(model_based_env, self.tensor_keys, "DreamerActorLoss")
        # plain attributes: the prior and heads are (parts of) model_based_env, already registered
        self.__dict__["_imagine"] = imagine_fn
        self.__dict__["_prior"] = prior
        self.__dict__["_reward"] = reward
        self.__dict__["_world_model"] = world_model
        self._refresh_fast_paths()
        if not isinstance(compile, (bool, dict)):
            raise TypeError(f"DreamerActorLoss: compile must be a bool or a dict of torch.compile options, "
                            f"got {type(compile).__name__}.")
        self.compile = compile
        self.__dict__["_compiled"] = None
        if compile is not False:
            if self._sampler is None:
                raise ValueError("DreamerActorLoss: compile needs a TanhNormal actor on (state, belief) "
                                 "(make_dreamer_actor's continuous actor), which runs on tensors.")
            self.__dict__["_compiled"] = torch.compile(self._imagine_and_score,
                                                       **({} if compile is True else compile))

    # ---------------------------------------------------------------- keys, estimator
    def _refresh_fast_paths(self) -> None:
        k = self.tensor_keys
        self.__dict__["_sampler"] = tanh_normal_sampler(self.actor_model, k.state, k.belief)
        self.__dict__["_value_mean"] = find_mean_head(self.value_model, k.state, k.belief)

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        if hasattr(self, "_imagine"):
            self._refresh_fast_paths()
        if self._value_estimator is not None:
            self._value_estimator.set_keys(value=self.tensor_keys.value)

    def make_value_estimator(self, value_type: ValueEstimators | None = None, **hyperparams) -> None:
        """Sets gamma and lambda: ``TDLambda`` (default; ``gamma=0.99, lmbda=0.95``), ``TD0`` (lambda 0), ``TD1`` (lambda 1).

        As in TorchRL, it also builds ``value_estimator`` (TorchRL's ``TD0Estimator``,
        ``TD1Estimator`` or ``TDLambdaEstimator``, without a value network) holding these
        settings and the value key, which ``set_keys(value=...)`` updates. The targets
        themselves are the closed-form :func:`lambda_return` over the imagined time steps.

        Examples:
            >>> from torchrl.data import Bounded, Composite, Unbounded
            >>> from torchrl.objectives.utils import ValueEstimators
            >>> from torchrl_rssm.modules import make_dreamer_actor, make_value_model, make_world_model
            >>> wm = make_world_model(Composite(observation=Unbounded((5,))), Bounded(-1, 1, (2,)),
            ...                       state_dim=8, belief_dim=16, hidden_dim=32)
            >>> loss = DreamerActorLoss(make_dreamer_actor(Bounded(-1, 1, (2,)), 8, 16, num_cells=32),
            ...                         make_value_model(8, 16, hidden_dim=32), wm)
            >>> loss.make_value_estimator(ValueEstimators.TDLambda, gamma=0.9, lmbda=0.8)
            >>> loss.set_keys(value="my_value")
            >>> loss.gamma, loss.lmbda, loss.value_estimator.tensor_keys.value
            (0.9, 0.8, 'my_value')
        """
        from torchrl.objectives.value import TD0Estimator, TD1Estimator, TDLambdaEstimator

        value_type = self.default_value_estimator if value_type is None else value_type
        if value_type not in self.SUPPORTED_VALUE_ESTIMATORS:
            raise NotImplementedError(
                f"DreamerActorLoss: value_type must be one of {self.SUPPORTED_VALUE_ESTIMATORS}, got {value_type}."
            )
        unknown = set(hyperparams) - {"gamma", "lmbda", "vectorized", "differentiable", "device"}
        if unknown:
            raise TypeError(f"DreamerActorLoss.make_value_estimator: unexpected arguments {sorted(unknown)}.")
        gamma = float(hyperparams.get("gamma", 0.99))
        lmbda = {ValueEstimators.TD0: 0.0, ValueEstimators.TD1: 1.0}.get(value_type, hyperparams.get("lmbda", 0.95))
        if not 0.0 <= gamma <= 1.0 or not 0.0 <= float(lmbda) <= 1.0:
            raise ValueError(f"DreamerActorLoss: gamma and lmbda must be in [0, 1], got {gamma}, {lmbda}.")
        self.gamma, self.lmbda = gamma, float(lmbda)
        self.value_type = value_type
        common = {"gamma": gamma, "value_network": None, "device": hyperparams.get("device"),
                  "differentiable": hyperparams.get("differentiable", False)}
        if value_type == ValueEstimators.TD0:
            estimator = TD0Estimator(**common)
        elif value_type == ValueEstimators.TD1:
            estimator = TD1Estimator(**common)
        else:
            estimator = TDLambdaEstimator(lmbda=self.lmbda, vectorized=hyperparams.get("vectorized", True), **common)
        estimator.set_keys(value=self.tensor_keys.value, value_target="value_target")
        self._value_estimator = estimator

    # ---------------------------------------------------------------- pieces
    def start_states(self, tensordict: TensorDictBase) -> dict[str, torch.Tensor]:
        """The detached start latents ``{"state": [*B, S], "belief": [*B, D]}`` of a batch (see the class doc)."""
        k = self.tensor_keys
        keys = set(tensordict.keys(True, True))
        for s_key, b_key in ((_next(k.state), _next(k.belief)), (k.state, k.belief)):
            if s_key in keys and b_key in keys:
                return {"state": tensordict.get(s_key).detach(), "belief": tensordict.get(b_key).detach()}
        if self._world_model is not None and ("next", self._world_model.obs_key) in keys and "action" in keys:
            with torch.no_grad():  # episode starts filtered from their first observation, as in training
                td = tensordict.copy()
                encode_first_observations(self._world_model, td, observation_key=self._world_model.obs_key)
                out = self._world_model(td)
            return {"state": out.get(("next", "state")).detach(), "belief": out.get(("next", "belief")).detach()}
        raise KeyError(
            f"DreamerActorLoss: the batch has no start latents: expected ('next', {k.state!r}) and "
            f"('next', {k.belief!r}) (posterior states, e.g. from world_model(td)) or root {k.state!r}/{k.belief!r}"
            + (" or the observation and action to recompute them." if self._world_model is not None else ".")
        )

    def _policy(self):
        """``(state, belief) -> action`` on ``[N, F]`` tensors, with the actor's input detached."""
        sampler = self._sampler
        if sampler is not None:
            return lambda s, b: sampler(s.detach(), b.detach())
        k, actor = self.tensor_keys, self.actor_model

        def policy(s, b):
            td = TensorDict({k.state: s.detach(), k.belief: b.detach()}, [s.shape[0]])
            return actor(td).get(k.action)

        return policy

    def _value(self, state: torch.Tensor, belief: torch.Tensor) -> torch.Tensor:
        """The value model's mean on ``[*B, F]`` latents."""
        if self._value_mean is not None:
            return self._value_mean(state, belief)
        k = self.tensor_keys
        td = TensorDict({k.state: state, k.belief: belief}, state.shape[:-1])
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            return self.value_model(td).get(k.value)

    def imagine(self, start: dict[str, torch.Tensor], noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """H steps with the actor in the loop from ``start`` ``[N, F]``: :func:`~torchrl_rssm.modules.imagine`'s
        output ``[N, H, F]``."""
        with set_exploration_type(ExplorationType.RANDOM):
            return self._imagine(start, policy=self._policy(), horizon=self.imagination_horizon, noise=noise)

    def _imagine_and_score(self, state: torch.Tensor, belief: torch.Tensor, noise: torch.Tensor,
                           eps: tuple[torch.Tensor, ...]):
        """Imagination with the actor in the loop, then the heads, on tensors: what ``compile`` traces.

        ``noise`` ``[H, N, S]`` (the prior's) and ``eps`` (H tensors ``[N, A]``, the actor's) are
        drawn by the caller, in the order the eager path draws them.
        """
        sampler, H = self._sampler, self.imagination_horizon
        step = [0]

        def policy(s, b):
            a = sampler(s.detach(), b.detach(), eps[step[0]])
            step[0] += 1
            return a

        traj = self._imagine({"state": state, "belief": belief}, policy=policy, horizon=H,
                                     noise=noise.transpose(0, 1))
        s_all, b_all = traj["state"], traj["belief"]
        reward = _over_steps(self._reward, s_all, b_all)
        next_value = _over_steps(self._value, s_all, b_all)
        return s_all, b_all, traj["action"], reward, next_value

    # ---------------------------------------------------------------- forward
    def forward(self, tensordict: TensorDictBase) -> tuple[TensorDict, TensorDict]:
        """Imagines from every latent of ``tensordict`` and returns ``(TensorDict(loss_actor), fake_data)``.

        ``fake_data`` has batch size ``[*B, H]`` (``tensordict``'s batch and the horizon) and
        holds, detached, ``state``, ``belief``, ``action``, ``("next", state/belief/reward/
        state_value/done/terminated)`` and ``lambda_target`` (see the module docstring);
        :class:`DreamerValueLoss` reads it.
        """
        k = self.tensor_keys
        start = self.start_states(tensordict)
        batch = start["state"].shape[:-1]
        flat = {name: x.reshape(-1, x.shape[-1]) for name, x in start.items()}
        H = self.imagination_horizon
        dtype = flat["state"].dtype
        with _held_out(self.model_based_env, self.value_model), _autocast(flat["state"], self.autocast_dtype):
            if self._compiled is not None:
                # the eager path's random stream: the prior's noise, then the actor's, step by step
                N, S = flat["state"].shape
                noise = torch.randn(H, N, S, device=flat["state"].device, dtype=dtype)
                A = _action_dim(self._prior)
                eps = tuple(torch.randn(N, A, device=noise.device, dtype=dtype) for _ in range(H))
                state, belief, action, reward, next_value = self._compiled(flat["state"], flat["belief"], noise, eps)
            else:
                traj = self.imagine(flat)
                state, belief, action = traj["state"], traj["belief"], traj["action"]  # s_1..s_H, [N, H, F]
                reward = _over_steps(self._reward, state, belief)  # heads' means, after the loop
                next_value = _over_steps(self._value, state, belief)
        if self.autocast_dtype is not None:  # returns, reduction and fake_data in the input's precision
            state, belief = state.to(dtype), belief.to(dtype)
            reward, next_value = reward.to(dtype), next_value.to(dtype)
        target = lambda_return(reward, next_value, gamma=self.gamma, lmbda=self.lmbda)
        if self.check_finite and not bool(torch.isfinite(target).all()):
            raise NonFiniteInputError(
                "DreamerActorLoss: non-finite values (NaN or inf) in the imagined lambda-returns "
                "(start latents, world model, reward or value output)."
            )
        w = _time_weights(self.gamma, H, target, self.discount_loss)
        loss = -_reduce(target * w, self.time_reduction)

        root_state = torch.cat([flat["state"].unsqueeze(1), state[:, :-1].detach()], 1)
        root_belief = torch.cat([flat["belief"].unsqueeze(1), belief[:, :-1].detach()], 1)
        flags = torch.zeros(reward.shape, dtype=torch.bool, device=reward.device)
        fake = {
            k.state: root_state, k.belief: root_belief, k.action: action.detach().to(dtype),
            ("next", k.state): state.detach(), ("next", k.belief): belief.detach(),
            ("next", k.reward): reward.detach(), ("next", k.value): next_value.detach(),
            ("next", k.done): flags, ("next", k.terminated): flags.clone(),
            "lambda_target": target.detach(),
        }
        fake_data = TensorDict(fake, batch_size=[flat["state"].shape[0], H]).reshape(*batch, H)
        return TensorDict({"loss_actor": loss}, batch_size=[]), fake_data


# ------------------------------------------------------------------ value loss
class DreamerValueLoss(LossModule):
    """Dreamer's value loss: the value of imagined states regressed on their (detached) lambda-returns.

    Drop-in for ``torchrl.objectives.DreamerValueLoss``: reads the ``fake_data`` of
    :class:`DreamerActorLoss` (either package's), evaluates the value model on the states the
    rows start from (``state``, ``belief``: s_0..s_{H-1}, detached there) and returns
    ``(TensorDict(loss_value), fake_data)``. The loss is
    ``sum_t w_t * distance(v(s_t), lambda_target_t)`` averaged over starts (TorchRL's
    reduction; ``time_reduction="mean"`` averages over time too), ``w_t = gamma^t`` with
    ``discount_loss``; ``value_loss`` is TorchRL's ``distance_loss`` name (``"l2"``: the
    squared error, twice the paper's ``0.5 (v - V)^2``; ``"l1"``, ``"smooth_l1"``). Only the
    value model gets gradients.

    Args:
        value_model: the value (``make_value_model`` or TorchRL's Dreamer value module).
        value_loss: ``"l2"`` (default), ``"l1"`` or ``"smooth_l1"``.
        discount_loss: weight step t by gamma^t.
        gamma: the discount of those weights (0.99).
        time_reduction: ``"sum"`` (TorchRL's) or ``"mean"`` (the paper's).
        autocast_dtype: ``None`` (default, float32), ``torch.bfloat16`` or ``torch.float16``:
            the value model's forward runs under ``torch.autocast``; its output is cast back to
            the targets' dtype before the distance and the reduction (float32). Parameters,
            gradients and optimiser state stay float32. See :class:`DreamerActorLoss`.
        compile: ``False`` (default), ``True`` or ``torch.compile`` options: the value forward,
            distance and reduction as one compiled graph (needs a value model on ``(state,
            belief)`` with one output).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_rssm.modules import make_value_model
        >>> value = make_value_model(8, 16, hidden_dim=32)
        >>> fake = TensorDict({"state": torch.randn(4, 5, 8), "belief": torch.randn(4, 5, 16),
        ...                    "lambda_target": torch.randn(4, 5, 1)}, [4, 5])
        >>> DreamerValueLoss(value)(fake)[0]["loss_value"].shape
        torch.Size([])
    """

    @dataclass
    class _AcceptedKeys:
        """Keys read from ``fake_data``.

        Attributes:
            value: where the value model writes (``"state_value"``).
            state, belief: the latents (``"state"``, ``"belief"``).
            lambda_target: the targets (``"lambda_target"``).
        """

        value: NestedKey = "state_value"
        state: NestedKey = "state"
        belief: NestedKey = "belief"
        lambda_target: NestedKey = "lambda_target"

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys

    def __init__(
        self,
        value_model: TensorDictModuleBase,
        value_loss: str | None = None,
        discount_loss: bool = True,
        gamma: float = 0.99,
        *,
        time_reduction: str = "sum",
        autocast_dtype: torch.dtype | None = None,
        compile: bool | dict = False,
    ):
        super().__init__()
        self.value_model = value_model
        self.autocast_dtype = _check_autocast_dtype(autocast_dtype, "DreamerValueLoss")
        self.value_loss = value_loss if value_loss is not None else "l2"
        if self.value_loss not in ("l1", "l2", "smooth_l1"):
            raise ValueError(f"DreamerValueLoss: value_loss must be 'l2', 'l1' or 'smooth_l1', got {value_loss!r}.")
        self.gamma = gamma
        self.discount_loss = discount_loss
        self.time_reduction = _check_time_reduction(time_reduction, "DreamerValueLoss")
        self._refresh()
        if not isinstance(compile, (bool, dict)):
            raise TypeError(f"DreamerValueLoss: compile must be a bool or a dict of torch.compile options, "
                            f"got {type(compile).__name__}.")
        self.compile = compile
        if compile is not False and self._value_mean is None:
            raise ValueError("DreamerValueLoss: compile needs a value model on (state, belief) with one output "
                             "(make_value_model, or TorchRL's Dreamer value module), which runs on tensors.")
        self.__dict__["_compiled"] = (None if compile is False
                                      else torch.compile(self._score, **({} if compile is True else compile)))

    def _refresh(self) -> None:
        k = self.tensor_keys
        self.__dict__["_value_mean"] = find_mean_head(self.value_model, k.state, k.belief)

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        if "value_model" in self._modules:
            self._refresh()

    def forward(self, fake_data: TensorDictBase) -> tuple[TensorDict, TensorDictBase]:
        k = self.tensor_keys
        target = fake_data.get(k.lambda_target).detach()
        state, belief = fake_data.get(k.state).detach(), fake_data.get(k.belief).detach()
        if self._compiled is not None:
            with _autocast(target, self.autocast_dtype):
                loss = self._compiled(state, belief, target)
            return TensorDict({"loss_value": loss}, batch_size=[]), fake_data
        with _autocast(target, self.autocast_dtype):
            if self._value_mean is not None:
                value = _over_steps(self._value_mean, state, belief)
            else:
                td = fake_data.select(*self.value_model.in_keys, strict=False).detach()
                with set_exploration_type(ExplorationType.DETERMINISTIC):
                    value = self.value_model(td).get(k.value)
        value = value.to(target.dtype)
        w = _time_weights(self.gamma, target.shape[-2], target, self.discount_loss)
        loss = _reduce(w * distance_loss(value, target, self.value_loss), self.time_reduction)
        return TensorDict({"loss_value": loss}, batch_size=[]), fake_data

    def _score(self, state: torch.Tensor, belief: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss from tensors (what ``compile`` traces; the value in low precision under autocast)."""
        value = _over_steps(self._value_mean, state, belief)
        with torch.autocast(target.device.type, enabled=False):
            value = value.to(target.dtype)
            w = _time_weights(self.gamma, target.shape[-2], target, self.discount_loss)
            return _reduce(w * distance_loss(value, target, self.value_loss), self.time_reduction)
