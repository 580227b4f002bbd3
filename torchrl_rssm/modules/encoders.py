"""Observation encoders: PlaNet's conv stack (64x64 and other sizes) and an MLP for vector observations.

Both accept any number of leading batch dimensions (``[*B, C, H, W]`` / ``[*B, obs_dim]``).
"""
from __future__ import annotations

import torch
from torch import nn

from ._mlp import mlp


def pixels_to_model(pixels: torch.Tensor) -> torch.Tensor:
    """Maps stored pixels to the model's range.

    ``uint8`` pixels (storage format, 0..255) become floats in ``[-0.5, 0.5)``;
    floating-point pixels are assumed to be in the model's range already and are
    returned unchanged.

    Examples:
        >>> import torch
        >>> pixels_to_model(torch.tensor([0, 128, 255], dtype=torch.uint8))
        tensor([-0.5000,  0.0000,  0.4961])
    """
    if pixels.dtype == torch.uint8:
        return pixels.float() / 256.0 - 0.5
    return pixels


def _image_hw(image_size, who: str, arg: str = "image_size") -> tuple[int, int]:
    """``int`` or ``(height, width)`` -> ``(height, width)`` of positive ints, or a ValueError naming ``arg``."""
    try:
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    except TypeError:
        size = ()
    if len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in size):
        raise ValueError(f"{who}: {arg} must be a positive int or (height, width), got {image_size!r}.")
    return size


def conv_output_size(size: int, num_layers: int = 4) -> int:
    """Side of the feature map after ``num_layers`` convs of kernel 4, stride 2, no padding.

    ``s -> (s - 4) // 2 + 1`` per layer; ``0`` or less means the image is too small.

    Examples:
        >>> conv_output_size(64), conv_output_size(96), conv_output_size(128)
        (2, 4, 6)
    """
    for _ in range(num_layers):
        size = (size - 4) // 2 + 1
    return size


def min_image_size(num_layers: int = 4) -> int:
    """Smallest image side that :class:`ConvEncoder` with ``num_layers`` layers accepts (46 for 4).

    Examples:
        >>> min_image_size(4), min_image_size(1)
        (46, 4)
    """
    size = 1
    for _ in range(num_layers):
        size = 2 * size + 2  # inverse of (s - 4) // 2 + 1 >= size
    return size


def _flatten_batch(x: torch.Tensor, event_dims: int) -> tuple[torch.Tensor, torch.Size]:
    batch = x.shape[: x.ndim - event_dims]
    return x.reshape(-1, *x.shape[x.ndim - event_dims :]), batch


class ConvEncoder(nn.Module):
    """PlaNet's convolutional observation encoder (4 convs, kernel 4, stride 2, ReLU).

    For 64x64 images with the defaults the output is a ``256 * 2 * 2 = 1024``
    dimensional embedding. The constructor accepts the arguments of TorchRL's
    :class:`~torchrl.modules.ObsEncoder` so that changing the import is enough,
    and its parameters have the same names (TorchRL state dicts load into it).

    Other image sizes (any channel count, square or not) go through the same
    stack: the feature map is ``[channels * 2**(num_layers-1), h, w]`` with each
    side ``s -> (s - 4) // 2 + 1`` per layer (:func:`conv_output_size`), flattened,
    so the embedding grows with the image: ``256 * 4 * 4 = 4096`` for 96x96,
    ``256 * 6 * 6 = 9216`` for 128x128 (:meth:`output_dim`). Sides below
    :func:`min_image_size` (46 for 4 layers) leave no feature map and are refused.

    Args:
        channels: channels of the first conv; each further layer doubles them.
        num_layers: number of conv layers.
        in_channels: image channels; ``None`` infers them lazily (as TorchRL does).
        depth: deprecated alias of ``channels`` (TorchRL compatibility).
        device: where to create the parameters.
        image_size: the expected image ``(height, width)`` (or one int for a
            square). ``None`` accepts any size the stack can serve; with a size,
            other inputs are refused and :meth:`output_dim` needs no argument.

    Pixels stored as ``uint8`` are converted with :func:`pixels_to_model`.

    Examples:
        >>> import torch
        >>> enc = ConvEncoder(in_channels=3)
        >>> enc(torch.zeros(2, 5, 3, 64, 64)).shape
        torch.Size([2, 5, 1024])
        >>> gray = ConvEncoder(in_channels=1, image_size=96)
        >>> gray(torch.zeros(4, 1, 96, 96, dtype=torch.uint8)).shape, gray.output_dim()
        (torch.Size([4, 4096]), 4096)
    """

    def __init__(
        self,
        channels: int = 32,
        num_layers: int = 4,
        in_channels: int | None = 3,
        depth: int | None = None,
        device: torch.device | str | None = None,
        *,
        image_size: int | tuple[int, int] | None = None,
    ):
        super().__init__()
        if depth is not None:
            channels = depth
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}.")
        self.num_layers = num_layers
        self.out_channels = channels * 2 ** (num_layers - 1)
        self.image_size = None if image_size is None else self._check_size(_image_hw(image_size, "ConvEncoder"))
        first = (
            nn.Conv2d(in_channels, channels, 4, stride=2, device=device)
            if in_channels is not None
            else nn.LazyConv2d(channels, 4, stride=2, device=device)
        )
        layers: list[nn.Module] = [first, nn.ReLU()]
        width = channels
        for _ in range(1, num_layers):
            layers += [nn.Conv2d(width, width * 2, 4, stride=2, device=device), nn.ReLU()]
            width *= 2
        self.encoder = nn.Sequential(*layers)
        self.in_channels = in_channels

    def _check_size(self, size: tuple[int, int], arg: str = "image_size") -> tuple[int, int]:
        smallest = min_image_size(self.num_layers)
        if min(size) < smallest:
            raise ValueError(
                f"ConvEncoder: {arg}={size} is too small for {self.num_layers} conv layers (kernel 4, stride 2): "
                f"each side must be >= {smallest}. Use larger images (e.g. make_env(image_size=64)) or fewer layers."
            )
        return size

    def output_dim(self, image_size: int | tuple[int, int] | None = None) -> int:
        """Size of the embedding for images of ``image_size`` (default: the encoder's own).

        Examples:
            >>> ConvEncoder().output_dim(64), ConvEncoder().output_dim((96, 128))
            (1024, 6144)
        """
        if image_size is None:
            if self.image_size is None:
                raise ValueError("ConvEncoder.output_dim: give image_size (the encoder was built without one).")
            image_size = self.image_size
        h, w = self._check_size(_image_hw(image_size, "ConvEncoder.output_dim"))
        return self.out_channels * conv_output_size(h, self.num_layers) * conv_output_size(w, self.num_layers)

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        if observation.ndim < 3:
            raise ValueError(
                f"ConvEncoder: observation must have shape [*B, C, H, W], got {tuple(observation.shape)}."
            )
        if self.in_channels is not None and observation.shape[-3] != self.in_channels:
            raise ValueError(
                f"ConvEncoder: observation must have {self.in_channels} channels at dim -3 "
                f"(shape [*B, {self.in_channels}, H, W]), got shape {tuple(observation.shape)}."
            )
        hw = tuple(observation.shape[-2:])
        if self.image_size is not None and hw != self.image_size:
            raise ValueError(
                f"ConvEncoder: observation must have shape [*B, C, {self.image_size[0]}, {self.image_size[1]}] "
                f"(image_size={self.image_size}), got {tuple(observation.shape)}."
            )
        self._check_size(hw, "the observation's (height, width)")
        flat, batch = _flatten_batch(pixels_to_model(observation), 3)
        return self.encoder(flat).reshape(*batch, -1)


class MLPEncoder(nn.Module):
    """MLP encoder for vector observations: ``[*B, obs_dim] -> [*B, embed_dim]``.

    Args:
        obs_dim: size of the observation vector.
        embed_dim: size of the embedding.
        hidden_dim: width of the hidden layers.
        depth: number of hidden layers.
        activation: activation class.
        device: where to create the parameters.

    Examples:
        >>> import torch
        >>> MLPEncoder(5, embed_dim=32)(torch.zeros(4, 7, 5)).shape
        torch.Size([4, 7, 32])
    """

    def __init__(
        self,
        obs_dim: int,
        embed_dim: int = 200,
        hidden_dim: int = 200,
        depth: int = 2,
        activation: type[nn.Module] = nn.ELU,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        self.net = mlp(obs_dim, embed_dim, hidden_dim, depth, activation, device)
        self.obs_dim = obs_dim

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        if observation.shape[-1] != self.obs_dim:
            raise ValueError(
                f"MLPEncoder: observation must have shape [*B, {self.obs_dim}], got {tuple(observation.shape)}."
            )
        return self.net(observation.to(self.net[0].weight.dtype))
