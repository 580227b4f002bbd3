"""DreamerV3's losses (Hafner et al. 2023, arXiv 2301.04104), drop-in for TorchRL's.

- :class:`DreamerV3ModelLoss`: the world-model loss (categorical KL, symlog reconstruction,
  two-hot reward, continuation).
- :class:`DreamerV3ActorLoss`: imagination with the actor in the loop, lambda-returns,
  percentile return normalisation, entropy bonus, reparameterised or REINFORCE gradient.
- :class:`DreamerV3ValueLoss`: two-hot (or symlog-MSE) critic on the imagined returns, with a
  slow critic and the replay-value loss.
- The KL functions :func:`categorical_kl_terms` and :func:`categorical_kl_balanced`, and,
  re-exported from :mod:`torchrl_rssm.modules` (one implementation), :func:`symlog`,
  :func:`symexp`, :func:`two_hot_encode`, :func:`two_hot_decode`, :func:`two_hot_cross_entropy`
  (TorchRL exports all of these from ``torchrl.objectives``).

Names, constructor arguments and defaults, keys and outputs are TorchRL 0.14.1's
(``torchrl.objectives.dreamer_v3``). TorchRL's defaults are not the paper's; each loss has a
``from_paper(...)`` classmethod (and a ``PAPER_KWARGS`` dict) with the paper's settings.

**Where this differs from TorchRL** (each named again in the class that does it):

- ``DreamerV3ModelLoss`` never learns the continuation from ``done``: with
  ``lambda_continue > 0`` the target is ``1 - terminated`` and a missing ``terminated`` (or a
  missing continuation prediction) is an error. TorchRL falls back to ``done``, so that a time
  limit is learnt as a death, and silently skips the term when the prediction is missing.
- ``categorical_kl_balanced`` (``kl_mode="balanced"``, TorchRL's default) keeps TorchRL's
  per-categorical free-bits clamp, which TorchRL's own tests pin; the paper clamps the KL
  summed over the categoricals, which is ``kl_mode="separate"``
  (:func:`categorical_kl_terms`), the mode ``from_paper`` uses.
- ``DreamerV3ActorLoss`` imagines on tensors (no ``env.rollout``, no tensordict per step),
  feeds the actor stop-gradient latents (as the official code does; TorchRL backpropagates
  through the actor's inputs into earlier steps), and without a continuation model computes
  the lambda-return over the imagined time axis (TorchRL's estimator then reads the feature
  axis as time and returns one-step targets).
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

import torch
import torch.distributed
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import (
    ProbabilisticTensorDictModule,
    TensorDictModule,
    TensorDictModuleBase,
    TensorDictSequential,
)
from tensordict.utils import NestedKey, unravel_key
from torch import nn
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules.distributions.utils import (
    has_analytic_entropy,
    rsample_and_log_prob,
)
from torchrl.modules.value_norm import PercentileValueNorm
from torchrl.objectives.common import LossModule
from torchrl.objectives.utils import _GAMMA_LMBDA_DEPREC_ERROR, ValueEstimators
from torchrl.objectives.value.functional import (
    td_lambda_return_estimate,
    vec_td_lambda_return_estimate,
)

from ..interop import _leaves
from ..modules.rssm_v3 import unimix_probs
from ..modules.two_hot import (
    DEFAULT_NUM_BINS,
    symexp,
    symexp_bins,
    symlog,
    two_hot_cross_entropy,
    two_hot_decode,
    two_hot_encode,
)
from .dreamer import _held_out

__all__ = [
    "DreamerV3ActorLoss",
    "DreamerV3Loss",
    "DreamerV3ModelLoss",
    "DreamerV3ValueLoss",
    "categorical_kl_balanced",
    "categorical_kl_terms",
    "symexp",
    "symlog",
    "two_hot_cross_entropy",
    "two_hot_decode",
    "two_hot_encode",
]

# The paper's discount, 1 - 1 / 333 (a horizon of 333 steps), written into the continuation target.
PAPER_DISCOUNT = 1.0 - 1.0 / 333.0


# ------------------------------------------------------------------ categorical KL
def _check_logits_pair(posterior_logits: torch.Tensor, prior_logits: torch.Tensor, who: str) -> None:
    if posterior_logits.ndim < 2 or posterior_logits.shape != prior_logits.shape:
        raise ValueError(
            f"{who}: posterior_logits and prior_logits must share a shape [..., num_categoricals, num_classes]; "
            f"got {tuple(posterior_logits.shape)} and {tuple(prior_logits.shape)}."
        )


def _unimix_log_probs(logits: torch.Tensor, unimix: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(probs, log probs) of softmax(logits) mixed with ``unimix`` of the uniform distribution."""
    if not 0 <= unimix < 1:
        raise ValueError(f"unimix must be in [0, 1), got {unimix}.")
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # KL arithmetic in float32 at least
    if not unimix:
        log_probs = torch.log_softmax(logits, dim=-1)  # finite even where softmax underflows to 0
        return log_probs.exp(), log_probs
    probs = unimix_probs(logits, unimix)
    return probs, probs.log()


def categorical_kl_terms(
    posterior_logits: torch.Tensor,
    prior_logits: torch.Tensor,
    free_nats: float = 1.0,
    unimix: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's dynamics and representation KL losses (scalars), free bits on the sum.

    ``dyn = max(free_nats, KL(sg(post) || prior))`` trains only the prior and
    ``rep = max(free_nats, KL(post || sg(prior)))`` only the posterior, each KL **summed over
    the categoricals before the clamp** (the latent is one distribution over C x K one-hots),
    then averaged over the batch. Both distributions are mixed with ``unimix`` of uniform.

    Args:
        posterior_logits, prior_logits: ``[..., num_categoricals, num_classes]``.
        free_nats: the floor of each summed KL (1 nat in the paper).
        unimix: the uniform mixture (0.01 in the paper).

    Examples:
        >>> import math, torch
        >>> post = torch.tensor([[[math.log(3.0), 0.0], [0.0, 0.0]]])  # (0.75, 0.25) and uniform
        >>> prior = torch.zeros(1, 2, 2)
        >>> dyn, rep = categorical_kl_terms(post, prior, free_nats=0.0, unimix=0.0)
        >>> round(dyn.item(), 4)  # 0.75 log 1.5 + 0.25 log 0.5
        0.1308
        >>> categorical_kl_terms(post, prior, free_nats=1.0, unimix=0.0)[0].item()  # the sum is clamped
        1.0
    """
    _check_logits_pair(posterior_logits, prior_logits, "categorical_kl_terms")
    post, post_log = _unimix_log_probs(posterior_logits, unimix)
    _, prior_log = _unimix_log_probs(prior_logits, unimix)
    dynamics = (post.detach() * (post_log.detach() - prior_log)).sum((-1, -2))
    representation = (post * (post_log - prior_log.detach())).sum((-1, -2))
    if free_nats:
        dynamics = dynamics.clamp_min(free_nats)
        representation = representation.clamp_min(free_nats)
    return dynamics.mean(), representation.mean()


def categorical_kl_balanced(
    posterior_logits: torch.Tensor,
    prior_logits: torch.Tensor,
    alpha: float = 0.8,
    free_bits: float = 1.0,
) -> torch.Tensor:
    """TorchRL's balanced KL: ``alpha * KL(sg(post) || prior) + (1 - alpha) * KL(post || sg(prior))``.

    Kept as TorchRL 0.14.1 computes it (its tests pin it): ``free_bits`` clamps **each
    categorical's** KL, then the mean over categoricals and batch is taken. This is not the
    paper's, which clamps the KL summed over the categoricals: here every categorical under
    ``free_bits`` loses its gradient even when the total is far above the floor (in sum terms a
    floor of ``C * free_bits`` nats, 32 nats for 32 categoricals), and the result is a mean over
    categoricals, not their sum. Use :func:`categorical_kl_terms` (``kl_mode="separate"``) for
    the paper.

    Examples:
        >>> import math, torch
        >>> post = torch.tensor([[[math.log(3.0), 0.0], [0.0, 0.0]]])
        >>> prior = torch.zeros(1, 2, 2)
        >>> # per categorical: 0.1308 and 0; each is clamped to 0.1 first, then averaged
        >>> round(categorical_kl_balanced(post, prior, alpha=0.8, free_bits=0.1).item(), 4)
        0.1154
    """
    _check_logits_pair(posterior_logits, prior_logits, "categorical_kl_balanced")
    eps = 1e-8
    post = torch.softmax(posterior_logits, dim=-1).clamp(min=eps)
    prior = torch.softmax(prior_logits, dim=-1).clamp(min=eps)
    post_sg, prior_sg = post.detach(), prior.detach()
    kl_prior = (post_sg * (post_sg.log() - prior.log())).sum(-1)
    kl_post = (post * (post.log() - prior_sg.log())).sum(-1)
    kl_prior = kl_prior.clamp_min(free_bits).mean()
    kl_post = kl_post.clamp_min(free_bits).mean()
    return alpha * kl_prior + (1.0 - alpha) * kl_post


def _gather_across_ranks(values: torch.Tensor, group) -> torch.Tensor:
    """``values`` of every rank of ``group`` concatenated along the first dimension (``values`` alone
    when ``group`` is ``None``). Every rank must pass the same shape."""
    if group is None:
        return values
    gathered = [torch.empty_like(values) for _ in range(torch.distributed.get_world_size(group))]
    torch.distributed.all_gather(gathered, values.contiguous(), group=group)
    return torch.cat(gathered)


def _match_trailing_dim(source: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-dimension log-probs / entropies summed (or a missing trailing dim added) to match ``reference``."""
    if source.ndim == reference.ndim:
        return source
    if source.ndim == reference.ndim - 1:
        return source.unsqueeze(-1)
    if source.ndim == reference.ndim + 1:
        return source.sum(-1, keepdim=True)
    raise ValueError(f"cannot align a tensor of shape {tuple(source.shape)} to shape {tuple(reference.shape)}.")


def _as_list(keys) -> list:
    return list(keys) if isinstance(keys, list) else [keys]


# ------------------------------------------------------------------ world-model loss
class DreamerV3ModelLoss(LossModule):
    """DreamerV3's world-model loss: categorical KL, symlog reconstruction, two-hot reward, continuation.

    Drop-in for ``torchrl.objectives.DreamerV3ModelLoss`` (same arguments, defaults, keys and
    outputs: ``(TensorDict(loss_model_*), world-model output)``, each loss of shape ``[1]``).
    The world model reads the batch and writes ``("next", prior_logits / posterior_logits /
    reco_pixels / reward_logits [/ continue_pred])``; the true reward is moved to
    ``("next", true_reward)`` before it runs.

    Terms: ``loss_model_kl`` (``kl_mode="balanced"``: :func:`categorical_kl_balanced`) or
    ``loss_model_dynamic`` + ``loss_model_representation`` (``kl_mode="separate"``:
    :func:`categorical_kl_terms`, the paper's); ``loss_model_reco`` (L2 or L1 in symlog space,
    summed over each observation's event dimensions, averaged over batch and time);
    ``loss_model_reward`` (two-hot cross-entropy on ``num_reward_bins`` symexp bins, or symlog
    MSE); ``loss_model_continue`` when ``lambda_continue > 0`` (binary cross-entropy of the
    continuation logit against ``continue_target_scale * (1 - terminated)``).

    **The paper's settings** are ``DreamerV3ModelLoss.from_paper(world_model)``
    (:attr:`PAPER_KWARGS`: separate KL terms weighted 0.5 / 0.1 with 1 free nat on the KL summed
    over the categoricals, unimix 0.01, two-hot reward on 255 bins, continuation weight 1 with
    the discount 1 - 1/333 in its target). The paper symlogs vector observations only: for image
    keys pass ``reco_symlog=False`` (or one bool per key, e.g. ``[False, True]`` for pixels and a
    vector).

    **Differences from TorchRL:** the continuation target is ``1 - terminated`` only; with
    ``lambda_continue > 0`` a batch without ``("next", terminated)`` or a world model that
    writes no ``continue_pred`` is an error (TorchRL learns from ``done`` when ``terminated``
    is missing, so a time limit counts as a death, and skips the term silently when the
    prediction is missing). ``kl_mode="balanced"`` keeps TorchRL's per-categorical free-bits
    clamp (see :func:`categorical_kl_balanced`).

    Args:
        world_model: the module that fills the predictions above.

    Keyword Args:
        lambda_kl, lambda_reco, lambda_reward, lambda_continue: the terms' weights (1, 1, 1, 0).
        kl_mode: ``"balanced"`` (TorchRL's default) or ``"separate"`` (the paper's).
        lambda_dynamic, lambda_representation: the separate terms' weights (1.0, 0.1; paper 0.5, 0.1).
        unimix: uniform mixture of the KL's distributions in separate mode (0.0; paper 0.01).
        continue_target_scale: multiplies the continuation target, in (0, 1] (1.0).
        kl_alpha: balancing factor of ``"balanced"`` (0.8).
        free_bits: the free-nats floor (1.0).
        reco_loss: ``"l2"`` or ``"l1"``.
        reco_symlog: symlog the targets and predictions (one bool, or one per observation key).
        reward_two_hot: two-hot reward logits under ``reward_logits`` (else a scalar under ``reward``).
        num_reward_bins: the reward support's size (255).
        global_average: average the reconstruction over event dimensions too.
        detach_output: return the world-model output detached (set False for a replay-value loss).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> class Model(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.prior, self.post = torch.nn.Linear(3, 8), torch.nn.Linear(3, 8)
        ...         self.reco, self.reward = torch.nn.Linear(3, 3), torch.nn.Linear(3, 255)
        ...     def forward(self, obs):
        ...         B, T = obs.shape[:2]
        ...         return (self.prior(obs).view(B, T, 2, 4), self.post(obs).view(B, T, 2, 4),
        ...                 self.reco(obs), self.reward(obs))
        >>> world_model = TensorDictModule(Model(), in_keys=[("next", "observation")], out_keys=[
        ...     ("next", "prior_logits"), ("next", "posterior_logits"), ("next", "reco_observation"),
        ...     ("next", "reward_logits")])
        >>> loss = DreamerV3ModelLoss.from_paper(world_model, lambda_continue=0.0)
        >>> loss.set_keys(pixels="observation", reco_pixels="reco_observation")
        >>> td = TensorDict({"next": {"observation": torch.randn(4, 5, 3), "reward": torch.randn(4, 5, 1)}}, [4, 5])
        >>> losses, _ = loss(td)
        >>> sorted(losses.keys())
        ['loss_model_dynamic', 'loss_model_reco', 'loss_model_representation', 'loss_model_reward']
        >>> sum(losses.values()).backward()
    """

    PAPER_KWARGS = MappingProxyType({
        "kl_mode": "separate", "lambda_dynamic": 0.5, "lambda_representation": 0.1, "unimix": 0.01,
        "free_bits": 1.0, "lambda_kl": 1.0, "lambda_reco": 1.0, "lambda_reward": 1.0, "lambda_continue": 1.0,
        "continue_target_scale": PAPER_DISCOUNT, "reward_two_hot": True, "num_reward_bins": DEFAULT_NUM_BINS,
    })

    @dataclass
    class _AcceptedKeys:
        """Keys read (under ``"next"``) and written.

        Attributes:
            reward: the decoded predicted reward (scalar mode), and the true reward on input.
            reward_logits: the reward head's two-hot logits.
            true_reward: where the true reward is moved before the world model runs.
            prior_logits, posterior_logits: ``[..., num_categoricals, num_classes]`` logits.
            pixels: the observation key(s) to reconstruct (a list for several heads).
            reco_pixels: the prediction key(s), paired in order with ``pixels``.
            continue_pred: the continuation logit.
            done: read by nothing here (kept for TorchRL's ``set_keys``).
            terminated: the terminal flag, the continuation target's source.
        """

        reward: NestedKey = "reward"
        reward_logits: NestedKey = "reward_logits"
        true_reward: NestedKey = "true_reward"
        prior_logits: NestedKey = "prior_logits"
        posterior_logits: NestedKey = "posterior_logits"
        pixels: NestedKey | list[NestedKey] = "pixels"
        reco_pixels: NestedKey | list[NestedKey] = "reco_pixels"
        continue_pred: NestedKey = "continue_pred"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys

    def __init__(
        self,
        world_model: TensorDictModuleBase | nn.Module,
        *,
        lambda_kl: float = 1.0,
        lambda_reco: float = 1.0,
        lambda_reward: float = 1.0,
        lambda_continue: float = 0.0,
        kl_mode: Literal["balanced", "separate"] = "balanced",
        lambda_dynamic: float = 1.0,
        lambda_representation: float = 0.1,
        unimix: float = 0.0,
        continue_target_scale: float = 1.0,
        kl_alpha: float = 0.8,
        free_bits: float = 1.0,
        reco_loss: Literal["l1", "l2"] = "l2",
        reco_symlog: bool | list[bool] = True,
        reward_two_hot: bool = True,
        num_reward_bins: int = DEFAULT_NUM_BINS,
        global_average: bool = False,
        detach_output: bool = True,
    ):
        super().__init__()
        if kl_mode not in ("balanced", "separate"):
            raise ValueError(f"kl_mode must be 'balanced' or 'separate', got {kl_mode!r}.")
        if not 0 < continue_target_scale <= 1:
            raise ValueError(f"continue_target_scale must be in (0, 1], got {continue_target_scale}.")
        if not 0 <= unimix < 1:
            raise ValueError(f"unimix must be in [0, 1), got {unimix}.")
        if reco_loss not in ("l1", "l2"):
            raise ValueError(f"reco_loss must be 'l1' or 'l2', got {reco_loss!r}.")
        if free_bits < 0:
            raise ValueError(f"free_bits must be >= 0, got {free_bits}.")
        self.world_model = world_model
        self.lambda_kl, self.lambda_reco, self.lambda_reward = lambda_kl, lambda_reco, lambda_reward
        self.lambda_continue = lambda_continue
        self.kl_mode = kl_mode
        self.lambda_dynamic, self.lambda_representation = lambda_dynamic, lambda_representation
        self.unimix = unimix
        self.continue_target_scale = continue_target_scale
        self.kl_alpha = kl_alpha
        self.free_bits = free_bits
        self.reco_loss = reco_loss
        self.reco_symlog = reco_symlog
        self.reward_two_hot = reward_two_hot
        self.num_reward_bins = num_reward_bins
        self.global_average = global_average
        self.detach_output = detach_output
        self.register_buffer("reward_bins", symexp_bins(num_reward_bins))

    @classmethod
    def from_paper(cls, world_model, **overrides) -> DreamerV3ModelLoss:
        """The loss with the paper's settings (:attr:`PAPER_KWARGS`), any of them overridden by ``overrides``."""
        return cls(world_model, **{**cls.PAPER_KWARGS, **overrides})

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass

    def _kl_terms(self, td: TensorDictBase) -> dict[str, torch.Tensor]:
        k = self.tensor_keys
        prior = td.get(("next", k.prior_logits))
        post = td.get(("next", k.posterior_logits))
        if self.kl_mode == "separate":
            dyn, rep = categorical_kl_terms(post, prior, free_nats=self.free_bits, unimix=self.unimix)
            return {"loss_model_dynamic": self.lambda_kl * self.lambda_dynamic * dyn.unsqueeze(-1),
                    "loss_model_representation": self.lambda_kl * self.lambda_representation * rep.unsqueeze(-1)}
        kl = categorical_kl_balanced(post, prior, alpha=self.kl_alpha, free_bits=self.free_bits)
        return {"loss_model_kl": self.lambda_kl * kl.unsqueeze(-1)}

    def _reco_loss(self, td: TensorDictBase) -> torch.Tensor:
        k = self.tensor_keys
        targets, predictions = _as_list(k.pixels), _as_list(k.reco_pixels)
        transforms = self.reco_symlog
        if isinstance(transforms, bool):
            transforms = [transforms] * len(targets)
        if not targets or not len(targets) == len(predictions) == len(transforms):
            raise ValueError(
                "DreamerV3ModelLoss: pixels, reco_pixels and reco_symlog must describe the same non-zero number "
                f"of reconstruction heads, got {len(targets)}, {len(predictions)} and {len(transforms)}."
            )
        batch = td.batch_size
        total = 0.0
        for target_key, prediction_key, transform in zip(targets, predictions, transforms):
            target = td.get(("next", target_key))
            prediction = td.get(("next", prediction_key))
            if transform:
                target, prediction = symlog(target), symlog(prediction)
            else:
                if not target.is_floating_point():  # uint8 frames
                    target = target.float() / 255.0
                prediction = prediction.float()
            error = target - prediction
            error = error.square() if self.reco_loss == "l2" else error.abs()
            if not self.global_average:
                error = error.reshape(*batch, -1).sum(-1)  # sum over the event dimensions only
            total = total + error.mean().unsqueeze(-1)
        return total

    def _reward_loss(self, td: TensorDictBase) -> torch.Tensor:
        k = self.tensor_keys
        true_reward = td.get(("next", k.true_reward))
        if not self.reward_two_hot:
            prediction = td.get(("next", k.reward))
            return (symlog(true_reward) - symlog(prediction)).square().mean().unsqueeze(-1)
        logits = td.get(unravel_key(("next", k.reward_logits)), None)
        if logits is None:
            legacy = unravel_key(("next", k.reward))
            logits = td.get(legacy, None)
            if logits is None:
                raise KeyError(f"DreamerV3ModelLoss: the world model wrote no reward logits at "
                               f"{unravel_key(('next', k.reward_logits))!r}.")
            # TorchRL's message (its tests match it): logits under the decoded reward's key
            warnings.warn(
                f"Storing DreamerV3 categorical reward logits under the decoded reward key {legacy!r} is "
                "deprecated in TorchRL and will be removed in v0.16. Write logits to the configured "
                "reward_logits key instead.", DeprecationWarning, stacklevel=3)
        if logits.shape[-1] != self.num_reward_bins:
            raise ValueError(
                f"DreamerV3ModelLoss: reward_two_hot=True expects reward logits over num_reward_bins="
                f"{self.num_reward_bins} bins, got a trailing dimension of {logits.shape[-1]}."
            )
        return two_hot_cross_entropy(logits, true_reward, self.reward_bins).mean().unsqueeze(-1)

    def _continue_loss(self, td: TensorDictBase) -> torch.Tensor:
        k = self.tensor_keys
        pred = td.get(("next", k.continue_pred), None)
        if pred is None:
            raise KeyError(
                f"DreamerV3ModelLoss: lambda_continue={self.lambda_continue} but the world model wrote no "
                f"continuation logit at {unravel_key(('next', k.continue_pred))!r}."
            )
        terminated = td.get(("next", k.terminated), None)
        if terminated is None:
            raise KeyError(
                f"DreamerV3ModelLoss: lambda_continue > 0 needs {unravel_key(('next', k.terminated))!r} in the "
                "batch: the continuation is learnt from terminations only ('done' would count a time limit as "
                "a death)."
            )
        target = (~terminated.bool()).to(pred.dtype) * self.continue_target_scale
        pred = pred.squeeze(-1) if pred.shape[-1:] == (1,) and pred.ndim > len(td.batch_size) else pred
        target = target.reshape(pred.shape)
        return nn.functional.binary_cross_entropy_with_logits(pred, target).unsqueeze(-1)

    def forward(self, tensordict: TensorDictBase) -> tuple[TensorDict, TensorDictBase]:
        """Runs the world model on ``tensordict`` and returns ``(losses, world-model output)``."""
        k = self.tensor_keys
        # a new container (no tensor copied): the input batch keeps its true reward where it was
        td = tensordict.select(*tensordict.keys(True, True))
        td.rename_key_(("next", k.reward), ("next", k.true_reward))
        td = self.world_model(td)
        out = TensorDict(loss_model_reco=self.lambda_reco * self._reco_loss(td),
                         loss_model_reward=self.lambda_reward * self._reward_loss(td))
        out.update(self._kl_terms(td))
        if self.lambda_continue > 0:
            out.set("loss_model_continue", self.lambda_continue * self._continue_loss(td))
        return out, td.data if self.detach_output else td


# ------------------------------------------------------------------ tensor programs
# A TensorDictModule tree run on a dict of tensors: the imagination loop needs no tensordict.
def _program(module) -> list | None:
    """The plain ``TensorDictModule`` / probabilistic leaves of ``module`` in order, or None if it has others."""
    if module is None:
        return None
    leaves = _leaves(module)
    for leaf in leaves:
        if isinstance(leaf, ProbabilisticTensorDictModule):
            if getattr(leaf, "num_samples", None) is not None:
                return None
            continue
        if type(leaf) not in (TensorDictModule,) and not (
            isinstance(leaf, TensorDictModule) and type(leaf).forward is TensorDictModule.forward
        ):
            return None
        if getattr(leaf, "_kwargs", None) or not isinstance(leaf.in_keys, list):
            return None
    return leaves


def _run(program: list, env: dict, sample: bool = True) -> dict:
    """Runs ``program`` on ``env`` (key -> tensor), writing its outputs into ``env``."""
    for leaf in program:
        if isinstance(leaf, ProbabilisticTensorDictModule):
            if not sample:
                continue
            dist = leaf.get_dist(env)
            action = dist.rsample() if dist.has_rsample else dist.sample()
            env[leaf.dist_sample_keys[0]] = action
            continue
        outs = leaf.module(*[env[key] for key in leaf.in_keys])
        if isinstance(outs, torch.Tensor):
            outs = (outs,)
        env.update(zip(leaf.out_keys, outs))
    return env


def _pruned(program: list | None, wanted: NestedKey) -> list | None:
    """The leaves of ``program`` that ``wanted`` depends on (e.g. a critic's logits without their decoding)."""
    if program is None:
        return None
    needed, kept = {wanted}, []
    for leaf in reversed(program):
        if needed & set(leaf.out_keys):
            kept.append(leaf)
            needed |= set(leaf.in_keys)
    return kept[::-1] if kept else None


def _inputs(program: list) -> list:
    """The keys ``program`` reads that none of its own modules writes."""
    written, inputs = set(), []
    for leaf in program:
        inputs += [key for key in leaf.in_keys if key not in written and key not in inputs]
        written |= set(leaf.out_keys)
    return inputs


def _call(module, program, env: dict, batch: torch.Size) -> dict:
    """``module`` on ``env``: as a tensor program when it is one, else through a tensordict."""
    if program is not None:
        return _run(program, dict(env))
    td = module(TensorDict(dict(env), batch))
    return {key: td.get(key) for key in td.keys(True, True)}


def _lambda_return(reward, value, continuation, gamma: float, lmbda: float) -> torch.Tensor:
    """``R_t = r_t + gamma c_t ((1 - lmbda) v_t + lmbda R_{t+1})``, ``R_H = v_{H-1}``; time on dim -2.

    ``reward``, ``value``, ``continuation`` ``[..., H, 1]`` hold r_t, v(s_{t+1}), c(s_{t+1}).
    """
    next_return = value[..., -1, :]
    out = []
    for t in range(reward.shape[-2] - 1, -1, -1):
        next_return = reward[..., t, :] + gamma * continuation[..., t, :] * (
            (1 - lmbda) * value[..., t, :] + lmbda * next_return)
        out.append(next_return)
    return torch.stack(out[::-1], dim=-2)


# ------------------------------------------------------------------ actor loss
class DreamerV3ActorLoss(LossModule):
    """DreamerV3's actor loss on trajectories imagined from every start latent.

    Drop-in for ``torchrl.objectives.DreamerV3ActorLoss`` (same arguments, defaults, keys,
    ``make_value_estimator``, outputs ``(TensorDict(loss_actor, actor_entropy, return_low,
    return_high, return_scale, continuation_mean), fake_data)`` and the ``retnorm`` state
    that checkpoints). From the start latents ``state``/``belief`` (``[*B]``, detached) the
    actor and the transition model inside ``model_based_env.world_model`` (TorchRL's
    ``DreamerEnv``: ``WorldModelWrapper(transition, reward)``) imagine H steps; the reward,
    value and continuation heads then run once on all imagined states. With r_t the reward of
    s_{t+1}, v_t = v(s_{t+1}) and c_t = c(s_{t+1}) (1 without a continuation model):

        R_t = r_t + gamma c_t ((1 - lambda) v_t + lambda R_{t+1}),   R_H = v(s_H),

    the weights are ``w = cumprod([c(s_0), gamma c(s_1), ..., gamma c(s_{H-1})])`` (ones when
    ``discount_loss=False``), the scale ``S = max(min_scale, EMA(P95) - EMA(P5))`` of all
    ``B x H`` returns (updated in training mode only), and

        loss_actor = -mean(w R / S)                          (reparameterised, default)
        loss_actor = -mean(w log pi(a|s) sg(R - v(s)) / S)   (``use_reinforce=True``)

    minus ``entropy_bonus * mean(w H[pi])``. With ``process_group`` set (a ``torch.distributed``
    group; ``None`` by default) the percentiles are taken over every rank's returns gathered
    together, so that W ranks of B chunks, their gradients averaged, make the same update as one
    process on all W x B chunks. ``fake_data`` (``[*B, H]``, detached) holds
    ``state``, ``belief``, ``action`` (and the actor's ``loc``/``scale``/log-prob when it
    writes them), ``("next", state / belief / reward / state_value / done / terminated /
    continuation)``, ``continuation``, ``lambda_target`` and ``discount_weight``:
    :class:`DreamerV3ValueLoss` reads it.

    **The paper's settings** are ``DreamerV3ActorLoss.from_paper(actor, value, env,
    continuation_model=...)``: horizon 15, entropy 3e-4, return normalisation by the
    5th-95th percentile range with EMA rate 0.01 and floor 1, lambda 0.95, gamma 1 with a
    continuation model (the discount is in its target) and 1 - 1/333 without one.

    **Differences from TorchRL:** imagination runs on tensors (the transition, actor and heads
    called on their tensors, no ``env.rollout`` and no tensordict per step; modules that are
    not plain ``TensorDictModule`` trees are called through a tensordict); the actor reads
    stop-gradient latents (the official code's choice: its gradient reaches earlier steps only
    through the dynamics, not through its own inputs); the heads see the whole trajectory at once;
    and without a continuation model ``lambda_target`` is the lambda-return over the imagined
    time axis (TorchRL's estimator reads the feature axis as time there). Gradients: the
    world model, value and continuation parameters are held out (``requires_grad`` off during
    the forward pass, each flag restored after), so ``loss_actor`` reaches only the actor.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import ProbabilisticTensorDictModule as Prob, ProbabilisticTensorDictSequential
        >>> from tensordict.nn import NormalParamExtractor, TensorDictModule as Mod
        >>> from torchrl.envs.model_based.dreamer import DreamerEnv
        >>> from torchrl.modules import MLP, TanhNormal, WorldModelWrapper
        >>> class Prior(torch.nn.Module):  # any (state, belief, action) -> (logits, state, belief)
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.cell = torch.nn.GRUCell(8 + 1, 6)
        ...         self.head = torch.nn.Linear(6, 8)
        ...     def forward(self, state, belief, action):
        ...         belief = self.cell(torch.cat([state, action], -1), belief)
        ...         logits = self.head(belief).view(-1, 2, 4)
        ...         return logits, torch.softmax(logits, -1).flatten(-2), belief
        >>> transition = Mod(Prior(), in_keys=["state", "belief", "action"], out_keys=["_", "state", "belief"])
        >>> reward = Mod(MLP(in_features=14, out_features=1, num_cells=8, depth=1),
        ...              in_keys=["state", "belief"], out_keys=["reward"])
        >>> env = DreamerEnv(WorldModelWrapper(transition, reward), prior_shape=(8,), belief_shape=(6,))
        >>> actor = ProbabilisticTensorDictSequential(
        ...     Mod(MLP(in_features=14, out_features=2, num_cells=8, depth=1), ["state", "belief"], ["params"]),
        ...     Mod(NormalParamExtractor(), ["params"], ["loc", "scale"]),
        ...     Prob(in_keys=["loc", "scale"], out_keys=["action"], distribution_class=TanhNormal))
        >>> value = Mod(MLP(in_features=14, out_features=1, num_cells=8, depth=1),
        ...             in_keys=["state", "belief"], out_keys=["state_value"])
        >>> loss = DreamerV3ActorLoss.from_paper(actor, value, env, imagination_horizon=4)
        >>> td = TensorDict({"state": torch.randn(5, 8), "belief": torch.randn(5, 6)}, [5])
        >>> losses, fake_data = loss(td)
        >>> losses["loss_actor"].backward()
        >>> fake_data.batch_size, fake_data["lambda_target"].shape
        (torch.Size([5, 4]), torch.Size([5, 4, 1]))
    """

    PAPER_KWARGS = MappingProxyType({
        "imagination_horizon": 15, "discount_loss": True, "entropy_bonus": 3e-4, "return_normalization": True,
        "return_normalization_rate": 0.01, "return_normalization_quantiles": (0.05, 0.95),
        "return_normalization_min_scale": 1.0,
    })

    @dataclass
    class _AcceptedKeys:
        """Keys of the start latents and of ``fake_data``.

        Attributes:
            state: the stochastic latent (``"state"``).
            belief: the deterministic latent (``"belief"``).
            reward: the imagined reward, under ``"next"``.
            value: the value head's output (``"state_value"``).
            action: the actor's sample (``"action"``).
            action_log_prob: the actor's log-probability key (``"action_log_prob"``).
            done, terminated: all-False flags written under ``"next"`` (TorchRL's layout).
            continuation: the continuation model's probability (``"continuation"``).
            discount_weight: the cumulative weights w (``"discount_weight"``).
        """

        state: NestedKey = "state"
        belief: NestedKey = "belief"
        reward: NestedKey = "reward"
        value: NestedKey = "state_value"
        action: NestedKey = "action"
        action_log_prob: NestedKey = "action_log_prob"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"
        continuation: NestedKey = "continuation"
        discount_weight: NestedKey = "discount_weight"

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
        continuation_model: TensorDictModuleBase | None = None,
        imagination_horizon: int = 15,
        discount_loss: bool = True,
        entropy_bonus: float = 3e-4,
        use_reinforce: bool = False,
        return_normalization: bool = True,
        return_normalization_rate: float = 0.01,
        return_normalization_quantiles: tuple[float, float] = (0.05, 0.95),
        return_normalization_min_scale: float = 1.0,
        gamma: float | None = None,
        lmbda: float | None = None,
    ):
        super().__init__()
        if gamma is not None or lmbda is not None:
            raise TypeError(_GAMMA_LMBDA_DEPREC_ERROR)
        if int(imagination_horizon) != imagination_horizon or imagination_horizon < 1:
            raise ValueError(f"imagination_horizon must be an integer >= 1, got {imagination_horizon}.")
        if entropy_bonus < 0:
            raise ValueError(f"entropy_bonus must be >= 0, got {entropy_bonus}.")
        world_model = getattr(model_based_env, "world_model", None)
        if not isinstance(world_model, nn.Module):
            raise TypeError(
                "model_based_env must be an imagination environment with a world_model module (TorchRL's "
                f"DreamerEnv over WorldModelWrapper(transition, reward)); got {type(model_based_env).__name__}."
            )
        self.actor_model = actor_model
        self.__dict__["value_model"] = value_model  # not a submodule: the value loss owns its parameters
        self.model_based_env = model_based_env
        self.__dict__["continuation_model"] = continuation_model
        self.imagination_horizon = int(imagination_horizon)
        self.discount_loss = discount_loss
        self.entropy_bonus = entropy_bonus
        self.use_reinforce = use_reinforce
        self.return_normalization = return_normalization
        self.retnorm = PercentileValueNorm(quantiles=tuple(return_normalization_quantiles),
                                           rate=return_normalization_rate,
                                           min_scale=return_normalization_min_scale)
        self.register_load_state_dict_pre_hook(self._migrate_legacy_retnorm_state)
        self.process_group = None
        self.gamma, self.lmbda = 0.99, 0.95
        self.value_type = self.default_value_estimator
        self._prepare()

    @classmethod
    def from_paper(cls, actor_model, value_model, model_based_env, *, continuation_model=None,
                   **overrides) -> DreamerV3ActorLoss:
        """The loss with the paper's settings (:attr:`PAPER_KWARGS`; see the class doc), overridable."""
        loss = cls(actor_model, value_model, model_based_env, continuation_model=continuation_model,
                   **{**cls.PAPER_KWARGS, **overrides})
        loss.make_value_estimator(ValueEstimators.TDLambda,
                                  gamma=1.0 if continuation_model is not None else PAPER_DISCOUNT, lmbda=0.95)
        return loss

    def _migrate_legacy_retnorm_state(self, module, state_dict, prefix, *args) -> None:
        # TorchRL checkpoints written before its retnorm submodule stored flat return_low/high buffers
        for legacy, current in (("return_low", "retnorm.low"), ("return_high", "retnorm.high")):
            if prefix + legacy in state_dict and prefix + current not in state_dict:
                state_dict[prefix + current] = state_dict.pop(prefix + legacy).reshape(self.retnorm.low.shape)

    def _prepare(self) -> None:
        """Splits the world model into transition and reward and compiles each module into a tensor program."""
        world_model = self.model_based_env.world_model
        parts = list(world_model.module) if isinstance(world_model, TensorDictSequential) else []
        if len(parts) == 2:
            transition, reward = parts
        else:  # one module writing both the next latents and the reward: run it per step
            transition, reward = world_model, None
        actor_leaves = _program(self.actor_model)
        prob = [m for m in (actor_leaves or []) if isinstance(m, ProbabilisticTensorDictModule)]
        if actor_leaves is not None and (len(prob) != 1 or actor_leaves[-1] is not prob[0]):
            actor_leaves = None  # not "networks, then one distribution": run it through tensordicts
        self.__dict__["_parts"] = {
            "transition": transition, "transition_program": _program(transition),
            "reward": reward, "reward_program": _program(reward),
            "actor_program": actor_leaves,
            "value_program": _program(self.value_model),
            "continuation_program": _program(self.continuation_model),
        }

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass

    def make_value_estimator(self, value_type: ValueEstimators | None = None, **hyperparams) -> None:
        """Sets gamma and lambda: ``TDLambda`` (default; ``gamma=0.99, lmbda=0.95``), ``TD0`` (lambda 0), ``TD1`` (lambda 1)."""
        value_type = self.default_value_estimator if value_type is None else value_type
        if value_type not in self.SUPPORTED_VALUE_ESTIMATORS:
            raise NotImplementedError(
                f"DreamerV3ActorLoss: value_type must be one of {self.SUPPORTED_VALUE_ESTIMATORS}, got {value_type}.")
        unknown = set(hyperparams) - {"gamma", "lmbda", "vectorized", "differentiable", "device"}
        if unknown:
            raise TypeError(f"DreamerV3ActorLoss.make_value_estimator: unexpected arguments {sorted(unknown)}.")
        gamma = float(hyperparams.get("gamma", 0.99))
        lmbda = {ValueEstimators.TD0: 0.0, ValueEstimators.TD1: 1.0}.get(value_type, hyperparams.get("lmbda", 0.95))
        if not 0.0 <= gamma <= 1.0 or not 0.0 <= float(lmbda) <= 1.0:
            raise ValueError(f"DreamerV3ActorLoss: gamma and lmbda must be in [0, 1], got {gamma}, {lmbda}.")
        self.gamma, self.lmbda = gamma, float(lmbda)
        self.value_type = value_type

    @property
    def value_estimator(self):
        """The return settings, as TorchRL's estimator exposes them (``.gamma``, ``.lmbda`` tensors)."""
        return _ReturnSettings(torch.tensor(self.gamma), torch.tensor(self.lmbda))

    # -------------------------------------------------------------- return statistics
    def _return_scale(self, returns: torch.Tensor) -> torch.Tensor:
        if not self.return_normalization:
            return torch.ones((), dtype=returns.dtype, device=returns.device)
        if self.training:
            self.retnorm.update(_gather_across_ranks(returns.detach(), self.process_group))
        return self.retnorm.scale().squeeze(-1)

    @property
    def return_normalization_rate(self) -> float:
        return self.retnorm.rate

    @property
    def return_normalization_quantiles(self) -> tuple[float, float]:
        return self.retnorm.quantiles

    @property
    def return_normalization_min_scale(self) -> float:
        return self.retnorm.min_scale

    @property
    def return_low(self) -> torch.Tensor:
        """EMA of the low return quantile (a 0-dim view of ``retnorm.low``)."""
        return self.retnorm.low.squeeze(-1)

    @property
    def return_high(self) -> torch.Tensor:
        """EMA of the high return quantile (a 0-dim view of ``retnorm.high``)."""
        return self.retnorm.high.squeeze(-1)

    def lambda_target(self, reward: torch.Tensor, value: torch.Tensor,
                      continuation: torch.Tensor | None = None) -> torch.Tensor:
        """Lambda-returns ``[..., H, 1]`` from r_t, v(s_{t+1}), c(s_{t+1}) (each ``[..., H, 1]``; see the class doc).

        Examples:
            >>> import torch
            >>> # gamma 1, lambda 0.5, continuation 0.5: R_2 = 3 + 0.5 * 30 = 18,
            >>> # R_1 = 2 + 0.5 * (0.5 * 20 + 0.5 * 18) = 11.5, R_0 = 1 + 0.5 * (5 + 5.75) = 6.375
            >>> r, v = torch.tensor([[[1.0], [2.0], [3.0]]]), torch.tensor([[[10.0], [20.0], [30.0]]])
            >>> _lambda_return(r, v, torch.full_like(r, 0.5), gamma=1.0, lmbda=0.5).flatten().tolist()
            [6.375, 11.5, 18.0]
        """
        if reward.shape != value.shape or reward.ndim < 2:
            raise ValueError(f"lambda_target: reward and value must share a shape [..., H, 1], got "
                             f"{tuple(reward.shape)} and {tuple(value.shape)}.")
        if continuation is None:
            continuation = torch.ones_like(reward)
        return _lambda_return(reward, value, continuation, self.gamma, self.lmbda)

    # -------------------------------------------------------------- imagination
    def _start(self, tensordict: TensorDictBase) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.tensor_keys
        for s_key, b_key in ((k.state, k.belief), (("next", k.state), ("next", k.belief))):
            state, belief = tensordict.get(s_key, None), tensordict.get(b_key, None)
            if state is not None and belief is not None:
                return state.detach(), belief.detach()
        raise KeyError(f"DreamerV3ActorLoss: the batch has no start latents: expected {k.state!r} and {k.belief!r} "
                       f"(or under 'next'), got keys {sorted(map(str, tensordict.keys(True, True)))}.")

    def _act(self, state: torch.Tensor, belief: torch.Tensor) -> dict:
        """The actor on stop-gradient latents: its outputs (the action, and its distribution's parameters)."""
        k, parts = self.tensor_keys, self._parts
        env = {k.state: state.detach(), k.belief: belief.detach()}
        return _call(self.actor_model, parts["actor_program"], env, state.shape[:-1])

    def _heads(self, which: str, module, state: torch.Tensor, belief: torch.Tensor, key: NestedKey):
        if module is None:
            return None
        env = {self.tensor_keys.state: state, self.tensor_keys.belief: belief}
        return _call(module, self._parts[which + "_program"], env, state.shape[:-1])[key]

    def imagine(self, state: torch.Tensor, belief: torch.Tensor) -> dict[str, torch.Tensor]:
        """H imagined steps from ``[N, F]`` start latents, each output ``[N, H, F]``: ``state``, ``belief``
        (s_1..s_H), ``action`` (a_0..a_{H-1}), ``reward`` when the world model is one module, and
        ``actor_params`` (the actor's distribution inputs by key) when the actor is a tensor program."""
        k, parts = self.tensor_keys, self._parts
        batch = state.shape[:-1]
        program = parts["actor_program"]
        param_keys = list(program[-1].in_keys) if program is not None else []
        steps: dict = {"state": [], "belief": [], "action": [], "reward": []}
        params: dict = {key: [] for key in param_keys}
        # REINFORCE differentiates only the actor's log-probabilities: no graph through the model then
        model_grad = torch.is_grad_enabled() and not self.use_reinforce
        with set_exploration_type(ExplorationType.RANDOM):
            for _ in range(self.imagination_horizon):
                acted = self._act(state, belief)
                action = acted[k.action]
                with torch.set_grad_enabled(model_grad):
                    out = _call(parts["transition"], parts["transition_program"],
                                {k.state: state, k.belief: belief, k.action: action}, batch)
                state, belief = out[k.state], out[k.belief]
                steps["state"].append(state), steps["belief"].append(belief), steps["action"].append(action)
                for key in param_keys:
                    params[key].append(acted[key])
                if parts["reward"] is None:
                    steps["reward"].append(out[k.reward])
        traj = {name: torch.stack(values, 1) for name, values in steps.items() if values}
        if params:
            traj["actor_params"] = {key: torch.stack(values, 1) for key, values in params.items()}
        return traj

    def _policy_dist(self, traj: dict, root_state: torch.Tensor, root_belief: torch.Tensor):
        """The actor's distribution over the ``[N, H]`` rows, from the parameters imagination computed
        (on the same stop-gradient latents) or, for other actors, from a new call; and those parameters."""
        program = self._parts["actor_program"]
        if program is not None:
            params = traj["actor_params"]
            return program[-1].get_dist(params), params
        k = self.tensor_keys
        td = TensorDict({k.state: root_state.detach(), k.belief: root_belief.detach()}, root_state.shape[:-1])
        return self.actor_model.get_dist(td), {}

    def forward(self, tensordict: TensorDictBase) -> tuple[TensorDict, TensorDict]:
        """Imagines from every latent of ``tensordict``; returns ``(losses, fake_data)`` (see the class doc)."""
        k, parts, H = self.tensor_keys, self._parts, self.imagination_horizon
        state0, belief0 = self._start(tensordict)
        batch = state0.shape[:-1]
        s0, b0 = state0.reshape(-1, state0.shape[-1]), belief0.reshape(-1, belief0.shape[-1])
        N = s0.shape[0]
        continuation_model = self.continuation_model
        # REINFORCE differentiates only the actor's log-probabilities: the heads (and, inside imagine, the
        # transition) then run without a graph
        heads_grad = torch.no_grad() if self.use_reinforce else contextlib.nullcontext()
        with _held_out(self.model_based_env, self.value_model, continuation_model):
            traj = self.imagine(s0, b0)
            state, belief = traj["state"], traj["belief"]  # s_1..s_H: [N, H, F]
            all_state = torch.cat([s0.unsqueeze(1), state], 1)  # s_0..s_H: [N, H + 1, F]
            all_belief = torch.cat([b0.unsqueeze(1), belief], 1)
            with heads_grad:
                reward = traj.get("reward")
                if reward is None:
                    reward = self._heads("reward", parts["reward"], state, belief, k.reward)
                # one critic pass over s_0..s_H: bootstrap values v(s_1..s_H) and baseline v(s_0..s_{H-1})
                values = self._heads("value", self.value_model, all_state, all_belief, k.value)
                next_value, baseline = values[:, 1:], values[:, :-1].detach()
                if continuation_model is not None:
                    cont = self._heads("continuation", continuation_model, all_state, all_belief, k.continuation)
                    root_cont, continuation = cont[:, :-1], cont[:, 1:]  # c(s_0..s_{H-1}), c(s_1..s_H)
                else:
                    root_cont = continuation = None
        lambda_target = self.lambda_target(reward, next_value, continuation)

        if self.discount_loss:
            c = root_cont if root_cont is not None else torch.ones_like(lambda_target)
            discount = torch.cat([c[:, :1], self.gamma * c[:, 1:]], 1).cumprod(1).detach()
        else:
            discount = torch.ones_like(lambda_target)

        root_state, root_belief = all_state[:, :-1].detach(), all_belief[:, :-1].detach()
        action = traj["action"]
        need_dist = self.use_reinforce or self.entropy_bonus > 0 or self._writes_log_prob()
        dist, actor_env = self._policy_dist(traj, root_state, root_belief) if need_dist else (None, {})
        return_scale = self._return_scale(lambda_target)
        if self.use_reinforce:
            log_prob = _match_trailing_dim(dist.log_prob(action.detach()), lambda_target)
            advantage = ((lambda_target - baseline) / return_scale).detach()
            loss = -(discount * log_prob * advantage).mean()
        else:
            loss = -(discount * lambda_target / return_scale).mean()
        if self.entropy_bonus > 0:
            if has_analytic_entropy(dist):
                entropy = dist.entropy()
            else:
                entropy = -rsample_and_log_prob(dist)[1]
            entropy = (discount * _match_trailing_dim(entropy, discount)).mean()
            loss = loss - self.entropy_bonus * entropy
        else:
            entropy = loss.new_zeros(())

        fake = {k.state: root_state, k.belief: root_belief, k.action: action.detach(),
                ("next", k.state): state.detach(), ("next", k.belief): belief.detach(),
                ("next", k.reward): reward.detach(), ("next", k.value): next_value.detach(),
                ("next", k.done): torch.zeros(N, H, 1, dtype=torch.bool, device=s0.device),
                ("next", k.terminated): torch.zeros(N, H, 1, dtype=torch.bool, device=s0.device),
                "lambda_target": lambda_target.detach(), k.discount_weight: discount}
        for key, value in actor_env.items():  # the actor's loc/scale (or logits), as TorchRL's rollout keeps them
            fake.setdefault(key, value.detach())
        if self._writes_log_prob():
            fake[self._log_prob_key()] = dist.log_prob(action.detach()).detach()
        if continuation is not None:
            fake[k.continuation] = root_cont.detach()
            fake[("next", k.continuation)] = continuation.detach()
        fake_data = TensorDict(fake, [N, H]).reshape(*batch, H)
        losses = TensorDict({
            "loss_actor": loss,
            "actor_entropy": entropy.detach(),
            "return_low": self.return_low.detach().clone(),
            "return_high": self.return_high.detach().clone(),
            "return_scale": return_scale.detach().clone(),
            "continuation_mean": (continuation.mean().detach() if continuation is not None
                                  else torch.ones((), device=loss.device)),
        }, [])
        return losses, fake_data

    def _prob_module(self):
        leaves = _leaves(self.actor_model)
        prob = [m for m in leaves if isinstance(m, ProbabilisticTensorDictModule)]
        return prob[-1] if prob else None

    def _writes_log_prob(self) -> bool:
        prob = self._prob_module()
        return bool(prob is not None and prob.return_log_prob)

    def _log_prob_key(self) -> NestedKey:
        return self._prob_module().log_prob_key


@dataclass
class _ReturnSettings:
    """gamma and lambda as TorchRL's value estimators expose them (``loss.value_estimator.gamma``)."""

    gamma: torch.Tensor
    lmbda: torch.Tensor


# ------------------------------------------------------------------ value loss
@torch.no_grad()
def _replay_value_target(reward, done, terminated, bootstrap, horizon: float, lmbda: float) -> torch.Tensor:
    """Lambda-returns along a replay sequence ``[..., T]``: element k uses the reward, flags and bootstrap of k + 1."""
    reward, done, terminated, bootstrap = (x.squeeze(-1).unsqueeze(-1) if x.shape[-1:] == (1,) else x.unsqueeze(-1)
                                           for x in (reward, done, terminated, bootstrap))
    estimate = vec_td_lambda_return_estimate if not torch.compiler.is_compiling() else td_lambda_return_estimate
    return estimate(gamma=1 - 1 / horizon, lmbda=lmbda, next_state_value=bootstrap[..., 1:, :],
                    reward=reward[..., 1:, :], done=done[..., 1:, :].bool(),
                    terminated=terminated[..., 1:, :].bool()).squeeze(-1)


class DreamerV3ValueLoss(LossModule):
    """DreamerV3's critic loss on the imagined returns, with a slow critic and a replay-value loss.

    Drop-in for ``torchrl.objectives.DreamerV3ValueLoss`` (same arguments, defaults, keys and
    outputs ``(TensorDict(loss_value, value_slow_loss), fake_data)``). The value model runs on
    the rows' start states of ``fake_data`` (:class:`DreamerV3ActorLoss`'s) and is trained
    towards ``lambda_target``, weighted by ``discount_weight`` (or by gamma^t when absent and
    ``discount_loss``):

    - ``value_loss="symlog_mse"`` (TorchRL's default): ``(symlog(v) - symlog(R))^2``;
    - ``value_loss="two_hot"`` (the paper's): two-hot cross-entropy of the logits
      (``value_logits`` key) against R on ``num_value_bins`` symexp bins.

    ``slow_critic_regularization > 0`` keeps a slow copy of the critic (``target_value_model_params``,
    checkpointed; step a ``SoftUpdate(loss, tau=0.02)`` after each critic update) and adds
    that weight times the same loss against the slow critic's decoded value.
    :meth:`replay_value_loss` trains the critic on replayed sequences too.

    **The paper's settings** are ``DreamerV3ValueLoss.from_paper(value_model, actor_loss=...)``
    (two-hot on 255 bins, slow-critic regulariser weight 1).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule, TensorDictSequential
        >>> from torchrl.modules import MLP, SymExpTwoHot
        >>> from torchrl.objectives import SoftUpdate
        >>> value = TensorDictSequential(
        ...     TensorDictModule(MLP(in_features=4, out_features=255, num_cells=8, depth=1),
        ...                      in_keys=["state"], out_keys=["state_value_logits"]),
        ...     TensorDictModule(SymExpTwoHot(255), in_keys=["state_value_logits"], out_keys=["state_value"]))
        >>> loss = DreamerV3ValueLoss.from_paper(value)
        >>> updater = SoftUpdate(loss, tau=0.02)
        >>> fake_data = TensorDict({"state": torch.randn(6, 3, 4), "lambda_target": torch.randn(6, 3, 1),
        ...                         "discount_weight": torch.ones(6, 3, 1)}, [6, 3])
        >>> losses, _ = loss(fake_data)
        >>> losses["loss_value"].backward()
        >>> updater.step()
    """

    PAPER_KWARGS = MappingProxyType({"value_loss": "two_hot", "discount_loss": True,
                                     "num_value_bins": DEFAULT_NUM_BINS, "slow_critic_regularization": 1.0})

    @dataclass
    class _AcceptedKeys:
        """Keys read.

        Attributes:
            value: the decoded value (``"state_value"``).
            value_logits: the critic's two-hot logits (``"state_value_logits"``).
            discount_weight: the imagined rows' weights (``"discount_weight"``).
            reward, done, terminated: replay entries, under ``"next"`` (:meth:`replay_value_loss`).
            bootstrap: each replay state's first imagined return, at the root (``"bootstrap"``).
        """

        value: NestedKey = "state_value"
        value_logits: NestedKey = "state_value_logits"
        discount_weight: NestedKey = "discount_weight"
        reward: NestedKey = "reward"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"
        bootstrap: NestedKey = "bootstrap"

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys

    value_model: TensorDictModule
    value_model_params: TensorDictParams
    target_value_model_params: TensorDictParams

    def __init__(
        self,
        value_model: TensorDictModuleBase,
        value_loss: Literal["symlog_mse", "two_hot"] = "symlog_mse",
        discount_loss: bool = True,
        gamma: float = 0.99,
        num_value_bins: int = DEFAULT_NUM_BINS,
        actor_loss: DreamerV3ActorLoss | None = None,
        slow_critic_regularization: float = 0.0,
        reduction: Literal["none", "mean", "sum"] | None = None,
    ):
        super().__init__()
        if value_loss not in ("symlog_mse", "two_hot"):
            raise ValueError(f"value_loss must be 'symlog_mse' or 'two_hot', got {value_loss!r}.")
        if slow_critic_regularization < 0:
            raise ValueError(f"slow_critic_regularization must be non-negative, got {slow_critic_regularization}.")
        reduction = "mean" if reduction is None else reduction
        if reduction not in ("none", "mean", "sum"):
            raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}.")
        self.slow_critic_regularization = slow_critic_regularization
        self.reduction = reduction
        self.convert_to_functional(value_model, "value_model", create_target_params=bool(slow_critic_regularization))
        self.value_loss = value_loss
        self.gamma = gamma
        self.discount_loss = discount_loss
        self.__dict__["_actor_loss"] = actor_loss  # not a submodule: no double parameter ownership
        self.register_buffer("value_bins", symexp_bins(num_value_bins))

    @classmethod
    def from_paper(cls, value_model, actor_loss: DreamerV3ActorLoss | None = None, **overrides) -> DreamerV3ValueLoss:
        """The loss with the paper's settings (:attr:`PAPER_KWARGS`), overridable."""
        return cls(value_model, actor_loss=actor_loss, **{**cls.PAPER_KWARGS, **overrides})

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass

    def _resolved_gamma(self) -> float:
        actor_loss = self.__dict__.get("_actor_loss")
        return float(self.gamma if actor_loss is None else actor_loss.value_estimator.gamma)

    def sync_gamma_with_actor_loss(self, actor_loss: DreamerV3ActorLoss) -> None:
        """Copies ``gamma`` from an actor loss (passing ``actor_loss=`` to the constructor keeps them in step)."""
        self.gamma = float(actor_loss.value_estimator.gamma)

    def _evaluate(self, tensordict: TensorDictBase, params, wanted: NestedKey):
        """The critic with ``params`` on ``tensordict``'s rows: a mapping holding ``wanted``.

        A plain ``TensorDictModule`` tree runs on tensors, only the modules ``wanted`` depends on
        (the online critic's logits are not decoded); other modules run on a tensordict.
        """
        program = _pruned(_program(self.value_model), wanted)
        with params.to_module(self.value_model, preserve_module_state=False):
            if program is not None:
                env = {key: tensordict.get(key) for key in _inputs(program)}
                return _run(program, env)
            td = tensordict.select(*self.value_model.in_keys, strict=False)
            self.value_model(td)
        return td

    def _predicted_key(self) -> NestedKey:
        return self.tensor_keys.value_logits if self.value_loss == "two_hot" else self.tensor_keys.value

    def _prediction(self, td) -> torch.Tensor:
        """The logits (two-hot) or the scalar value ``[..., 1]`` written by the critic."""
        k = self.tensor_keys
        if self.value_loss == "symlog_mse":
            return td.get(k.value)
        logits = td.get(k.value_logits, None)
        if logits is None:
            logits = td.get(k.value)
            warnings.warn(
                "Storing DreamerV3 categorical value logits under the decoded value key "
                f"{unravel_key(k.value)!r} is deprecated in TorchRL and will be removed in v0.16. Write logits "
                "to the configured value_logits key instead.", DeprecationWarning, stacklevel=3)
        if logits.shape[-1] != self.value_bins.shape[0]:
            raise ValueError(
                f"DreamerV3ValueLoss: value_loss='two_hot' expects value logits over num_value_bins="
                f"{self.value_bins.shape[0]} bins, got a trailing dimension of {logits.shape[-1]}."
            )
        return logits

    def _step_loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-row loss; ``prediction`` logits ``[..., K]`` or values ``[..., 1]``, ``target`` ``[...]``."""
        if self.value_loss == "two_hot":
            return two_hot_cross_entropy(prediction, target, self.value_bins)
        return (symlog(prediction.squeeze(-1)) - symlog(target)).square()

    def _slow_value(self, tensordict: TensorDictBase) -> torch.Tensor:
        with torch.no_grad():
            td = self._evaluate(tensordict, self.target_value_model_params, self.tensor_keys.value)
        value = td.get(self.tensor_keys.value)
        if self.value_loss == "two_hot" and value.shape[-1] == self.value_bins.shape[0]:  # logits only
            value = two_hot_decode(value, self.value_bins).unsqueeze(-1)
        return value.squeeze(-1)

    def forward(self, fake_data: TensorDictBase) -> tuple[TensorDict, TensorDictBase]:
        """The critic loss on ``fake_data``; returns ``(TensorDict(loss_value, value_slow_loss), fake_data)``."""
        target = fake_data.get("lambda_target").squeeze(-1)
        td = self._evaluate(fake_data, self.value_model_params, self._predicted_key())
        prediction = self._prediction(td)
        weight = fake_data.get(self.tensor_keys.discount_weight, None)
        if weight is not None:
            discount = weight.squeeze(-1)
        elif self.discount_loss and target.ndim >= 2:
            t = torch.arange(target.shape[-1], device=target.device, dtype=target.dtype)
            discount = (self._resolved_gamma() ** t).expand_as(target)
        else:
            discount = torch.ones_like(target)
        loss = self._step_loss(prediction, target)
        if self.slow_critic_regularization:
            slow_loss = self._step_loss(prediction, self._slow_value(fake_data))
            loss = loss + self.slow_critic_regularization * slow_loss
        else:
            slow_loss = torch.zeros_like(loss)
        out = TensorDict(loss_value=self._reduce_loss(discount * loss),
                         value_slow_loss=self._reduce_loss(discount * slow_loss).detach())
        return out, fake_data.data

    def replay_value_loss(self, tensordict: TensorDictBase, *, horizon: float = 333.0,
                          lmbda: float = 0.95) -> TensorDictBase:
        """The critic loss on replayed posterior states ``[B, T]`` (unweighted ``loss_replay_value``).

        State k's target is the lambda-return from the rewards and flags of k + 1 on,
        bootstrapped from ``bootstrap`` (each state's first imagined return), discount
        ``1 - 1 / horizon``; the last step and the steps that end an episode are left out.
        The gradient reaches the input features (the representation, when not detached).

        Examples:
            >>> import torch
            >>> from tensordict import TensorDict
            >>> from tensordict.nn import TensorDictModule
            >>> loss = DreamerV3ValueLoss(TensorDictModule(torch.nn.Linear(4, 1), ["state"], ["state_value"]))
            >>> replay = TensorDict({"state": torch.randn(2, 5, 4), "bootstrap": torch.randn(2, 5),
            ...     "next": {"reward": torch.randn(2, 5, 1), "done": torch.zeros(2, 5, 1, dtype=torch.bool),
            ...              "terminated": torch.zeros(2, 5, 1, dtype=torch.bool)}}, [2, 5])
            >>> loss.replay_value_loss(replay)["loss_replay_value"].shape
            torch.Size([])
        """
        k = self.tensor_keys
        reward = tensordict.get(("next", k.reward))
        done = tensordict.get(("next", k.done))
        terminated = tensordict.get(("next", k.terminated))
        target = _replay_value_target(reward, done, terminated, tensordict.get(k.bootstrap), horizon, lmbda)
        done = done.squeeze(-1) if done.ndim > len(tensordict.batch_size) else done
        weight = ~done[..., :-1].bool()
        td = self._evaluate(tensordict, self.value_model_params, self._predicted_key())
        prediction = self._prediction(td)[..., :-1, :]
        loss = self._step_loss(prediction, target)
        if self.slow_critic_regularization:
            slow = self._slow_value(tensordict)[..., :-1]
            loss = loss + self.slow_critic_regularization * self._step_loss(prediction, slow)
        return TensorDict(loss_replay_value=self._reduce_loss(weight.to(loss.dtype) * loss))


# ------------------------------------------------------------------ the three together
class DreamerV3Loss(LossModule):
    """DreamerV3's whole objective: world model, imagination (actor, critic) and replay value, in one call.

    Drop-in for ``torchrl.objectives.DreamerV3Loss``: ``loss(sample)`` runs the model loss on the
    ``[B, T]`` batch, imagines from every posterior state ``("next", state / belief)``
    (detached), runs the actor and value losses on the imagined rows, and, when
    ``replay_value_loss_weight > 0``, the critic's replay-value loss on the posterior states
    (not detached, so that it also trains the representation), bootstrapped from each state's
    first imagined return. Returns one tensordict: every ``loss_*`` scalar (their sum is the
    objective), the metrics of the three losses, ``replay_value`` and the detached posterior
    latents under ``replay_context``.

    Args:
        model_loss: a :class:`DreamerV3ModelLoss` (``detach_output=False`` when the replay weight is not 0).
        actor_loss: a :class:`DreamerV3ActorLoss` on the same world model and critic.
        value_loss: a :class:`DreamerV3ValueLoss` on the same critic.

    Keyword Args:
        replay_value_loss_weight: the replay-value term's weight (0.3, the current official code's; 0 turns it off).
        continuation_horizon: the replay returns' discount horizon (333: a discount of 1 - 1/333).
        lmbda: the replay returns' lambda (0.95).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import ProbabilisticTensorDictModule as Prob, ProbabilisticTensorDictSequential
        >>> from tensordict.nn import NormalParamExtractor, TensorDictModule as Mod, TensorDictSequential
        >>> from torchrl.envs.model_based.dreamer import DreamerEnv
        >>> from torchrl.modules import MLP, TanhNormal, WorldModelWrapper
        >>> class Prior(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.cell, self.head = torch.nn.Linear(8 + 6 + 1, 6), torch.nn.Linear(6, 8)
        ...     def forward(self, state, belief, action):  # a stand-in for the recurrent cell
        ...         belief = torch.tanh(self.cell(torch.cat([state, belief, action], -1)))
        ...         logits = self.head(belief).unflatten(-1, (2, 4))
        ...         return logits, torch.softmax(logits, -1).flatten(-2), belief
        >>> class Posterior(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.head = torch.nn.Linear(6 + 3, 8)
        ...     def forward(self, belief, obs):
        ...         logits = self.head(torch.cat([belief, obs], -1)).unflatten(-1, (2, 4))
        ...         return logits, torch.softmax(logits, -1).flatten(-2)
        >>> prior, reward_net = Prior(), MLP(in_features=14, out_features=1, num_cells=8, depth=1)
        >>> nxt = [("next", "state"), ("next", "belief")]
        >>> world_model = TensorDictSequential(
        ...     Mod(prior, ["state", "belief", "action"], [("next", "prior_logits"), "_", ("next", "belief")]),
        ...     Mod(Posterior(), [("next", "belief"), ("next", "observation")],
        ...         [("next", "posterior_logits"), ("next", "state")]),
        ...     Mod(MLP(in_features=14, out_features=3, num_cells=8, depth=1), nxt, [("next", "reco_pixels")]),
        ...     Mod(reward_net, nxt, [("next", "reward")]))
        >>> env = DreamerEnv(WorldModelWrapper(Mod(prior, ["state", "belief", "action"], ["_", "state", "belief"]),
        ...                                    Mod(reward_net, ["state", "belief"], ["reward"])), (8,), (6,))
        >>> actor = ProbabilisticTensorDictSequential(
        ...     Mod(MLP(in_features=14, out_features=2, num_cells=8, depth=1), ["state", "belief"], ["params"]),
        ...     Mod(NormalParamExtractor(), ["params"], ["loc", "scale"]),
        ...     Prob(in_keys=["loc", "scale"], out_keys=["action"], distribution_class=TanhNormal))
        >>> value = Mod(MLP(in_features=14, out_features=1, num_cells=8, depth=1), ["state", "belief"], ["state_value"])
        >>> model_loss = DreamerV3ModelLoss(world_model, reward_two_hot=False, detach_output=False)
        >>> model_loss.set_keys(pixels="observation")
        >>> actor_loss = DreamerV3ActorLoss(actor, value, env, imagination_horizon=3)
        >>> loss = DreamerV3Loss(model_loss, actor_loss, DreamerV3ValueLoss(value, actor_loss=actor_loss))
        >>> sample = TensorDict({"state": torch.zeros(2, 4, 8), "belief": torch.zeros(2, 4, 6),
        ...     "action": torch.zeros(2, 4, 1), "next": {"observation": torch.randn(2, 4, 3),
        ...     "reward": torch.randn(2, 4, 1), "done": torch.zeros(2, 4, 1, dtype=torch.bool),
        ...     "terminated": torch.zeros(2, 4, 1, dtype=torch.bool)}}, [2, 4])
        >>> losses = loss(sample)
        >>> sum(v for k, v in losses.items() if k.startswith("loss_")).backward()
        >>> losses["replay_context"].batch_size
        torch.Size([2, 4])
    """

    @dataclass
    class _AcceptedKeys:
        """Keys read and written.

        Attributes:
            state, belief: the posterior latents, under ``"next"``.
            is_init: the reset marker at the root.
            replay_context: where the detached posterior latents are returned.
        """

        state: NestedKey = "state"
        belief: NestedKey = "belief"
        is_init: NestedKey = "is_init"
        replay_context: NestedKey = "replay_context"

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys

    def __init__(
        self,
        model_loss: DreamerV3ModelLoss,
        actor_loss: DreamerV3ActorLoss,
        value_loss: DreamerV3ValueLoss,
        *,
        replay_value_loss_weight: float = 0.3,
        continuation_horizon: float = 333.0,
        lmbda: float = 0.95,
    ):
        super().__init__()
        if replay_value_loss_weight < 0:
            raise ValueError(f"replay_value_loss_weight must be non-negative, got {replay_value_loss_weight}.")
        if replay_value_loss_weight and model_loss.detach_output:
            raise ValueError("DreamerV3Loss: the replay-value loss trains the representation through the posterior "
                             "states: build the model loss with detach_output=False (or set "
                             "replay_value_loss_weight=0).")
        self.model_loss = model_loss
        self.actor_loss = actor_loss
        self.value_loss = value_loss
        self.replay_value_loss_weight = replay_value_loss_weight
        self.continuation_horizon = continuation_horizon
        self.lmbda = lmbda

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass

    def forward(self, sample: TensorDictBase) -> TensorDictBase:
        """All scalar losses and metrics for a ``[B, T]`` batch, and the detached posterior latents."""
        k = self.tensor_keys
        model_losses, posterior = self.model_loss(sample)
        state = posterior.get(("next", k.state))
        belief = posterior.get(("next", k.belief))
        starts = TensorDict({self.actor_loss.tensor_keys.state: state.detach().reshape(-1, state.shape[-1]),
                             self.actor_loss.tensor_keys.belief: belief.detach().reshape(-1, belief.shape[-1])},
                            [sample.numel()])
        actor_losses, imagined = self.actor_loss(starts)
        value_losses, _ = self.value_loss(imagined.detach())
        if self.replay_value_loss_weight:
            vk = self.value_loss.tensor_keys
            replay = posterior.get("next").select(*self.value_loss.value_model.in_keys, strict=False)
            replay.set(vk.bootstrap, imagined.get("lambda_target")[..., 0, 0].reshape(sample.batch_size))
            replay.set("next", sample.get("next").select(vk.reward, vk.done, vk.terminated))
            replay_value = self.value_loss.replay_value_loss(replay, horizon=self.continuation_horizon,
                                                             lmbda=self.lmbda)["loss_replay_value"]
        else:
            replay_value = state.new_zeros(())
        out = model_losses.apply(torch.squeeze)
        out.update(actor_losses).update(value_losses)
        out.set("loss_replay_value", self.replay_value_loss_weight * replay_value)
        out.set("replay_value", replay_value.detach())
        out.set(k.replay_context, posterior.get("next").select(k.state, k.belief).detach())
        return out
