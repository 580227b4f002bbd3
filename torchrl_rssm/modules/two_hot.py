"""DreamerV3's scalar transforms: symlog / symexp and the two-hot code over symexp-spaced bins.

Reward and value heads predict a categorical distribution over ``num_bins`` raw values
``symexp(linspace(-20, 20, num_bins))``; a target is written as the two adjacent bins that
bracket it, weighted by linear interpolation in raw space (two-hot). The prediction is the
expectation of the bins under the softmax.

- :func:`symlog` / :func:`symexp`: TorchRL's own (``torchrl.modules.functional``), re-exported.
- :func:`symexp_bins`: the support, exactly antisymmetric (``bins == -bins.flip(0)``).
- :func:`two_hot_encode`, :func:`two_hot_decode`, :func:`two_hot_cross_entropy`: the code,
  with TorchRL's names and arguments. The arithmetic runs in float32 at least (bf16 and fp16
  inputs are promoted) because the bins span 1e-1 .. 5e8 and bf16 keeps 8 bits of mantissa.
- :class:`SymExpTwoHot`: the module holding the bins, a drop-in for TorchRL's.

The decode pairs mirrored bins (``p_hi * b_hi + p_lo * b_lo = (p_hi - p_lo) * b_hi`` when
``b_lo == -b_hi``), so equal probabilities decode to exactly ``0`` whatever the summation
order: a zero-initialised head predicts a reward and a value of exactly zero.
"""
from __future__ import annotations

import torch
from torch import nn
from torchrl.modules.functional import symexp, symlog

__all__ = ["SymExpTwoHot", "symexp", "symexp_bins", "symlog", "two_hot_cross_entropy", "two_hot_decode",
           "two_hot_encode"]

DEFAULT_NUM_BINS = 255
DEFAULT_BIN_LIMIT = 20.0


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half precisions, the dtype itself otherwise (float64 stays float64)."""
    return torch.promote_types(dtype, torch.float32)


def symexp_bins(num_bins: int = DEFAULT_NUM_BINS, limit: float = DEFAULT_BIN_LIMIT, *,
                device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``symexp`` of ``num_bins`` evenly spaced points in ``[-limit, limit]``, exactly antisymmetric.

    The negative half is computed once and mirrored, so ``bins == -bins.flip(0)`` holds bit for
    bit (and the middle bin of an odd support is exactly 0).

    Args:
        num_bins: number of support points, at least 2.
        limit: half-width of the grid in symlog space (DreamerV3: 20).
        device, dtype: of the result (default dtype if not given).

    Examples:
        >>> bins = symexp_bins(5)
        >>> bins
        tensor([-4.8517e+08, -2.2025e+04,  0.0000e+00,  2.2025e+04,  4.8517e+08])
        >>> bool((bins == -bins.flip(0)).all())
        True
    """
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 2:
        raise ValueError(f"num_bins must be an int of at least 2, got {num_bins!r}.")
    grid = torch.linspace(-limit, limit, num_bins, dtype=torch.float64)
    half = symexp(grid[: num_bins // 2])  # computed in float64, rounded once
    middle = torch.zeros(num_bins % 2, dtype=torch.float64)
    bins = torch.cat([half, middle, -half.flip(0)])
    return bins.to(device=device, dtype=dtype or torch.get_default_dtype())


def _check_bins(bins: torch.Tensor) -> None:
    if bins.ndim != 1 or bins.numel() < 2:
        raise ValueError(f"bins must be a one-dimensional tensor of at least 2 values, got shape {tuple(bins.shape)}.")


def two_hot_encode(x: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Two-hot code of raw scalars ``x`` on the ascending support ``bins``: ``[*x.shape, num_bins]``.

    A value between bins ``b_k <= x < b_{k+1}`` puts weight ``(b_{k+1} - x) / (b_{k+1} - b_k)``
    on ``k`` and the rest on ``k + 1``; values outside the support saturate at its ends.
    Computed and returned in float32 at least.

    Examples:
        >>> import torch
        >>> two_hot_encode(torch.tensor([0.25, 5.0]), torch.tensor([-1.0, 0.0, 1.0]))
        tensor([[0.0000, 0.7500, 0.2500],
                [0.0000, 0.0000, 1.0000]])
    """
    _check_bins(bins)
    dtype = _compute_dtype(x.dtype if x.is_floating_point() else torch.get_default_dtype())
    bins = bins.to(device=x.device, dtype=dtype)
    x = x.to(dtype).clamp(bins[0], bins[-1])
    # index of the bin at or below x, kept one short of the end so that k + 1 exists
    lower = (torch.searchsorted(bins, x.contiguous(), right=True) - 1).clamp(0, bins.numel() - 2)
    lo, hi = bins[lower], bins[lower + 1]
    w_hi = (x - lo) / (hi - lo)
    code = torch.zeros(*x.shape, bins.numel(), device=x.device, dtype=dtype)
    code.scatter_(-1, lower.unsqueeze(-1), (1 - w_hi).unsqueeze(-1))
    code.scatter_(-1, (lower + 1).unsqueeze(-1), w_hi.unsqueeze(-1))
    return code


def two_hot_decode(logits: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Expected raw value ``sum_i softmax(logits)_i * bins_i``, the bin dimension removed.

    Mirrored bins are paired through their probability difference (see the module docstring),
    so equal logits decode to exactly 0 on an antisymmetric support. Float32 at least.

    Examples:
        >>> import torch
        >>> bins = symexp_bins(255)
        >>> two_hot_decode(torch.zeros(2, 255), bins)
        tensor([0., 0.])
        >>> code = two_hot_encode(torch.tensor([3.0]), bins)
        >>> round(two_hot_decode((code + 1e-12).log(), bins).item(), 4)
        3.0
    """
    _check_bins(bins)
    if logits.shape[-1] != bins.numel():
        raise ValueError(
            f"logits must end with the number of bins ({bins.numel()}), got shape {tuple(logits.shape)}."
        )
    dtype = _compute_dtype(logits.dtype)
    bins = bins.to(device=logits.device, dtype=dtype)
    probs = torch.softmax(logits.to(dtype), dim=-1)
    n, half = bins.numel(), bins.numel() // 2
    p_lo, b_lo = probs[..., :half].flip(-1), bins[:half].flip(-1)  # mirrored pairs, innermost first
    p_hi, b_hi = probs[..., n - half:], bins[n - half:]
    # p_hi b_hi + p_lo b_lo = (p_hi - p_lo) b_hi + p_lo (b_hi + b_lo); the last factor is 0 for mirrored bins
    value = ((p_hi - p_lo) * b_hi + p_lo * (b_hi + b_lo)).sum(-1)
    if n % 2:
        value = value + probs[..., half] * bins[half]
    return value


def two_hot_cross_entropy(logits: torch.Tensor, target: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """``-sum_i two_hot(target)_i * log_softmax(logits)_i``: one loss per scalar, bin dim removed.

    ``target`` has the shape of ``logits`` without its last dim, optionally with a trailing 1.
    Float32 at least.

    Examples:
        >>> import torch
        >>> two_hot_cross_entropy(torch.zeros(2, 3), torch.tensor([-0.5, 0.5]), torch.tensor([-1.0, 0.0, 1.0]))
        tensor([1.0986, 1.0986])
    """
    if target.shape == (*logits.shape[:-1], 1):
        target = target.squeeze(-1)
    if target.shape != logits.shape[:-1]:
        raise ValueError(
            f"target must have shape {tuple(logits.shape[:-1])} or {(*logits.shape[:-1], 1)} "
            f"(logits without the bin dim), got {tuple(target.shape)}."
        )
    if logits.shape[-1] != bins.numel():
        raise ValueError(
            f"logits must end with the number of bins ({bins.numel()}), got shape {tuple(logits.shape)}."
        )
    log_probs = torch.log_softmax(logits.to(_compute_dtype(logits.dtype)), dim=-1)
    return -(two_hot_encode(target, bins) * log_probs).sum(-1)


class SymExpTwoHot(nn.Module):
    """DreamerV3's two-hot scalar code over ``symexp``-spaced bins (drop-in for TorchRL's).

    Holds the support as the buffer ``bins`` (same state-dict key as TorchRL's module).
    ``forward(logits)`` decodes to ``[..., 1]``; :meth:`encode`, :meth:`decode` and
    :meth:`loss` are the functions of this module bound to its bins.

    Args:
        num_bins: number of support points (DreamerV3: 255), at least 2.

    Examples:
        >>> import torch
        >>> two_hot = SymExpTwoHot(255)
        >>> two_hot(torch.zeros(4, 255)).squeeze(-1)  # a zero-initialised head predicts 0
        tensor([0., 0., 0., 0.])
        >>> target = torch.tensor([-10.0, 0.0, 10.0])
        >>> torch.allclose(two_hot.decode(two_hot.encode(target).log()), target, atol=1e-3)
        True
    """

    def __init__(self, num_bins: int = DEFAULT_NUM_BINS):
        super().__init__()
        self.num_bins = num_bins
        self.register_buffer("bins", symexp_bins(num_bins))

    def encode(self, target: torch.Tensor) -> torch.Tensor:
        """Two-hot code of raw targets, ``[*target.shape, num_bins]``."""
        return two_hot_encode(target, self.bins)

    def decode(self, logits: torch.Tensor) -> torch.Tensor:
        """Expected raw value of ``[..., num_bins]`` logits, ``[...]``."""
        return two_hot_decode(logits, self.bins)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Two-hot cross entropy against raw targets, ``[...]``."""
        return two_hot_cross_entropy(logits, target, self.bins)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """Decoded value with a trailing event dim, ``[..., 1]``."""
        return self.decode(logits).unsqueeze(-1)

    def extra_repr(self) -> str:
        return f"num_bins={self.num_bins}"
