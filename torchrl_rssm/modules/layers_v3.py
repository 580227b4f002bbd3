"""DreamerV3's layers and networks: RMSNorm, block-linear, the reference initialisation,
:class:`DreamerV3MLP`, the image encoder and decoder, and a symlog vector encoder.

Every class keeps TorchRL's constructor arguments and parameter names (TorchRL state dicts
load) and takes any number of leading batch dimensions.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .two_hot import symlog

__all__ = ["DreamerV3ImageDecoder", "DreamerV3ImageEncoder", "DreamerV3MLP", "DreamerV3VectorEncoder"]


def dreamer_v3_init(module: nn.Module) -> None:
    """DreamerV3's init for ``nn.Linear``: truncated normal, std ``1.1368 / sqrt(fan_in)`` within 2 std, zero bias.

    (1.1368 is the std correction of a normal truncated at 2 std, so the weights have
    variance ``1 / fan_in``.) Other modules are left alone, so it can be ``.apply``-ed.
    """
    if isinstance(module, nn.Linear) and not isinstance(module, nn.LazyLinear):
        std = 1.1368 / module.in_features ** 0.5
        nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class RMSNorm(nn.RMSNorm):
    """``torch.nn.RMSNorm`` (learned scale ``weight``, no shift) computed in float32.

    Low-precision activations are normalised in float32 and cast back: the mean of squares
    loses too many bits in bf16.
    """

    def __init__(self, features: int, eps: float = 1e-4, device: torch.device | str | None = None):
        super().__init__(features, eps=eps, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), self.normalized_shape, self.weight.float(), self.eps).to(x.dtype)


class BlockLinear(nn.Module):
    """``num_blocks`` independent linear maps on equal slices of the features (a block-diagonal matrix).

    ``weight`` is ``[num_blocks, in_features / num_blocks, out_features / num_blocks]`` and
    ``bias`` is ``[out_features]`` (TorchRL's layout); the init's fan-in is the whole
    ``in_features`` (the reference implementation's), not one block's.
    """

    def __init__(self, in_features: int, out_features: int, num_blocks: int, *,
                 device: torch.device | str | None = None):
        super().__init__()
        if num_blocks < 1 or in_features % num_blocks or out_features % num_blocks:
            raise ValueError(
                f"BlockLinear: in_features ({in_features}) and out_features ({out_features}) must be "
                f"divisible by num_blocks ({num_blocks})."
            )
        self.in_features, self.out_features, self.num_blocks = in_features, out_features, num_blocks
        self.weight = nn.Parameter(torch.empty(num_blocks, in_features // num_blocks, out_features // num_blocks,
                                               device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device))
        std = 1.1368 / in_features ** 0.5
        nn.init.trunc_normal_(self.weight, std=std, a=-2 * std, b=2 * std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unflatten(-1, (self.num_blocks, self.in_features // self.num_blocks))
        return torch.einsum("...gi,gio->...go", x, self.weight.to(x.dtype)).flatten(-2) + self.bias.to(x.dtype)


def norm_silu_layers(in_features: int, width: int, depth: int, norm_eps: float,
                     device: torch.device | str | None = None) -> list[nn.Module]:
    """``depth`` x (Linear, RMSNorm, SiLU), the hidden stack of every DreamerV3 network."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(in_features, width, device=device), RMSNorm(width, norm_eps, device), nn.SiLU()]
        in_features = width
    return layers


class DreamerV3MLP(nn.Module):
    """DreamerV3's MLP: ``depth`` x (Linear, RMSNorm, SiLU), then a linear output (drop-in for TorchRL's).

    Several inputs are concatenated on the last dim. The output layer's weights are
    multiplied by ``outscale`` after the init (0 gives a head that starts at exactly 0).

    Args:
        in_features: total input size.
        out_features: output size; ``None`` returns the last hidden activation.
        depth: number of hidden layers.
        num_cells: width of the hidden layers.
        outscale: scale of the output layer's initial weights.
        norm_eps: RMSNorm epsilon.
        device: where to create the parameters.

    Examples:
        >>> import torch
        >>> mlp = DreamerV3MLP(6, 4, depth=2, num_cells=8, outscale=0.0)
        >>> mlp(torch.randn(5, 3, 2), torch.randn(5, 3, 4)).shape
        torch.Size([5, 3, 4])
        >>> bool((mlp(torch.randn(3, 6)) == 0).all())
        True
    """

    def __init__(self, in_features: int, out_features: int | None, depth: int = 3, num_cells: int = 1024,
                 outscale: float = 1.0, norm_eps: float = 1e-4, device: torch.device | str | None = None):
        super().__init__()
        layers = norm_silu_layers(in_features, num_cells, depth, norm_eps, device)
        width = num_cells if depth > 0 else in_features
        output = None
        if out_features is not None:
            output = nn.Linear(width, out_features, device=device)
            layers.append(output)
        self.model = nn.Sequential(*layers)
        self.model.apply(dreamer_v3_init)
        if output is not None:
            with torch.no_grad():
                output.weight.mul_(outscale)
        self.in_features, self.out_features = in_features, out_features

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        x = inputs[0] if len(inputs) == 1 else torch.cat(inputs, -1)
        return self.model(x)


class DreamerV3VectorEncoder(nn.Module):
    """DreamerV3's encoder for vector observations: ``symlog`` then ``depth`` x (Linear, RMSNorm, SiLU).

    symlog squashes observations of any scale (``sign(x) log(1 + |x|)``), so one set of
    hyperparameters fits every task. The output is the last hidden activation,
    ``[*B, num_cells]``.

    Args:
        in_features: observation size.
        depth: number of layers.
        num_cells: width (and output size).
        norm_eps: RMSNorm epsilon.
        device: where to create the parameters.

    Examples:
        >>> import torch
        >>> enc = DreamerV3VectorEncoder(5, depth=2, num_cells=16)
        >>> enc(torch.randn(4, 10, 5)).shape
        torch.Size([4, 10, 16])
    """

    def __init__(self, in_features: int, depth: int = 3, num_cells: int = 1024, norm_eps: float = 1e-4,
                 device: torch.device | str | None = None):
        super().__init__()
        if depth < 1:
            raise ValueError(f"DreamerV3VectorEncoder: depth must be at least 1, got {depth}.")
        self.mlp = DreamerV3MLP(in_features, None, depth, num_cells, norm_eps=norm_eps, device=device)
        self.out_features = num_cells

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        return self.mlp(symlog(observation.float() if not observation.is_floating_point() else observation))


def dreamer_v3_conv_init(module: nn.Module) -> None:
    """:func:`dreamer_v3_init` for convolutions (fan-in ``C_in * kh * kw``)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
        std = 1.1368 / fan_in ** 0.5
        nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class ChannelRMSNorm(RMSNorm):
    """:class:`RMSNorm` over the channels of ``[N, C, H, W]`` feature maps."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.movedim(-3, -1)).movedim(-1, -3)


def _check_conv_args(who: str, kernel_size: int, mults) -> None:
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"{who}: kernel_size must be a positive odd int, got {kernel_size!r}.")
    if len(mults) == 0:
        raise ValueError(f"{who}: mults must name at least one stage, got {mults!r}.")


class DreamerV3ImageEncoder(nn.Module):
    """DreamerV3's image encoder (drop-in for TorchRL's): stride-2 convs, each with channel RMSNorm and SiLU.

    Stage ``i`` outputs ``depth * mults[i]`` channels and halves the resolution (rounding
    up). ``uint8`` images (0..255) and float images in ``[0, 1]`` are both mapped to
    ``[-0.5, 0.5]``. Input ``[*B, C, H, W]``, output the flattened features
    ``[*B, output_features((C, H, W))]``.

    Args:
        in_channels: image channels.
        depth: base channel count.
        mults: channel multiplier per stage.
        kernel_size: odd kernel size.
        norm_eps: RMSNorm epsilon.
        device: where to create the parameters.

    Examples:
        >>> import torch
        >>> enc = DreamerV3ImageEncoder(depth=8, mults=(1, 2))
        >>> enc(torch.randint(0, 256, (2, 5, 3, 16, 16), dtype=torch.uint8)).shape
        torch.Size([2, 5, 256])
        >>> enc.output_features((3, 16, 16))
        256
    """

    def __init__(self, in_channels: int = 3, depth: int = 64, mults: tuple[int, ...] = (2, 3, 4, 4),
                 kernel_size: int = 5, norm_eps: float = 1e-4, device: torch.device | str | None = None):
        super().__init__()
        _check_conv_args("DreamerV3ImageEncoder", kernel_size, mults)
        layers: list[nn.Module] = []
        channels = in_channels
        for mult in mults:
            layers += [nn.Conv2d(channels, depth * mult, kernel_size, stride=2, padding=kernel_size // 2, device=device),
                       ChannelRMSNorm(depth * mult, norm_eps, device), nn.SiLU()]
            channels = depth * mult
        self.layers = nn.Sequential(*layers)
        self.layers.apply(dreamer_v3_conv_init)
        self.out_channels, self.num_stages = channels, len(mults)

    def output_features(self, image_shape: tuple[int, int, int]) -> int:
        """Size of the flattened output for a ``(C, H, W)`` image."""
        _, height, width = image_shape
        for _ in range(self.num_stages):
            height, width = -(-height // 2), -(-width // 2)
        return self.out_channels * height * width

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.ndim < 3:
            raise ValueError(f"DreamerV3ImageEncoder: image must be [*B, C, H, W], got shape {tuple(image.shape)}.")
        x = image.float() / 255.0 if not image.is_floating_point() else image
        batch = x.shape[:-3]
        features = self.layers(x.reshape(-1, *x.shape[-3:]) - 0.5)
        return features.reshape(*batch, -1)


class DreamerV3ImageDecoder(nn.Module):
    """DreamerV3's image decoder (drop-in for TorchRL's): a (block-)linear map to the smallest
    feature map, then stride-2 transposed convs with channel RMSNorm and SiLU; the last one
    outputs the image channels shifted by ``0.5`` (targets are ``pixels / 255``).

    Inputs are concatenated on the last dim; ``[*B, in_features] -> [*B, C, H, W]``.
    The output is unbounded, as TorchRL's.

    Args:
        in_features: latent size (state + belief).
        image_shape: ``(C, H, W)``; H and W divisible by ``2 ** len(mults)``.
        depth, mults, kernel_size: mirror the encoder.
        num_blocks: blocks of the input projection (1: a dense ``nn.Linear``).
        norm_eps: RMSNorm epsilon.
        device: where to create the parameters.

    Examples:
        >>> import torch
        >>> dec = DreamerV3ImageDecoder(12, image_shape=(3, 16, 16), depth=8, mults=(1, 2), num_blocks=2)
        >>> dec(torch.randn(2, 5, 8), torch.randn(2, 5, 4)).shape
        torch.Size([2, 5, 3, 16, 16])
    """

    def __init__(self, in_features: int, image_shape: tuple[int, int, int] = (3, 64, 64), depth: int = 64,
                 mults: tuple[int, ...] = (2, 3, 4, 4), kernel_size: int = 5, num_blocks: int = 8,
                 norm_eps: float = 1e-4, device: torch.device | str | None = None):
        super().__init__()
        _check_conv_args("DreamerV3ImageDecoder", kernel_size, mults)
        channels, height, width = image_shape
        factor = 2 ** len(mults)
        if height % factor or width % factor:
            raise ValueError(
                f"DreamerV3ImageDecoder: image_shape {tuple(image_shape)} must have H and W divisible by "
                f"2 ** len(mults) = {factor}."
            )
        self.initial_shape = (depth * mults[-1], height // factor, width // factor)
        size = math.prod(self.initial_shape)
        if num_blocks > 1:
            self.projection = BlockLinear(in_features, size, num_blocks, device=device)
        else:
            self.projection = nn.Linear(in_features, size, device=device)
            dreamer_v3_init(self.projection)
        self.projection_norm = ChannelRMSNorm(self.initial_shape[0], norm_eps, device)
        layers: list[nn.Module] = []
        in_ch = self.initial_shape[0]
        for stage in reversed(range(len(mults))):
            out_ch = channels if stage == 0 else depth * mults[stage - 1]
            layers.append(nn.ConvTranspose2d(in_ch, out_ch, kernel_size, stride=2, padding=kernel_size // 2,
                                             output_padding=1, device=device))
            if stage:
                layers += [ChannelRMSNorm(out_ch, norm_eps, device), nn.SiLU()]
            in_ch = out_ch
        self.layers = nn.Sequential(*layers)
        self.layers.apply(dreamer_v3_conv_init)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        x = inputs[0] if len(inputs) == 1 else torch.cat(inputs, -1)
        batch = x.shape[:-1]
        hidden = self.projection(x.reshape(-1, x.shape[-1])).reshape(-1, *self.initial_shape)
        image = self.layers(F.silu(self.projection_norm(hidden))) + 0.5
        return image.reshape(*batch, *image.shape[-3:])
