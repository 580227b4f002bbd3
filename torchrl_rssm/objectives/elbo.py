"""The PlaNet world-model loss: the negative variational bound (ELBO) of an RSSM.

Per step t of a ``[*B, T]`` sequence (TorchRL layout: row t holds ``action`` a_t and
``("next", obs)`` o_{t+1}; the world model writes its latent for o_{t+1} under ``"next"``)::

    loss_t = 0.5 * ||o_t - decoder(h_t, s_t)||^2      (unit Gaussian, summed over the obs dims)
           + 0.5 * (r_t - reward(h_t, s_t))^2          (unit Gaussian)
           + max(KL(q(s_t | h_t, o_t) || p(s_t | h_t)), free_nats)   (KL summed over latent dims)

each term averaged (never summed) over batch and time and scaled by its ``lambda_*``.
Options: KL balancing (DreamerV2) and latent overshooting (PlaNet, section 4).
Constant terms of the log-likelihoods (``0.5 * log(2 pi)`` per dim) are left out.

The tensor helpers (:func:`gaussian_kl`, :func:`gaussian_entropy`, :func:`balanced_kl`,
:func:`overshooting_priors`) are public so that they can be tested and reused alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey, unravel_key
from torch import nn
from torchrl.objectives.common import LossModule

from ..interop import find_rollout_prior, strip_next
from ..modules import ConvEncoder, MLPEncoder, RSSMRollout, pixels_to_model

_HALF_LOG_2PI_E = 0.5 * math.log(2 * math.pi * math.e)


# ----------------------------------------------------------------- tensor helpers
def gaussian_kl(
    q_mean: torch.Tensor, q_std: torch.Tensor, p_mean: torch.Tensor, p_std: torch.Tensor
) -> torch.Tensor:
    """KL(N(q_mean, q_std) || N(p_mean, p_std)) of diagonal Gaussians, summed over the last dim.

    Closed form per dim: ``log(p_std / q_std) + (q_std^2 + (q_mean - p_mean)^2) / (2 p_std^2) - 1/2``.
    Written on tensors (not ``torch.distributions``) so that it costs a handful of
    fused elementwise ops and compiles.

    Examples:
        >>> import torch
        >>> gaussian_kl(torch.zeros(2, 3), torch.ones(2, 3), torch.zeros(2, 3), torch.ones(2, 3))
        tensor([0., 0.])
    """
    var_ratio = (q_std / p_std).pow(2)
    mahalanobis = ((q_mean - p_mean) / p_std).pow(2)
    return 0.5 * (var_ratio + mahalanobis - 1.0 - var_ratio.log()).sum(-1)


def gaussian_entropy(std: torch.Tensor) -> torch.Tensor:
    """Entropy of a diagonal Gaussian, summed over the last dim: ``sum(log std + 0.5 log(2 pi e))``.

    Examples:
        >>> import math, torch
        >>> abs(gaussian_entropy(torch.ones(3)).item() - 1.5 * math.log(2 * math.pi * math.e)) < 1e-6
        True
    """
    return (std.log() + _HALF_LOG_2PI_E).sum(-1)


def balanced_kl(
    q_mean: torch.Tensor,
    q_std: torch.Tensor,
    p_mean: torch.Tensor,
    p_std: torch.Tensor,
    alpha: float | None,
) -> torch.Tensor:
    """KL(q || p) summed over latent dims, with DreamerV2's KL balancing when ``alpha`` is set.

    ``alpha * KL(sg(q) || p) + (1 - alpha) * KL(q || sg(p))``: the value is KL(q || p);
    the prior receives ``alpha`` and the posterior ``1 - alpha`` of the plain KL's
    gradient (the prior learns faster than the posterior is regularised).
    ``alpha=None`` is the plain KL.

    Examples:
        >>> import torch
        >>> q_mean, p_mean = torch.zeros(1, 2, requires_grad=True), torch.ones(1, 2, requires_grad=True)
        >>> kl = balanced_kl(q_mean, torch.ones(1, 2), p_mean, torch.ones(1, 2), alpha=0.8)
        >>> kl.item()  # the value is KL(q || p) = 0.5 * sum (q_mean - p_mean)^2
        1.0
        >>> kl.backward()
        >>> p_mean.grad, q_mean.grad  # the prior gets 0.8 of the gradient, the posterior 0.2
        (tensor([[0.8000, 0.8000]]), tensor([[-0.2000, -0.2000]]))
    """
    if alpha is None:
        return gaussian_kl(q_mean, q_std, p_mean, p_std)
    train_prior = gaussian_kl(q_mean.detach(), q_std.detach(), p_mean, p_std)
    train_posterior = gaussian_kl(q_mean, q_std, p_mean.detach(), p_std.detach())
    return alpha * train_prior + (1.0 - alpha) * train_posterior


def overshooting_priors(
    prior: nn.Module,
    state: torch.Tensor,
    belief: torch.Tensor,
    action: torch.Tensor,
    distance: int,
    sample: bool = True,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """d-step open-loop priors from every posterior state of a sequence, for d = 1..distance.

    Args:
        prior: a transition network called as ``prior(state, belief, action, noise)
            -> (mean, std, sample, belief)`` (this package's or TorchRL's ``RSSMPrior``).
        state, belief: the posterior latents of the sequence, ``[*B, T, F]`` (row j is
            the latent after step j).
        action: ``[*B, T, A]``; step j consumes ``action[..., j, :]``.
        distance: the largest d.
        sample: sample the intermediate states of a chain from the prior (PlaNet);
            ``False`` follows the prior means (deterministic, for tests).

    Returns:
        For d = 1..min(distance, T-1), ``(mean, std)`` of shape ``[*B, T-d, S]``: entry j is
        p(s_{j+d} | posterior latent at row j, actions of rows j+1..j+d), i.e. the prior
        for row ``j + d`` (targets: rows ``d..T-1``).

    All start times are advanced together (the chain batch is ``[*B, T-d]``, flattened),
    so the Python loop runs over d only, never over (t, d) pairs.

    Examples:
        >>> import torch
        >>> from torchrl_rssm.modules import RSSMPrior
        >>> prior = RSSMPrior(None, action_dim=2, state_dim=4, rnn_hidden_dim=8, hidden_dim=8)
        >>> priors = overshooting_priors(prior, torch.zeros(3, 6, 4), torch.zeros(3, 6, 8), torch.zeros(3, 6, 2), 3)
        >>> [tuple(mean.shape) for mean, std in priors]  # d = 1, 2, 3: targets rows d..5
        [(3, 5, 4), (3, 4, 4), (3, 3, 4)]
    """
    T = action.shape[-2]
    out: list[tuple[torch.Tensor, torch.Tensor]] = []
    for d in range(1, min(distance, T - 1) + 1):
        # chains that start at rows 0..T-1-d; each step drops the chain that ran out of targets
        state, belief = state[..., : T - d, :], belief[..., : T - d, :]
        act = action[..., d:, :]
        lead = act.shape[:-1]
        s, h, a = (x.reshape(-1, x.shape[-1]) for x in (state, belief, act))  # TorchRL's GRUCell: 2-D only
        noise = torch.randn_like(s) if sample else torch.zeros_like(s)
        mean, std, s, h = prior(s, h, a.to(s.dtype), noise)
        mean, std = mean.reshape(*lead, -1), std.reshape(*lead, -1)
        state, belief = s.reshape(*lead, -1), h.reshape(*lead, -1)
        out.append((mean, std))
    return out


def _next(key: NestedKey) -> NestedKey:
    return unravel_key(("next", key))


# --------------------------------------------------------------------- the loss
def encode_first_observations(world_model: nn.Module, td: TensorDictBase, observation_key: NestedKey = "pixels",
                              is_init_key: NestedKey = "is_init") -> None:
    """Writes the root observation's embedding at ``is_init`` rows (zeros elsewhere) where our
    rollout reads it (``init_embedding``), so that sequences start from their first observation
    filtered with a zero action, as acting does. A no-op for world models without our rollout,
    batches without root observations or without ``is_init`` rows (those start from zeros).
    """
    try:
        encoder, rollout = world_model[0][0], world_model[0][1]
        enc_in, enc_out = unravel_key(encoder.in_keys[0]), unravel_key(encoder.out_keys[0])
    except (AttributeError, IndexError, TypeError, KeyError):
        return
    if getattr(rollout, "init_embedding_key", None) is None:
        return
    is_init, obs = td.get(is_init_key, None), td.get(observation_key, None)
    if is_init is None or obs is None or enc_out != unravel_key(rollout.embedding_key):
        return
    mask = is_init.reshape(td.batch_size).bool()
    if not bool(mask.any()):
        return
    first = encoder(TensorDict({enc_in: obs[mask]}, batch_size=[int(mask.sum())])).get(enc_out)
    embedding = first.new_zeros(*td.batch_size, first.shape[-1])
    embedding[mask] = first
    td.set(rollout.init_embedding_key, embedding)


class NonFiniteInputError(ValueError):
    """A batch given to :class:`RSSMLoss` holds NaN or inf values (a ``ValueError``)."""


class RSSMLoss(LossModule):
    """PlaNet's world-model loss (negative ELBO) with free nats, KL balancing and latent overshooting.

    Runs the world model (``world_model(td)``, posterior filtering over the sequence) on a
    shallow copy of the input and returns a ``TensorDict`` of scalar ``loss_*`` entries
    (sum them to backpropagate) and detached diagnostics:

    - ``loss_model_reco``: ``lambda_reco * mean_{b,t} 0.5 * sum_obs_dims (o - o_hat)^2``; the
      target is ``("next", observation)``, uint8 pixels mapped to ``[-0.5, 0.5)`` with
      :func:`~torchrl_rssm.modules.pixels_to_model`. Summed over the observation's own dims
      (``3x64x64`` or ``obs_dim``: every dim beyond the tensordict's ``[*B, T]``), averaged
      over batch and time.
    - ``loss_model_reward``: ``lambda_reward * mean_{b,t} 0.5 * (r - r_hat)^2``.
    - ``loss_model_kl``: ``lambda_kl / D * mean_{b,t} max(KL_t, free_nats)`` with KL_t =
      KL(q || p) summed over the latent dims first (PlaNet), balanced if ``kl_balance``.
      ``clamp_min`` gives an exactly zero gradient to steps below the free nats.
    - ``loss_model_overshooting`` (only when ``overshooting_distance`` D > 1):
      ``lambda_kl * beta / D * sum_{d=2..D} mean_{b,t} max(KL(sg(q_t) || p_{t|t-d}), free_nats)``
      where p_{t|t-d} is the prior after applying the transition d times (with the actions)
      from the posterior latent at t-d. With ``loss_model_kl`` this is PlaNet's latent
      overshooting ``1/D * sum_d beta_d KL_d`` with ``beta_1 = 1`` and ``beta_d = beta``.
      Each d is averaged over its own valid (b, t) pairs: t >= d and no episode start
      (``is_init``) in rows t-d+1..t. The posterior targets are detached for d > 1, so no
      gradient reaches them; the chain's start (the posterior latent at t-d) keeps its
      gradient, as in PlaNet, which stops the gradient of the targets only. KL balancing
      does not apply to d > 1 (the posterior is already stopped). D = 1 is the plain loss.
    - diagnostics (detached): ``kl`` (mean per-step KL before free nats), ``prior_entropy``,
      ``posterior_entropy`` (nats, summed over latent dims, mean over steps), ``reco_error``
      (mean squared error per observation element), ``reward_error`` (mean squared error),
      and ``kl_overshooting`` (mean over d >= 2 of the per-step KL) when D > 1.

    The loss runs with this package's world model (:func:`~torchrl_rssm.modules.make_world_model`,
    reward prediction at ``("next", "reward_pred")``) and with TorchRL's Dreamer world model
    (prediction at ``("next", "reward")``: the true reward is read before the model runs, so
    the overwrite, which happens on the copy only, does not matter). The observation,
    reconstruction and predicted-reward keys default to the world model's own (its encoder's
    input, its decoder's and reward module's last outputs); change them with ``set_keys``.

    Args:
        world_model: a ``WorldModelWrapper``-like module: ``world_model[0]`` = (encoder, rollout,
            decoder), ``world_model[1]`` = reward module.
        lambda_reco, lambda_reward, lambda_kl: weights of the three terms.
        free_nats: the KL of a step is ``max(KL, free_nats)`` (PlaNet: 3). ``0`` disables it.
        kl_balance: ``alpha`` of DreamerV2's KL balancing (0.8 there); ``None`` (default): plain KL.
        overshooting_distance: D, the largest overshooting distance (1: off, the default,
            as in PlaNet's final agent).
        overshooting_weight: beta, the weight of the d > 1 terms.
        check_finite: check once per batch that observation, action and reward are finite
            (one ``isfinite().all()`` reduction and one host sync); turn it off for speed
            or ``torch.compile``. Missing keys and wrong shapes are always reported.
        start_from_recorded_latents: ``False`` (default, the recipe's behaviour too): latents
            recorded in the batch (root and ``("next", ...)`` ``state`` / ``belief``, e.g.
            written by the acting policy under a collector) are ignored, and every sequence
            starts from its first observation filtered (below). ``True``: the world model
            starts filtering from the recorded root latents of row 0, as TorchRL's
            ``RSSMRollout`` does.

    **Where a sequence starts.** At rows with ``is_init`` (the replay buffer sets it at
    every chunk start and at episode starts) the latent entering the step is the root
    observation o_t filtered from the zero latent with a zero action (PlaNet):
    h = f(0, 0, 0), s ~ q(h, e(o_t)), exactly as the acting policy starts an episode. The
    loss encodes the root observation at those rows only (to spare the encoder on pixels)
    and gives it to the rollout (root ``"encoded_latents"``). A batch without root
    observations (foreign data) starts those rows from the zero latent instead. The first
    observation has no reconstruction or KL term of its own (row t's terms are about
    ``("next", ...)``); it is trained through the steps that follow it.

    Raises:
        ValueError: on missing keys, wrong observation/reward shapes, non-finite inputs
            (:class:`NonFiniteInputError`, a subclass),
            or overshooting with a world model without a recognisable transition network.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded, Composite, Unbounded
        >>> from torchrl_rssm.modules import make_world_model
        >>> wm = make_world_model(Composite(observation=Unbounded((5,))), Bounded(-1, 1, (2,)),
        ...                       state_dim=8, belief_dim=32, hidden_dim=32)
        >>> loss_fn = RSSMLoss(wm, free_nats=3.0, overshooting_distance=3)
        >>> td = TensorDict({"action": torch.zeros(4, 10, 2),
        ...                  ("next", "observation"): torch.randn(4, 10, 5),
        ...                  ("next", "reward"): torch.randn(4, 10, 1)}, [4, 10])
        >>> out = loss_fn(td)
        >>> sorted(k for k in out.keys() if k.startswith("loss_"))
        ['loss_model_kl', 'loss_model_overshooting', 'loss_model_reco', 'loss_model_reward']
        >>> total = sum(v for k, v in out.items() if k.startswith("loss_"))
        >>> total.backward()
        >>> out["kl"].requires_grad, total.shape
        (False, torch.Size([]))
    """

    @dataclass
    class _AcceptedKeys:
        """Configurable tensordict keys (``set_keys``). Keys marked "under next" are read at
        ``("next", key)``; ``None`` means "the world model's own".

        Attributes:
            observation: reconstruction target, under next. Default: the encoder's input
                (``"pixels"`` or ``"observation"``).
            reco_observation: decoder mean, under next. Default: the decoder's output
                (``"reco_pixels"`` / ``"reco_observation"``).
            reward: true reward, under next. Default ``"reward"``.
            reward_pred: predicted reward, under next. Default: the reward module's output
                (``"reward_pred"`` for ours, ``"reward"`` for TorchRL's Dreamer model).
            action: root. Default ``"action"``.
            is_init: root episode-start flag (used by overshooting). Default ``"is_init"``.
            prior_mean, prior_std, posterior_mean, posterior_std, belief, state: written by
                the world model, under next.
        """

        observation: NestedKey | None = None
        reco_observation: NestedKey | None = None
        reward: NestedKey = "reward"
        reward_pred: NestedKey | None = None
        action: NestedKey = "action"
        is_init: NestedKey = "is_init"
        prior_mean: NestedKey = "prior_mean"
        prior_std: NestedKey = "prior_std"
        posterior_mean: NestedKey = "posterior_mean"
        posterior_std: NestedKey = "posterior_std"
        belief: NestedKey = "belief"
        state: NestedKey = "state"

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys

    def __init__(
        self,
        world_model: TensorDictModuleBase,
        *,
        lambda_reco: float = 1.0,
        lambda_reward: float = 1.0,
        lambda_kl: float = 1.0,
        free_nats: float = 3.0,
        kl_balance: float | None = None,
        overshooting_distance: int = 1,
        overshooting_weight: float = 1.0,
        check_finite: bool = True,
        start_from_recorded_latents: bool = False,
    ):
        super().__init__()
        if kl_balance is not None and not 0.0 <= kl_balance <= 1.0:
            raise ValueError(f"RSSMLoss: kl_balance must be None or in [0, 1], got {kl_balance}.")
        if int(overshooting_distance) < 1:
            raise ValueError(f"RSSMLoss: overshooting_distance must be >= 1, got {overshooting_distance}.")
        if free_nats < 0:
            raise ValueError(f"RSSMLoss: free_nats must be >= 0, got {free_nats}.")
        self.world_model = world_model
        self.lambda_reco = float(lambda_reco)
        self.lambda_reward = float(lambda_reward)
        self.lambda_kl = float(lambda_kl)
        self.free_nats = float(free_nats)
        self.kl_balance = kl_balance
        self.overshooting_distance = int(overshooting_distance)
        self.overshooting_weight = float(overshooting_weight)
        self.check_finite = check_finite
        self.start_from_recorded_latents = bool(start_from_recorded_latents)
        # a plain attribute, not a submodule: our rollout (reads the root observation's embedding)
        self.__dict__["_rollout"] = next((m for m in world_model.modules() if isinstance(m, RSSMRollout)), None)
        # a plain attribute, not a submodule: its parameters are already the world model's
        self.__dict__["_prior"] = find_rollout_prior(world_model)
        if self.overshooting_distance > 1 and self._prior is None:
            raise ValueError(
                "RSSMLoss: latent overshooting (overshooting_distance > 1) needs the world model's "
                "transition network, found as an RSSMRollout (torchrl_rssm's `.prior` or TorchRL's "
                "`.rssm_prior`) inside `world_model`; none was found."
            )
        self._defaults = self._world_model_keys(world_model)
        self._in_keys = None
        self._out_keys = None
        self._resolve_keys()

    # ------------------------------------------------------------------ keys
    @staticmethod
    def _world_model_keys(world_model: nn.Module) -> dict[str, NestedKey]:
        """The observation / reconstruction / reward-prediction keys the world model uses."""
        keys = {"observation": "pixels", "reco_observation": "reco_pixels", "reward_pred": "reward_pred"}
        try:  # WorldModelWrapper(TensorDictSequential(encoder, rollout, decoder), reward)
            keys["observation"] = strip_next(world_model[0][0].in_keys[0])
            keys["reco_observation"] = strip_next(world_model[0][-1].out_keys[-1])
            keys["reward_pred"] = strip_next(world_model[1].out_keys[-1])
        except (AttributeError, IndexError, TypeError, KeyError):
            pass
        return keys

    def _resolve_keys(self) -> None:
        for name, value in self._defaults.items():
            if getattr(self.tensor_keys, name) is None:
                setattr(self.tensor_keys, name, value)
        self._set_in_keys()

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        # no value estimator: refill keys reset to None (= the world model's) and refresh in_keys
        self._resolve_keys()

    def _set_in_keys(self) -> None:
        k = self.tensor_keys
        # what the world model reads (its own in_keys) plus the two targets
        keys = [*getattr(self.world_model, "in_keys", []), k.action, _next(k.observation), _next(k.reward)]
        self._in_keys = sorted({unravel_key(key) for key in keys}, key=str)

    @property
    def in_keys(self) -> list[NestedKey]:
        if self._in_keys is None:
            self._set_in_keys()
        return self._in_keys

    @in_keys.setter
    def in_keys(self, values) -> None:
        self._in_keys = values

    @property
    def out_keys(self) -> list[str]:
        if self._out_keys is None:
            keys = ["loss_model_reco", "loss_model_reward", "loss_model_kl"]
            diagnostics = ["kl", "prior_entropy", "posterior_entropy", "reco_error", "reward_error"]
            if self.overshooting_distance > 1:
                keys.append("loss_model_overshooting")
                diagnostics.append("kl_overshooting")
            self._out_keys = keys + diagnostics
        return self._out_keys

    @out_keys.setter
    def out_keys(self, values) -> None:  # used by select_out_keys, as in TorchRL's losses
        self._out_keys = values

    # ----------------------------------------------------------------- checks
    def _expected_obs_shape(self) -> tuple[int, ...] | None:
        """The observation shape our encoders need, if they read this loss's observation key."""
        try:
            encoder_module = self.world_model[0][0]
            encoder, in_key = encoder_module.module, strip_next(encoder_module.in_keys[0])
        except (AttributeError, IndexError, TypeError, KeyError):
            return None
        if in_key != unravel_key(self.tensor_keys.observation):
            return None
        if isinstance(encoder, MLPEncoder):
            return (encoder.obs_dim,)
        if isinstance(encoder, ConvEncoder) and encoder.in_channels is not None:
            size = getattr(encoder, "image_size", None)  # make_world_model sets the spec's (H, W)
            return (encoder.in_channels, *size) if size is not None else None
        return None

    def _check_inputs(self, td: TensorDictBase) -> None:
        k = self.tensor_keys
        if td.batch_dims < 1:
            raise ValueError(f"RSSMLoss: expected a tensordict of sequences, batch_size [*B, T]; got {td.batch_size}.")
        lead = (*td.batch_size,)
        obs_shape = self._expected_obs_shape()
        obs_desc = f"[*B, T, {', '.join(map(str, obs_shape))}]" if obs_shape else "[*B, T, *obs_shape]"
        expected = {k.action: "[*B, T, action_dim]", _next(k.observation): obs_desc,
                    _next(k.reward): "[*B, T, 1]"}
        missing = [f"{key!r} (shape {shape})" for key, shape in expected.items() if td.get(key, None) is None]
        if missing:
            raise ValueError(f"RSSMLoss: missing input key(s): {', '.join(missing)}; batch_size {lead}.")
        obs = td.get(_next(k.observation))
        if (obs_shape is not None and tuple(obs.shape[td.batch_dims:]) != obs_shape) or obs.ndim <= td.batch_dims:
            raise ValueError(
                f"RSSMLoss: {_next(k.observation)!r} must have shape {obs_desc} with [*B, T] = {lead}, "
                f"got {tuple(obs.shape)}."
            )
        reward = td.get(_next(k.reward))
        if tuple(reward.shape) not in (lead, (*lead, 1)):
            raise ValueError(
                f"RSSMLoss: {_next(k.reward)!r} must have shape [*B, T, 1] = {(*lead, 1)}, got {tuple(reward.shape)}."
            )
        if self.check_finite:
            named = [(key, td.get(key)) for key in expected]
            named = [(key, x) for key, x in named if x.is_floating_point()]
            # one reduction per tensor, one host sync for the batch
            finite = torch.stack([torch.isfinite(x).all() for _, x in named])
            if not bool(finite.all()):
                bad = [repr(key) for (key, _), ok in zip(named, finite.tolist()) if not ok]
                raise NonFiniteInputError(f"RSSMLoss: non-finite values (NaN or inf) in {', '.join(bad)}.")

    # ---------------------------------------------------------------- forward
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Computes the loss terms for a ``[*B, T]`` batch of sequences (see the class docstring)."""
        return self.compute(tensordict)[0]

    def compute(self, tensordict: TensorDictBase) -> tuple[TensorDictBase, TensorDictBase]:
        """The loss terms and the world model's output on a shallow copy of ``tensordict``.

        The output holds the posterior latents ``("next", "state")`` / ``("next", "belief")``
        (with their graph), which Dreamer's actor loss imagines from (it detaches them), as
        TorchRL's ``DreamerModelLoss`` returns its model output beside the losses.
        """
        k = self.tensor_keys
        self._check_inputs(tensordict)
        # read the targets before the model runs: TorchRL's Dreamer model writes its predicted
        # reward at ("next", "reward"); running on a shallow copy keeps the caller's td intact
        target = pixels_to_model(tensordict.get(_next(k.observation)))
        true_reward = tensordict.get(_next(k.reward))
        td = tensordict.copy()
        if not self.start_from_recorded_latents:  # recorded latents (the collector's) are not a start
            td = td.exclude(_next(k.state), _next(k.belief))
            if self._rollout is not None:
                td = td.exclude(k.state, k.belief)
            else:  # TorchRL's rollout reads its start from these keys: the zero latent, as recorded ones are ignored
                for key in (k.state, k.belief):
                    if td.get(key, None) is not None:
                        td.set(key, torch.zeros_like(td.get(key)))
        self._encode_first_observations(td)
        td = self.world_model(td)
        batch_dims = tensordict.batch_dims

        # observation and reward log-likelihoods (unit-variance Gaussians, constants dropped)
        reco = td.get(_next(k.reco_observation))
        if reco.shape != target.shape:
            raise ValueError(
                f"RSSMLoss: the reconstruction {_next(k.reco_observation)!r} has shape {tuple(reco.shape)} but "
                f"the target {_next(k.observation)!r} has {tuple(target.shape)}; set the keys with set_keys."
            )
        sq_err = (reco - target.to(reco.dtype)).pow(2)
        reco_nll = 0.5 * sq_err.sum(tuple(range(batch_dims, sq_err.ndim))).mean()
        reward_pred = td.get(_next(k.reward_pred))
        reward_sq_err = (reward_pred - true_reward.reshape(reward_pred.shape).to(reward_pred.dtype)).pow(2)
        reward_nll = 0.5 * reward_sq_err.sum(tuple(range(batch_dims, reward_sq_err.ndim))).mean()

        # KL(q || p) per step, summed over latent dims, then free nats per step
        q_mean, q_std = td.get(_next(k.posterior_mean)), td.get(_next(k.posterior_std))
        p_mean, p_std = td.get(_next(k.prior_mean)), td.get(_next(k.prior_std))
        kl_train = balanced_kl(q_mean, q_std, p_mean, p_std, self.kl_balance)
        D = self.overshooting_distance
        kl_loss = kl_train.clamp_min(self.free_nats).mean()

        out = {
            "loss_model_reco": self.lambda_reco * reco_nll,
            "loss_model_reward": self.lambda_reward * reward_nll,
            "loss_model_kl": self.lambda_kl / D * kl_loss,
        }
        with torch.no_grad():
            kl = kl_train if self.kl_balance is None else gaussian_kl(q_mean, q_std, p_mean, p_std)
            diagnostics = {
                "kl": kl.mean(),
                "prior_entropy": gaussian_entropy(p_std).mean(),
                "posterior_entropy": gaussian_entropy(q_std).mean(),
                "reco_error": sq_err.mean(),
                "reward_error": reward_sq_err.mean(),
            }
        if D > 1:
            os_loss, os_kl = self._overshooting(td, q_mean, q_std)
            out["loss_model_overshooting"] = self.lambda_kl * self.overshooting_weight / D * os_loss
            diagnostics["kl_overshooting"] = os_kl
        out.update({name: v.detach() for name, v in diagnostics.items()})
        result = TensorDict(out, batch_size=[])
        self._clear_weakrefs(tensordict, result)
        return result, td

    def _encode_first_observations(self, td: TensorDictBase) -> None:
        k = self.tensor_keys
        encode_first_observations(self.world_model, td, observation_key=k.observation, is_init_key=k.is_init)

    def _overshooting(
        self, td: TensorDictBase, q_mean: torch.Tensor, q_std: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum over d = 2..D of the masked mean of max(KL(sg(q_t) || p_{t|t-d}), free_nats)."""
        k = self.tensor_keys
        action = td.get(k.action)
        state, belief = td.get(_next(k.state)), td.get(_next(k.belief))
        priors = overshooting_priors(self._prior, state, belief, action, self.overshooting_distance)
        T = action.shape[-2]
        is_init = td.get(k.is_init, None)
        if is_init is None:
            starts = torch.zeros(action.shape[:-1], device=action.device, dtype=torch.long)
        else:
            starts = is_init.reshape(action.shape[:-1]).long()
        n_starts = starts.cumsum(-1)  # episode starts in rows 0..t
        total = q_mean.new_zeros(())
        kl_sum = q_mean.new_zeros(())
        for d, (p_mean, p_std) in enumerate(priors[1:], start=2):
            # the chain that reaches row t from row t-d crosses no episode start in rows t-d+1..t
            valid = (n_starts[..., d:] == n_starts[..., : T - d]).to(q_mean.dtype)
            count = valid.sum().clamp_min(1.0)
            kl = gaussian_kl(q_mean[..., d:, :].detach(), q_std[..., d:, :].detach(), p_mean, p_std)
            total = total + (kl.clamp_min(self.free_nats) * valid).sum() / count
            kl_sum = kl_sum + (kl.detach() * valid).sum() / count
        n_d = max(len(priors) - 1, 1)
        return total, kl_sum / n_d
