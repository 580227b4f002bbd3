"""Pixel transforms for PlaNet-style image observations.

* :class:`BitDepth` (environment side) reduces ``uint8`` pixels to ``bits`` bits
  *on their own grid*: ``x -> floor(x / 2**(8 - bits)) * 2**(8 - bits)``. The
  output stays ``uint8`` (cheap storage), and the model's conversion
  :func:`~torchrl_rssm.modules.pixels_to_model` (``x / 256 - 0.5``) then gives
  exactly PlaNet's values ``floor(x / 2**(8 - bits)) / 2**bits - 0.5``.
* :class:`Dequantize` (replay-buffer side, on sampling) maps ``uint8`` pixels to
  floats in ``[-0.5, 0.5)`` and adds PlaNet's dequantisation noise
  ``U(0, 1 / 2**bits)``, so the model trains on dequantised values while the
  storage keeps ``uint8``.
* :class:`ResizePixels` resizes ``uint8`` images with
  :func:`torch.nn.functional.interpolate` (TorchRL's ``Resize`` needs
  torchvision), and turns channels-last images channels-first.
* :class:`GrayScalePixels` maps ``uint8`` RGB ``[*B, 3, H, W]`` to one-channel
  ``uint8`` ``[*B, 1, H, W]`` (TorchRL's ``GrayScale`` needs torchvision).

All four accept any number of leading batch dimensions.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torchrl.data import Bounded, TensorSpec
from torchrl.envs.transforms import Transform

__all__ = ["BitDepth", "Dequantize", "GrayScalePixels", "ResizePixels"]

# Largest float32 strictly below 0.5: Dequantize clamps to it, because
# q / 2**b - 0.5 + u / 2**b with u close to 1 rounds up to 0.5 in float32.
_BELOW_HALF = float(torch.nextafter(torch.tensor(0.5), torch.tensor(0.0)))


def _check_bits(bits: int, who: str) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"{who}: bits must be an int in [1, 8], got {bits!r}.")
    return bits


def _as_key_list(keys: NestedKey | Sequence[NestedKey] | None, default: Sequence[NestedKey]) -> list[NestedKey]:
    if keys is None:
        return list(default)
    if isinstance(keys, (str, tuple)):
        # a single key: "pixels" or ("next", "pixels")
        if isinstance(keys, str) or all(isinstance(k, str) for k in keys):
            return [keys]
    return list(keys)


class _PixelTransform(Transform):
    """Shared plumbing: apply on reset too, and rewrite the spec of each present in_key."""

    def _reset(self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase) -> TensorDictBase:
        return self._call(tensordict_reset)

    def _out_spec(self, in_key: NestedKey, spec: TensorSpec) -> TensorSpec:
        raise NotImplementedError

    def transform_observation_spec(self, observation_spec: TensorSpec) -> TensorSpec:
        for in_key, out_key in zip(self.in_keys, self.out_keys):
            if in_key in observation_spec.keys(True, True):
                observation_spec[out_key] = self._out_spec(in_key, observation_spec[in_key])
        return observation_spec


class BitDepth(_PixelTransform):
    """Reduces ``uint8`` pixels to ``bits`` bits, keeping ``uint8`` and the 0..255 scale.

    ``x -> floor(x / 2**(8 - bits)) * 2**(8 - bits)`` (a bit mask). The result is
    exact on its own grid: applying it twice changes nothing, and grid values
    (multiples of ``2**(8 - bits)``) pass unchanged. Works on any layout
    (``[*B, 3, H, W]`` or ``[*B, H, W, 3]``) since it acts element-wise.

    Args:
        bits: bits kept per channel (PlaNet: 5). ``8`` is the identity.
        in_keys: pixel entries to quantise (default ``["pixels"]``).
        out_keys: where to write them (default: in place).

    The observation spec of each key becomes a ``uint8`` ``Bounded`` spec with
    ``low=0`` and ``high=256 - 2**(8 - bits)`` (the largest grid value).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> t = BitDepth(5)
        >>> x = torch.tensor([0, 7, 8, 100, 255], dtype=torch.uint8)
        >>> t(TensorDict(pixels=x))["pixels"]
        tensor([  0,   0,   8,  96, 248], dtype=torch.uint8)
        >>> (t._apply_transform(t._apply_transform(x)) == t._apply_transform(x)).all()
        tensor(True)
    """

    def __init__(
        self,
        bits: int = 5,
        in_keys: NestedKey | Sequence[NestedKey] | None = None,
        out_keys: NestedKey | Sequence[NestedKey] | None = None,
    ):
        self.bits = _check_bits(bits, "BitDepth")
        in_keys = _as_key_list(in_keys, ["pixels"])
        out_keys = _as_key_list(out_keys, in_keys)
        if len(out_keys) != len(in_keys):
            raise ValueError(f"BitDepth: in_keys and out_keys must have the same length, got {in_keys} and {out_keys}.")
        super().__init__(in_keys=in_keys, out_keys=out_keys)
        self.step = 2 ** (8 - self.bits)
        self._mask = (0xFF << (8 - self.bits)) & 0xFF

    def _apply_transform(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.dtype != torch.uint8:
            raise TypeError(
                f"BitDepth: pixels must be uint8 (0..255), got dtype {pixels.dtype}. "
                "Apply BitDepth before any float conversion (e.g. before ToTensorImage)."
            )
        if self.bits == 8:
            return pixels
        return pixels & self._mask

    def _out_spec(self, in_key: NestedKey, spec: TensorSpec) -> TensorSpec:
        if spec.dtype != torch.uint8:
            raise TypeError(f"BitDepth: the spec of {in_key!r} must have dtype uint8, got {spec.dtype}.")
        return Bounded(low=0, high=256 - self.step, shape=spec.shape, dtype=torch.uint8, device=spec.device)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(bits={self.bits}, in_keys={self.in_keys}, out_keys={self.out_keys})"


def dequantize(pixels: torch.Tensor, bits: int = 5, noise: bool = True) -> torch.Tensor:
    """PlaNet's pixel preprocessing: uint8 -> ``floor(x / 2^(8-bits)) / 2^bits - 0.5 (+ U(0, 2^-bits))``.

    Floats are returned unchanged (already in the model's range). The same function serves
    the replay buffer (:class:`Dequantize`) and the acting policy, so that the model sees
    identically distributed inputs while training and while acting.

    Examples:
        >>> import torch
        >>> dequantize(torch.tensor([0, 8, 255], dtype=torch.uint8), bits=5, noise=False)
        tensor([-0.5000, -0.4688,  0.4688])
    """
    if pixels.is_floating_point():
        return pixels
    if pixels.dtype != torch.uint8:
        raise TypeError(f"dequantize: pixels must be uint8 (or already float), got dtype {pixels.dtype}.")
    scale = 2.0 ** -bits
    grid = torch.bitwise_right_shift(pixels, 8 - bits)
    if not noise:
        return grid.to(torch.float32).mul_(scale).sub_(0.5)
    # in place on the noise buffer: one float allocation per call
    out = torch.rand(pixels.shape, device=pixels.device, dtype=torch.float32)
    return out.add_(grid).mul_(scale).sub_(0.5).clamp_max_(_BELOW_HALF)


class Dequantize(_PixelTransform):
    """Maps ``uint8`` pixels to PlaNet's dequantised floats in ``[-0.5, 0.5)``.

    ``y = floor(x / 2**(8 - bits)) / 2**bits - 0.5 + u / 2**bits`` with
    ``u ~ U(0, 1)`` drawn independently per element (``noise=True``). For pixels
    already on the ``bits`` grid (see :class:`BitDepth`) the noise-free part equals
    :func:`~torchrl_rssm.modules.pixels_to_model`; ``floor((y + 0.5) * 2**bits)``
    recovers the grid index. Floating-point inputs are assumed to be converted
    already and pass unchanged (so applying the transform twice is harmless).
    Missing keys are skipped, so one instance serves data with and without
    ``("next", "pixels")``.

    Meant for replay-buffer sampling (``rb.append_transform(Dequantize())``): the
    storage keeps ``uint8`` and each sample gets fresh noise. It also works inside
    an environment (its spec becomes float32 in ``[-0.5, 0.5]``).

    Args:
        bits: bit depth of the stored pixels (PlaNet: 5).
        in_keys: entries to convert (default ``["pixels", ("next", "pixels")]``).
        out_keys: where to write them (default: in place).
        noise: add the uniform dequantisation noise (``False`` gives the grid
            values ``floor(x / 2**(8-bits)) / 2**bits - 0.5``).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> x = torch.full((2, 3, 64, 64), 248, dtype=torch.uint8)
        >>> y = Dequantize(5)(TensorDict(pixels=x, batch_size=[2]))["pixels"]
        >>> y.dtype, bool((y >= 0.46875).all() and (y < 0.5).all())
        (torch.float32, True)
    """

    def __init__(
        self,
        bits: int = 5,
        in_keys: NestedKey | Sequence[NestedKey] | None = None,
        out_keys: NestedKey | Sequence[NestedKey] | None = None,
        noise: bool = True,
    ):
        self.bits = _check_bits(bits, "Dequantize")
        in_keys = _as_key_list(in_keys, ["pixels", ("next", "pixels")])
        out_keys = _as_key_list(out_keys, in_keys)
        if len(out_keys) != len(in_keys):
            raise ValueError(f"Dequantize: in_keys and out_keys must have the same length, got {in_keys} and {out_keys}.")
        super().__init__(in_keys=in_keys, out_keys=out_keys)
        self.noise = bool(noise)
        self.set_missing_tolerance(True)

    def _apply_transform(self, pixels: torch.Tensor) -> torch.Tensor:
        return dequantize(pixels, self.bits, noise=self.noise)

    def _out_spec(self, in_key: NestedKey, spec: TensorSpec) -> TensorSpec:
        return Bounded(low=-0.5, high=0.5, shape=spec.shape, dtype=torch.float32, device=spec.device)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(bits={self.bits}, noise={self.noise}, in_keys={self.in_keys})"


class ResizePixels(_PixelTransform):
    """Resizes ``uint8`` images to ``size`` with :func:`torch.nn.functional.interpolate`.

    Input ``[*B, C, H, W]`` (``channels_last=False``) or ``[*B, H, W, C]``
    (``channels_last=True``, e.g. a Gymnasium ``render()`` frame); output is always
    channels-first ``uint8`` ``[*B, C, size[0], size[1]]``. Uses bilinear
    interpolation with antialiasing, rounded back to ``uint8``.

    Args:
        size: output ``(height, width)`` or one int for a square.
        in_keys: image entries (default ``["pixels"]``).
        out_keys: where to write them (default: in place).
        channels_last: whether the input is ``[..., H, W, C]``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> img = torch.randint(0, 256, (500, 600, 3), dtype=torch.uint8)
        >>> out = ResizePixels(64, channels_last=True)(TensorDict(pixels=img))["pixels"]
        >>> out.shape, out.dtype
        (torch.Size([3, 64, 64]), torch.uint8)
    """

    def __init__(
        self,
        size: int | tuple[int, int] = 64,
        in_keys: NestedKey | Sequence[NestedKey] | None = None,
        out_keys: NestedKey | Sequence[NestedKey] | None = None,
        channels_last: bool = False,
    ):
        if isinstance(size, int):
            size = (size, size)
        size = tuple(int(s) for s in size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"ResizePixels: size must be a positive int or (height, width), got {size!r}.")
        in_keys = _as_key_list(in_keys, ["pixels"])
        out_keys = _as_key_list(out_keys, in_keys)
        super().__init__(in_keys=in_keys, out_keys=out_keys)
        self.size = size
        self.channels_last = bool(channels_last)

    def _apply_transform(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = torch.as_tensor(pixels)
        if pixels.ndim < 3:
            raise ValueError(f"ResizePixels: images must have at least 3 dims, got shape {tuple(pixels.shape)}.")
        if self.channels_last:
            pixels = pixels.movedim(-1, -3)
        if tuple(pixels.shape[-2:]) == self.size:
            return pixels.to(torch.uint8).contiguous()
        batch = pixels.shape[:-3]
        flat = pixels.reshape(-1, *pixels.shape[-3:]).float()
        out = F.interpolate(flat, size=self.size, mode="bilinear", antialias=True, align_corners=False)
        out = out.round_().clamp_(0, 255).to(torch.uint8)
        return out.reshape(*batch, *out.shape[-3:])

    def _out_spec(self, in_key: NestedKey, spec: TensorSpec) -> TensorSpec:
        shape = tuple(spec.shape)
        channels = shape[-1] if self.channels_last else shape[-3]
        return Bounded(low=0, high=255, shape=(*shape[:-3], channels, *self.size), dtype=torch.uint8,
                       device=spec.device)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, channels_last={self.channels_last}, in_keys={self.in_keys})"


class GrayScalePixels(_PixelTransform):
    """Converts ``uint8`` RGB images ``[*B, 3, H, W]`` to grayscale ``uint8`` ``[*B, 1, H, W]``.

    Luma with ITU-R BT.601 weights, as torchvision's ``rgb_to_grayscale`` (which
    TorchRL's ``GrayScale`` calls): ``0.2989 R + 0.587 G + 0.114 B``, rounded to
    the nearest integer. One-channel input passes unchanged. Channels-first
    input: put it after :class:`ResizePixels` for channels-last frames.

    Args:
        in_keys: image entries (default ``["pixels"]``).
        out_keys: where to write them (default: in place).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> img = torch.tensor([255, 0, 0], dtype=torch.uint8).view(3, 1, 1).expand(3, 2, 2)
        >>> GrayScalePixels()(TensorDict(pixels=img))["pixels"]
        tensor([[[76, 76],
                 [76, 76]]], dtype=torch.uint8)
    """

    WEIGHTS = (0.2989, 0.587, 0.114)

    def __init__(
        self,
        in_keys: NestedKey | Sequence[NestedKey] | None = None,
        out_keys: NestedKey | Sequence[NestedKey] | None = None,
    ):
        in_keys = _as_key_list(in_keys, ["pixels"])
        out_keys = _as_key_list(out_keys, in_keys)
        if len(out_keys) != len(in_keys):
            raise ValueError(
                f"GrayScalePixels: in_keys and out_keys must have the same length, got {in_keys} and {out_keys}."
            )
        super().__init__(in_keys=in_keys, out_keys=out_keys)

    @staticmethod
    def _check(shape: Sequence[int], dtype: torch.dtype, what: str) -> None:
        if dtype != torch.uint8 or len(shape) < 3 or shape[-3] not in (1, 3):
            raise ValueError(
                f"GrayScalePixels: {what} must be uint8 channels-first [*B, 3, H, W] (or [*B, 1, H, W]), "
                f"got shape {tuple(shape)} and dtype {dtype}."
            )

    def _apply_transform(self, pixels: torch.Tensor) -> torch.Tensor:
        self._check(pixels.shape, pixels.dtype, "pixels")
        if pixels.shape[-3] == 1:
            return pixels
        w = torch.tensor(self.WEIGHTS, dtype=torch.float32, device=pixels.device).view(3, 1, 1)
        gray = (pixels.to(torch.float32) * w).sum(-3, keepdim=True)
        return gray.round_().clamp_(0, 255).to(torch.uint8)

    def _out_spec(self, in_key: NestedKey, spec: TensorSpec) -> TensorSpec:
        self._check(spec.shape, spec.dtype, f"the spec of {in_key!r}")
        shape = (*spec.shape[:-3], 1, *spec.shape[-2:])
        return Bounded(low=0, high=255, shape=shape, dtype=torch.uint8, device=spec.device)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(in_keys={self.in_keys}, out_keys={self.out_keys})"
