"""Observation decoders p(o_t | h_t, s_t): PlaNet's deconv stack and an MLP.

Both take ``(state, belief)`` with any number of leading batch dimensions and return
the mean of a unit-variance Gaussian over the observation.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._mlp import mlp
from .encoders import _image_hw


def deconv_output_size(kernel_sizes: Sequence[int], stride: int = 2) -> int:
    """Side of the image the transposed-conv stack makes from a 1x1 input: ``s -> (s - 1) * stride + k``.

    Examples:
        >>> deconv_output_size([5, 5, 6, 6])
        64
    """
    size = 1
    for k in kernel_sizes:
        size = (size - 1) * stride + k
    return size


class ConvDecoder(nn.Module):
    """PlaNet's deconvolutional decoder: linear to 1024, 4 transposed convs (k 5,5,6,6, s 2).

    Takes the stochastic ``state`` and the deterministic ``belief`` and returns an
    image mean ``[*B, out_channels, H, W]`` in the model's pixel range. The
    constructor accepts the arguments of TorchRL's :class:`~torchrl.modules.ObsDecoder`
    (same defaults: ``latent_dim=None`` infers the input size on the first call)
    and uses the same parameter names, so TorchRL state dicts load into it.

    As in PlaNet (``VisualObservationModel``: "No nonlinearity here") the linear
    layer ``state_to_latent`` has no activation: its output, reshaped to
    ``[1024, 1, 1]``, goes straight into the first transposed conv. (TorchRL's
    ``ObsDecoder`` puts a ReLU there.)

    **Image sizes.** The stack makes its native size from the 1x1 input
    (:func:`deconv_output_size`: 64 for PlaNet's kernels). With ``image_size=None``
    or the native size the output is exactly PlaNet's. For any other
    ``image_size`` (square or not) the native output is resized to it with
    bilinear :func:`torch.nn.functional.interpolate` (antialiased when shrinking).
    This keeps the parameters (names and shapes) independent of the image size
    and the cost constant; the reconstruction then has the native resolution's
    detail. For a decoder native to another size choose ``kernel_sizes``
    (e.g. ``[9, 5, 6, 6]`` makes 96x96, at about 3x the first layer's weights).

    Args:
        channels: channels of the last hidden deconv (the first has ``channels * 4``).
        num_layers: number of transposed convs.
        kernel_sizes: kernel size of each layer; ``[5, 5, 6, 6]`` for 4 layers, else 5.
        latent_dim: ``state_dim + belief_dim``; ``None`` (default, as TorchRL)
            infers it on the first call (``LazyLinear``).
        out_channels: image channels (1 for grayscale).
        depth: deprecated alias of ``channels``.
        device: where to create the parameters.
        image_size: output ``(height, width)`` or one int for a square; ``None``
            gives the stack's native size.

    Examples:
        >>> import torch
        >>> dec = ConvDecoder()
        >>> dec(torch.zeros(2, 5, 30), torch.zeros(2, 5, 200)).shape
        torch.Size([2, 5, 3, 64, 64])
        >>> ConvDecoder(out_channels=1, image_size=96)(torch.zeros(4, 8), torch.zeros(4, 16)).shape
        torch.Size([4, 1, 96, 96])
    """

    def __init__(
        self,
        channels: int = 32,
        num_layers: int = 4,
        kernel_sizes: int | Sequence[int] | None = None,
        latent_dim: int | None = None,
        out_channels: int = 3,
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
        if kernel_sizes is None:
            kernel_sizes = [5, 5, 6, 6] if num_layers == 4 else [5] * num_layers
        if isinstance(kernel_sizes, int):
            kernel_sizes = [kernel_sizes] * num_layers
        if len(kernel_sizes) != num_layers:
            raise ValueError(
                f"kernel_sizes must have num_layers={num_layers} entries, got {list(kernel_sizes)}."
            )
        embed = channels * 8 * 2 * 2  # 1024 for channels=32, as in PlaNet
        first = (
            nn.Linear(latent_dim, embed, device=device)
            if latent_dim is not None
            else nn.LazyLinear(embed, device=device)
        )
        self.state_to_latent = nn.Sequential(first)  # no activation (PlaNet); same parameter names as TorchRL
        widths = [embed] + [channels * 2 ** (num_layers - 2 - i) for i in range(num_layers - 1)]
        layers: list[nn.Module] = []
        for i, k in enumerate(kernel_sizes):
            out = widths[i + 1] if i + 1 < num_layers else out_channels
            layers.append(nn.ConvTranspose2d(widths[i], out, k, stride=2, device=device))
            if i + 1 < num_layers:
                layers.append(nn.ReLU())
        self.decoder = nn.Sequential(*layers)
        self._embed = embed
        native = deconv_output_size(kernel_sizes)
        self.native_size = (native, native)
        self.image_size = self.native_size if image_size is None else _image_hw(image_size, "ConvDecoder")

    def forward(self, state: torch.Tensor, belief: torch.Tensor) -> torch.Tensor:
        latent = self.state_to_latent(torch.cat([state, belief], dim=-1))
        batch = latent.shape[:-1]
        image = self.decoder(latent.reshape(-1, self._embed, 1, 1))
        if self.image_size != self.native_size:
            shrink = self.image_size[0] < self.native_size[0] or self.image_size[1] < self.native_size[1]
            image = F.interpolate(image, size=self.image_size, mode="bilinear", align_corners=False, antialias=shrink)
        return image.reshape(*batch, *image.shape[1:])


class MLPDecoder(nn.Module):
    """MLP decoder for vector observations: ``(state, belief) -> [*B, obs_dim]``.

    The mean of a unit-variance Gaussian over the observation vector.

    Args:
        obs_dim: size of the observation vector.
        latent_dim: ``state_dim + belief_dim``.
        hidden_dim: width of the hidden layers.
        depth: number of hidden layers.
        activation: activation class.
        device: where to create the parameters.

    Examples:
        >>> import torch
        >>> MLPDecoder(5, latent_dim=230)(torch.zeros(4, 30), torch.zeros(4, 200)).shape
        torch.Size([4, 5])
    """

    def __init__(
        self,
        obs_dim: int,
        latent_dim: int = 230,
        hidden_dim: int = 200,
        depth: int = 2,
        activation: type[nn.Module] = nn.ELU,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        self.net = mlp(latent_dim, obs_dim, hidden_dim, depth, activation, device)

    def forward(self, state: torch.Tensor, belief: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([state, belief], dim=-1))
