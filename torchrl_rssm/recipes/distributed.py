"""Training on several GPUs or machines with ``torchrun``: gradients averaged over the ranks.

One process per GPU (or per CPU process with the ``gloo`` backend). Every process (rank) runs the
whole trainer: it collects from its own environments (seeded ``seed + 1000 * rank``), fills its own
replay buffer and samples its own batches. The trainer makes every rank start from rank 0's
weights (:func:`broadcast_parameters`), and every agent averages its gradients over the ranks
between ``backward`` and its gradient clip (:func:`average_gradients` over the agent's
``process_group``, which the trainer sets, through :func:`~torchrl_rssm.recipes.agent.clip_gradients`),
so all ranks keep the same weights. With
``B`` chunks per rank and ``W`` ranks an update sees ``W x B`` chunks: the effective batch grows
with the ranks (lower ``batch_size`` to keep it). One path for every agent: the losses may call
their networks' methods (``RSSMLoss.compute``, ``rollout.imagine``, the heads) rather than
``forward``, which ``DistributedDataParallel``'s hooks would not see.

Launch (``torchrl-rssm train`` joins the process group ``torchrun`` describes)::

    # one machine, 4 GPUs
    torchrun --standalone --nproc-per-node 4 -m torchrl_rssm.cli train --preset cartpole-swingup --device cuda
    # two machines, 8 GPUs each (run on both; MASTER is the first machine's address)
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint MASTER:29500 \
        -m torchrl_rssm.cli train --preset cartpole-swingup --device cuda

Rank 0 writes ``logdir``; rank ``r > 0`` writes ``logdir/rank<r>`` (its own checkpoint and buffer).
Every rank must run the same configuration (apart from ``device`` and ``logdir``):
:func:`check_same_config` compares them at start and names the fields that differ.
The schedule is the same on every rank, so every rank runs the same number of updates; an update
skipped by ``nan_policy="skip"`` on one rank only would leave the others waiting in the
all-reduce, so runs with ``WORLD_SIZE > 1`` use ``nan_policy="raise"``.

This module imports nothing of the package above the configuration.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from .config import RunConfig

__all__ = ["PER_RANK_FIELDS", "ConfigMismatchAcrossRanksError", "average_gradients", "broadcast_parameters",
           "check_same_config", "config_hash", "init_distributed", "is_distributed", "rank_config"]

#: fields that legitimately differ between ranks (each rank's GPU and log folder)
PER_RANK_FIELDS = ("device", "logdir")


class ConfigMismatchAcrossRanksError(ValueError):
    """The ranks of a torchrun launch were given different configurations."""


def config_hash(cfg: RunConfig) -> str:
    """A hash of the configuration without :data:`PER_RANK_FIELDS`.

    Examples:
        >>> from torchrl_rssm.recipes import preset
        >>> a, b = preset("tiny"), preset("tiny")
        >>> b.device = "cuda:1"
        >>> config_hash(a) == config_hash(b)
        True
    """
    data = {k: v for k, v in cfg.to_dict().items() if k not in PER_RANK_FIELDS}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def check_same_config(cfg: RunConfig) -> None:
    """Gathers every rank's configuration and raises on all ranks if they differ (fields named)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    mine = {k: v for k, v in cfg.to_dict().items() if k not in PER_RANK_FIELDS}
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, {"hash": config_hash(cfg), "config": mine})
    if len({e["hash"] for e in everyone}) == 1:
        return
    ref = everyone[0]["config"]
    diffs = {}
    for rank, other in enumerate(everyone[1:], 1):
        for key in sorted(set(ref) | set(other["config"])):
            if ref.get(key) != other["config"].get(key):
                diffs.setdefault(key, {0: ref.get(key)})[rank] = other["config"].get(key)
    raise ConfigMismatchAcrossRanksError(
        f"the {len(everyone)} ranks of this torchrun launch run different configurations; fields that differ "
        f"(rank: value): {diffs}. Give every rank the same settings (only {list(PER_RANK_FIELDS)} may differ).")


def init_distributed(backend: str | None = None) -> tuple[int, int, int]:
    """Joins the process group ``torchrun`` describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ...).

    ``backend``: ``nccl`` when CUDA is available, else ``gloo``. Returns ``(rank, world_size,
    local_rank)``; ``(0, 1, 0)`` without ``torchrun`` (no process group is created).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def rank_config(cfg: RunConfig, rank: int, local_rank: int = 0) -> RunConfig:
    """This rank's copy: ``cuda`` becomes ``cuda:<local_rank>``, its own seed and log folder.

    Examples:
        >>> from torchrl_rssm.recipes import preset
        >>> cfg = rank_config(preset("tiny"), rank=1)
        >>> cfg.seed, cfg.logdir, cfg.nan_policy
        (1000, 'runs/planet-tiny/rank1', 'raise')
    """
    out = copy.deepcopy(cfg)
    if out.device == "cuda":
        out.device = f"cuda:{local_rank}"
    out.seed = cfg.seed + 1000 * rank
    if rank > 0:
        out.logdir = str(Path(cfg.logdir) / f"rank{rank}")
    out.nan_policy = "raise"
    return out


def is_distributed() -> bool:
    """True inside a process group of more than one rank (``torchrun`` with ``WORLD_SIZE > 1``)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def average_gradients(params: list[torch.Tensor], group: Any = None) -> None:
    """All-reduces (averages) the gradients of ``params`` over ``group``, in one flat call.

    Every agent calls it between ``backward`` and its gradient clip (through
    :func:`~torchrl_rssm.recipes.agent.clip_gradients`, with the agent's ``process_group``), so
    clipping sees the averaged gradients, the same on every rank. A parameter without a gradient
    counts as zeros, so every rank steps the same parameters. ``group=None``: no-op. (The group
    is named, not taken from whatever is initialised: TorchRL's ``DistributedCollector`` starts
    a process group of its own in the trainer's process, whose workers never train.)
    """
    if group is None:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=group)
    flat /= dist.get_world_size(group)
    for p, chunk in zip(params, flat.split([g.numel() for g in grads])):
        p.grad = chunk.view_as(p).clone()


@torch.no_grad()
def broadcast_parameters(modules: Iterable[torch.nn.Module]) -> None:
    """Copies rank 0's parameters and buffers to every rank (ranks are seeded apart, so their
    freshly built networks differ). No-op outside a process group of more than one rank."""
    if not is_distributed():
        return
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)
