"""Observation encoders: PlaNet's 64x64 conv stack and an MLP for vector observations.

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


def _flatten_batch(x: torch.Tensor, event_dims: int) -> tuple[torch.Tensor, torch.Size]:
    batch = x.shape[: x.ndim - event_dims]
    return x.reshape(-1, *x.shape[x.ndim - event_dims :]), batch


class ConvEncoder(nn.Module):
    """PlaNet's convolutional observation encoder (4 convs, kernel 4, stride 2, ReLU).

    For 64x64 images with the defaults the output is a ``256 * 2 * 2 = 1024``
    dimensional embedding. The constructor accepts the arguments of TorchRL's
    :class:`~torchrl.modules.ObsEncoder` so that changing the import is enough,
    and its parameters have the same names (TorchRL state dicts load into it).

    Args:
        channels: channels of the first conv; each further layer doubles them.
        num_layers: number of conv layers.
        in_channels: image channels; ``None`` infers them lazily (as TorchRL does).
        depth: deprecated alias of ``channels`` (TorchRL compatibility).
        device: where to create the parameters.

    Pixels stored as ``uint8`` are converted with :func:`pixels_to_model`.

    Examples:
        >>> import torch
        >>> enc = ConvEncoder(in_channels=3)
        >>> enc(torch.zeros(2, 5, 3, 64, 64)).shape
        torch.Size([2, 5, 1024])
    """

    def __init__(
        self,
        channels: int = 32,
        num_layers: int = 4,
        in_channels: int | None = 3,
        depth: int | None = None,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        if depth is not None:
            channels = depth
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}.")
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
