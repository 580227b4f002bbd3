"""Observation decoders p(o_t | h_t, s_t): PlaNet's deconv stack and an MLP.

Both take ``(state, belief)`` with any number of leading batch dimensions and return
the mean of a unit-variance Gaussian over the observation.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._mlp import mlp


class ConvDecoder(nn.Module):
    """PlaNet's deconvolutional decoder: linear to 1024, 4 transposed convs (k 5,5,6,6, s 2).

    Takes the stochastic ``state`` and the deterministic ``belief`` and returns an
    image mean ``[*B, out_channels, 64, 64]`` in the model's pixel range. The
    constructor accepts the arguments of TorchRL's :class:`~torchrl.modules.ObsDecoder`
    and uses the same parameter names.

    Args:
        channels: channels of the last hidden deconv (the first has ``channels * 4``).
        num_layers: number of transposed convs.
        kernel_sizes: kernel size of each layer; ``[5, 5, 6, 6]`` for 4 layers.
        latent_dim: ``state_dim + belief_dim``; ``None`` infers it lazily.
        out_channels: image channels.
        depth: deprecated alias of ``channels``.

    Examples:
        >>> import torch
        >>> dec = ConvDecoder(latent_dim=230)
        >>> dec(torch.zeros(2, 5, 30), torch.zeros(2, 5, 200)).shape
        torch.Size([2, 5, 3, 64, 64])
    """

    def __init__(
        self,
        channels: int = 32,
        num_layers: int = 4,
        kernel_sizes: int | Sequence[int] | None = None,
        latent_dim: int | None = 230,
        out_channels: int = 3,
        depth: int | None = None,
        device: torch.device | str | None = None,
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
        self.state_to_latent = nn.Sequential(first, nn.ReLU())
        widths = [embed] + [channels * 2 ** (num_layers - 2 - i) for i in range(num_layers - 1)]
        layers: list[nn.Module] = []
        for i, k in enumerate(kernel_sizes):
            out = widths[i + 1] if i + 1 < num_layers else out_channels
            layers.append(nn.ConvTranspose2d(widths[i], out, k, stride=2, device=device))
            if i + 1 < num_layers:
                layers.append(nn.ReLU())
        self.decoder = nn.Sequential(*layers)
        self._embed = embed

    def forward(self, state: torch.Tensor, belief: torch.Tensor) -> torch.Tensor:
        latent = self.state_to_latent(torch.cat([state, belief], dim=-1))
        batch = latent.shape[:-1]
        image = self.decoder(latent.reshape(-1, self._embed, 1, 1))
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
