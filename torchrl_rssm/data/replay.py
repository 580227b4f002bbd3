"""Sequence replay buffer: ``[B, L]`` chunks of consecutive steps, each observation stored once.

Built from TorchRL parts: a :class:`~torchrl.data.TensorDictReplayBuffer` with a
:class:`~torchrl.data.LazyTensorStorage` (on any device) or a
:class:`~torchrl.data.LazyMemmapStorage` (on disk), a
:class:`~torchrl.data.SliceSampler` and, on sampling, the
:class:`~torchrl_rssm.envs.Dequantize` transform.

How episode boundaries are found
--------------------------------
Storage rows are written in order. The buffer writes an episode id under ``traj_key``
(``"episode"``) itself when data is added (:meth:`SequenceReplayBuffer.extend`), from
whatever the data carries:

* a new episode starts at a row with ``is_init=True`` (TorchRL's ``InitTracker``),
* after a row whose ``("next", "done" | "terminated" | "truncated")`` is set,
* where ``("collector", "traj_ids")`` (written by TorchRL collectors) changes,
* where an incoming ``"episode"`` entry (data written by hand) changes.

Otherwise a new batch continues the last stored episode (unless it carries a
different set of these id entries than the previous batch), so an episode split
across two collector batches stays one episode. The ids grow monotonically over
the buffer's life, so they stay unique when a new collector restarts its
``traj_ids`` at 0, when episodes are overwritten at capacity, or when data
written by hand reuses its own ids. Data with several batch dims (``[N, T]``,
from batched environments) is stored row by row; each row starts a new piece
(episodes cut by the batch edge are stored as separate pieces).

Why not ``SliceSampler``'s own options: ``end_key`` merges an unfinished episode
with the next one (e.g. from a new collector); ``("collector", "traj_ids")``
restarts at 0 with every new collector, so episodes from two collectors that
each collected a single episode would be glued together; data written by hand
has neither. The buffer-assigned id works for all three.

Two ways to cut chunks
----------------------
``cross_episodes=False`` (the default; PlaNet and Dreamer): the sampler is
``SliceSampler(slice_len=L, traj_key="episode", strict_length=True)``, a chunk is ``L``
consecutive rows of one episode. Episodes (or surviving pieces of overwritten
episodes) shorter than ``L`` are skipped; if no stored episode has ``L`` steps yet,
:meth:`~SequenceReplayBuffer.sample` raises a ``RuntimeError`` that says so. Episodes are
picked uniformly (not in proportion to their length), chunk starts uniformly within one.

``cross_episodes=True`` (DreamerV3's replay): chunks are slices of each environment's
*stream* of steps and may cross episode boundaries; the sampler's ``traj_key`` is a
stream id the buffer writes (``("_replay", "stream")``), and the stored ``is_init`` is set
at every episode start, so a model that resets its state where ``is_init`` is set (the
RSSM does) never carries state across episodes. Episodes of any length, one step
included, are stored and sampled. A single-row batch (``[T]``, one environment) continues
the stream of the previous one; each row of a ``[N, T]`` batch is a stream piece of its
own (its steps are not contiguous with the same environment's next batch in storage), so
``chunk_length`` must not exceed ``T`` there.

In both modes sampled chunks carry TorchRL's slice markers: ``is_init`` at the first step
of every chunk (OR-ed with the stored flags, so episode starts inside a chunk keep it) and
``("next", "truncated")`` (and ``("next", "done")``) at the last step (OR-ed with the
stored flags). ``("next", "terminated")`` is the stored flag alone: continuation is learned
from it, and a time limit (``truncated``) is never a termination.

What is stored
--------------
By default the buffer drops the policy's recorded latents (``state``/``belief``, root and
``next``) and its warm-start ``plan`` (:data:`DEFAULT_EXCLUDE_KEYS`): training starts every
chunk from the initial latent and filters the observations itself, so these are never read.

**Each observation is stored once.** TorchRL's collectors write, for every step ``t``, a
root entry (``pixels``, ``observation``, ``step_count``, ...) and its ``("next", ...)``
counterpart, and within an episode the root entry at ``t`` is the ``next`` entry at
``t - 1``. The buffer stores the ``next`` entries of every step and a root entry only where
it is not the previous stored row's ``next`` entry (an episode's first step, or data that
breaks the rule), in a small side store; sampled chunks are rebuilt with both, so they equal
what a buffer storing every root entry returns. The entries treated this way are the root
entries that have a ``("next", key)`` counterpart of the same shape and dtype and take at
least :data:`MIN_DEDUP_BYTES` per step (observations; not flags or counters). For 64x64
RGB pixels that is 12,288 bytes per step (uint8) plus a share of one image per episode,
about 12.4 kB per step with the rest. :meth:`SequenceReplayBuffer.describe` reports the
capacity and the estimated memory once the first write has fixed the row layout. The side
store lives on the storage's device (in host memory for a ``LazyMemmapStorage``) and grows
with the number of stored episodes.
"""
from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn.utils import _set_dispatch_td_nn_modules
from tensordict.utils import NestedKey, unravel_key
from torchrl.data import LazyMemmapStorage, LazyTensorStorage, SliceSampler, TensorDictReplayBuffer
from torchrl.envs.transforms import Compose, DeviceCastTransform

from ..envs.transforms import Dequantize

__all__ = ["DEFAULT_EXCLUDE_KEYS", "ChunkSliceSampler", "ReplayLoadError", "SequenceReplayBuffer",
           "load_replay_buffer", "make_replay_buffer", "save_replay_buffer"]

_END_KEYS: tuple[NestedKey, ...] = (("next", "done"), ("next", "terminated"), ("next", "truncated"))
_COLLECTOR_TRAJ_KEY: NestedKey = ("collector", "traj_ids")
#: the buffer's own bookkeeping entries (never returned by ``sample``)
_META = "_replay"
_ROOT_SLOT_KEY = (_META, "root_slot")
_STREAM_KEY = (_META, "stream")
_FORMAT_VERSION = 2
_LOG = logging.getLogger("torchrl_rssm.data")

#: Root entries smaller than this (bytes per step: flags, counters, small state vectors) are
#: stored as given: rebuilding them at sampling would cost more time than their bytes are worth.
MIN_DEDUP_BYTES = 64

#: Entries the buffer drops by default: the acting policy's recorded latents and warm-start
#: plan (training never reads them; see "What is stored").
DEFAULT_EXCLUDE_KEYS: tuple[NestedKey, ...] = (
    "state", "belief", "plan", ("next", "state"), ("next", "belief"), ("next", "plan"),
)


class ReplayLoadError(ValueError):
    """A saved replay buffer could not be read (missing, truncated or corrupted file)."""


class _RowsRead:
    """Storage stand-in for ``SliceSampler._finalize_index`` that keeps the rows it reads.

    TorchRL's ``SliceSampler`` reads ``storage[index]`` (every entry, pixels included) to get
    ``done``/``terminated``/``is_init`` for the slice markers, and its buffer then gathers the
    same rows again. This view keeps that read (``last``: ``(index, rows)``) so that
    :class:`SequenceReplayBuffer` uses it as the sample: one gather per sample, not two.
    """

    def __init__(self, storage):
        self._storage = storage
        self.last = None

    def __getitem__(self, index):
        rows = self._storage[index]
        self.last = (index, rows)
        return rows

    def __getattr__(self, name):
        return getattr(self._storage, name)


class ChunkSliceSampler(SliceSampler):
    """``SliceSampler`` whose read of the sampled rows (for the slice flags) is also the sample.

    Same arguments and chunk positions as :class:`~torchrl.data.SliceSampler` (same random
    draws). The rows its ``_finalize_index`` reads are kept (:meth:`take_rows`), and
    :class:`SequenceReplayBuffer` returns them instead of gathering them a second time. One
    difference in the markers: the stored ``("next", "truncated")`` is OR-ed into the
    chunk-end marker instead of being replaced by it, so a time limit inside a chunk that
    crosses episodes stays visible (chunks that never cross an episode boundary are
    unaffected: a stored truncation can only be at their last step).
    """

    _rows: tuple | None = None

    def _finalize_index(self, *, storage, **kwargs):
        read = _RowsRead(storage)
        index, info = super()._finalize_index(storage=read, **kwargs)
        self._rows = read.last
        if self.truncated_key is not None and self.truncated_key in info and read.last is not None:
            stored = read.last[1].get(self.truncated_key, None)
            if stored is not None:
                info[self.truncated_key] = info[self.truncated_key] | stored.reshape(info[self.truncated_key].shape)
        return index, info

    def take_rows(self, index) -> TensorDictBase | None:
        """The rows read for ``index`` by the last sample (once), or ``None`` if that read was of another index."""
        rows, self._rows = self._rows, None
        if rows is None or rows[0] is not index:
            return None
        return rows[1]


def _fresh_episode_state() -> dict[str, Any]:
    return {"next_id": 0, "open": False, "last_traj_ids": None, "last_episode": None,
            "next_stream": 0, "stream_open": False}


def _as_tuple(key: NestedKey) -> tuple[str, ...]:
    key = unravel_key(key)
    return key if isinstance(key, tuple) else (key,)


def _key(key: tuple[str, ...]) -> NestedKey:
    return key[0] if len(key) == 1 else key


class SequenceReplayBuffer(TensorDictReplayBuffer):
    """A ``TensorDictReplayBuffer`` that labels episodes on write and samples ``[B, L]`` chunks.

    Build it with :func:`make_replay_buffer`. Differences from its base class:

    * :meth:`extend` / :meth:`add` write a buffer-unique episode id under
      ``traj_key`` (see the module documentation), drop ``exclude_keys`` and store each
      observation once; the caller's tensordict is not modified.
    * :meth:`sample` returns ``[num_chunks, chunk_length]`` instead of a flat
      ``[num_chunks * chunk_length]`` batch, with the root observations rebuilt.
      ``batch_size`` keeps TorchRL's meaning (transitions, a multiple of ``chunk_length``).
    * ``storage`` holds the compact layout (no root observation entries, a
      ``("_replay", ...)`` bookkeeping entry); :meth:`steps` returns stored rows as they
      were written.
    * :meth:`dumps` / :meth:`loads` are :func:`save_replay_buffer` /
      :func:`load_replay_buffer` (one format), and :meth:`state_dict` also carries the
      episode counter and the side store of root observations.
    """

    def __init__(
        self,
        *,
        chunk_length: int,
        traj_key: NestedKey = "episode",
        exclude_keys: Sequence[NestedKey] = (),
        cross_episodes: bool = False,
        config: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.chunk_length = int(chunk_length)
        self.traj_key = unravel_key(traj_key)
        self.exclude_keys = [unravel_key(k) for k in exclude_keys]
        self.cross_episodes = bool(cross_episodes)
        self.config = dict(config or {})
        self._episode_state = _fresh_episode_state()
        self._warned_no_boundaries = False
        #: root entries stored only where they are not the previous row's ``next`` entry
        self.root_keys: list[tuple[str, ...]] | None = None
        self._roots: TensorDictBase | None = None  # [S] side store of root entries
        self._root_owner: torch.Tensor | None = None  # [S] storage row owning each slot, -1: free
        #: bytes of one stored step (set at the first write)
        self.bytes_per_step: int | None = None

    # ------------------------------------------------------------------ writing
    def _label_episodes(self, data: TensorDictBase) -> TensorDictBase:
        if data.ndim == 0:
            data = data.unsqueeze(0)
        rows, steps = (1, data.shape[0]) if data.ndim == 1 else (data.shape[:-1].numel(), data.shape[-1])
        flat = data.reshape(-1) if data.ndim > 1 else data
        out = flat.clone(False)  # shallow: the caller's tensordict is left alone
        if self.exclude_keys:
            out = out.exclude(*self.exclude_keys)
        if rows * steps == 0:
            return out
        device = flat.device if flat.device is not None else torch.device("cpu")
        state = self._episode_state
        continues = rows == 1 and state["open"]
        start = torch.zeros(rows, steps, dtype=torch.bool, device=device)
        end = torch.zeros(rows, steps, dtype=torch.bool, device=device)
        if not continues:
            start[:, 0] = True
        found = False
        is_init = flat.get("is_init", None)
        if is_init is not None:
            found = True
            start |= is_init.reshape(rows, steps, -1).any(-1).to(device)
        for key in _END_KEYS:
            flag = flat.get(key, None)
            if flag is not None:
                found = True
                end |= flag.reshape(rows, steps, -1).any(-1).to(device)
        start[:, 1:] |= end[:, :-1]
        last_values: dict[str, int | None] = {"last_traj_ids": None, "last_episode": None}
        for name, key in (("last_traj_ids", _COLLECTOR_TRAJ_KEY), ("last_episode", self.traj_key)):
            ids = flat.get(key, None)
            if continues and (ids is None) != (state[name] is None):
                start[0, 0] = True  # the id entries changed between batches: another source
            if ids is None:
                continue
            found = True
            ids = ids.reshape(rows, steps, -1)[..., 0].to(device)
            start[:, 1:] |= ids[:, 1:] != ids[:, :-1]
            if continues and state[name] is not None:
                start[0, 0] |= bool(ids[0, 0] != state[name])
            last_values[name] = int(ids[-1, -1])
        if not found and not self._warned_no_boundaries:
            self._warned_no_boundaries = True
            warnings.warn(
                "SequenceReplayBuffer.extend: the data has none of is_init, ('next', 'done'|'terminated'|'truncated'), "
                f"('collector', 'traj_ids') or {self.traj_key!r}; consecutive batches are treated as one episode.",
                stacklevel=3,
            )
        episode = torch.cumsum(start.reshape(-1).to(torch.int64), 0) + (state["next_id"] - 1)
        out.set(self.traj_key, episode.reshape(flat.shape))
        state["next_id"] = int(episode[-1]) + 1
        state["open"] = not bool(end[-1, -1])
        state.update(last_values)
        if self.cross_episodes:
            # the stored is_init marks every episode start (the RSSM resets there inside a chunk)
            old = flat.get("is_init", None)
            shape = old.shape if old is not None else (*flat.shape, 1)
            out.set("is_init", start.reshape(-1, *[1] * (len(shape) - 1)).expand(shape).clone())
            # a stream piece: one environment's consecutive rows, contiguous in storage
            new_piece = torch.zeros(rows, steps, dtype=torch.int64, device=device)
            if not (rows == 1 and state["stream_open"]):
                new_piece[:, 0] = 1
            stream = torch.cumsum(new_piece.reshape(-1), 0) + (state["next_stream"] - 1)
            out.set(_STREAM_KEY, stream.reshape(flat.shape))
            state["next_stream"] = int(stream[-1]) + 1
            state["stream_open"] = rows == 1
        return out

    def _find_root_keys(self, data: TensorDictBase) -> list[tuple[str, ...]]:
        """Root entries with a ``("next", key)`` twin of the same shape and dtype, of at least
        :data:`MIN_DEDUP_BYTES` per step (smaller ones cost more to rebuild than they take)."""
        keys = []
        for key in data.keys(True, True):
            key = _as_tuple(key)
            if key[0] in ("next", _META) or key == _as_tuple(self.traj_key):
                continue
            twin = data.get(("next", *key), None)
            value = data.get(_key(key))
            if isinstance(twin, torch.Tensor) and isinstance(value, torch.Tensor) \
                    and twin.shape == value.shape and twin.dtype == value.dtype \
                    and value[0].numel() * value.element_size() >= MIN_DEDUP_BYTES:
                keys.append(key)
        return keys

    def _storage_td(self) -> TensorDictBase | None:
        data = getattr(self.storage, "_storage", None)
        return data if isinstance(data, TensorDictBase) and len(self.storage) else None

    def _dedup(self, out: TensorDictBase) -> TensorDictBase:
        """Drops the root entries that the previous stored row's ``next`` entries repeat."""
        n = out.shape[0]
        capacity = self.storage.max_size
        if n > capacity:
            raise ValueError(f"SequenceReplayBuffer.extend: {n} steps in one batch exceed capacity={capacity}.")
        if self.root_keys is None:
            self.root_keys = self._find_root_keys(out)
        if not self.root_keys:
            return out
        missing = [k for k in self.root_keys if out.get(_key(k), None) is None or out.get(("next", *k), None) is None]
        if missing:
            raise KeyError(f"SequenceReplayBuffer.extend: the data lacks {missing} (and/or their 'next' twins), "
                           "stored by earlier batches.")
        device = out.device if out.device is not None else torch.device("cpu")
        length = len(self.storage)
        stored = self._storage_td()
        cursor = int(self._writer._cursor)
        index = (torch.arange(n) + cursor) % capacity
        # 1. a root entry is kept where it differs from the previous row's next entry
        keep = torch.zeros(n, dtype=torch.bool, device=device)
        keep[0] = True
        prev_row = (cursor - 1) % capacity
        for key in self.root_keys:
            root, nxt = out.get(_key(key)), out.get(("next", *key))
            if n > 1:
                keep[1:] |= (root[1:] != nxt[:-1]).reshape(n - 1, -1).any(-1)
        if stored is not None and n < capacity:
            same = True
            for key in self.root_keys:
                prev = stored.get(("next", *key))[prev_row].to(device)
                same = same and bool((out.get(_key(key))[0] == prev).all())
            keep[0] = not same
        slots_col = torch.full((n,), -1, dtype=torch.int64)
        if stored is not None:
            column = stored.get(_ROOT_SLOT_KEY)
            # 2. the slots of the rows about to be overwritten are freed
            live = index if length == capacity else index[index < length]
            freed = column[live.to(column.device)].cpu()
            self._root_owner[freed[freed >= 0]] = -1
            # 3. the oldest surviving row loses its predecessor: keep its root entry now
            oldest = (cursor + n) % capacity
            if n < capacity and (length == capacity or oldest < length) and int(column[oldest]) < 0:
                slot = int(self._alloc_slots(1)[0])
                for key in self.root_keys:
                    self._roots.get(_key(key))[slot] = stored.get(("next", *key))[int(index[-1])].to(
                        self._roots.device)
                self._root_owner[slot] = oldest
                column[oldest] = slot
        # 4. slots for the root entries kept in this batch
        rows = keep.nonzero().squeeze(-1).cpu()
        if len(rows):
            roots = out.select(*[_key(k) for k in self.root_keys])[rows.to(device)].contiguous()
            if self._roots is None:
                self._roots = roots[:0].to(self._storage_device()).clone()
                self._root_owner = torch.zeros(0, dtype=torch.int64)
            slots = self._alloc_slots(len(rows))
            self._roots[slots] = roots.to(self._roots.device)
            self._root_owner[slots] = index[rows]
            slots_col[rows] = slots
        out = out.exclude(*[_key(k) for k in self.root_keys])
        out.set(_ROOT_SLOT_KEY, slots_col.to(device))
        return out

    def _storage_device(self) -> torch.device:
        device = getattr(self.storage, "device", None)
        return torch.device("cpu") if device in (None, "auto") else torch.device(device)

    def _alloc_slots(self, k: int) -> torch.Tensor:
        """``k`` free slots of the side store, growing it (doubling) when it is full."""
        free = (self._root_owner < 0).nonzero().squeeze(-1)
        if len(free) < k:
            size = len(self._root_owner)
            new = max(2 * size, size + k - len(free))
            extra = new - size
            self._roots = torch.cat(
                [self._roots, self._roots.apply(lambda v: v.new_zeros((extra, *v.shape[1:])), batch_size=[extra])], 0)
            self._root_owner = torch.cat([self._root_owner, torch.full((extra,), -1, dtype=torch.int64)])
            free = (self._root_owner < 0).nonzero().squeeze(-1)
        return free[:k]

    def extend(self, tensordicts: TensorDictBase, *, update_priority: bool | None = None) -> torch.Tensor:
        """Adds a batch of consecutive steps ``[T]`` (or ``[*N, T]``) and labels its episodes.

        Returns the storage indices written.
        """
        if not isinstance(tensordicts, TensorDictBase):
            raise TypeError(
                f"SequenceReplayBuffer.extend: tensordicts must be a TensorDict, got {type(tensordicts).__name__}."
            )
        data = self._label_episodes(tensordicts)
        if not data.numel():
            return torch.zeros(0, dtype=torch.int64)
        data = self._dedup(data)
        if self.bytes_per_step is None:
            self.bytes_per_step = sum(v[0].numel() * v.element_size() for v in data.values(True, True))
            _LOG.debug("SequenceReplayBuffer: %s", self.describe())
        return super().extend(data, update_priority=update_priority)

    def describe(self) -> str:
        """Capacity, storage device and estimated memory (known after the first write)."""
        capacity = self.storage.max_size
        where = "disk (memmap)" if isinstance(self.storage, LazyMemmapStorage) else str(
            getattr(self.storage, "device", "cpu"))
        if self.bytes_per_step is None:
            return f"capacity {capacity:,} steps on {where} (size known after the first write)"
        total = self.bytes_per_step * capacity
        return (f"capacity {capacity:,} steps on {where}, {self.bytes_per_step / 1e3:.1f} kB per step, "
                f"about {_human_bytes(total)} when full (plus one root observation per stored episode)")

    def nbytes(self) -> int:
        """Bytes held now: the stored rows (the whole preallocated capacity) and the side store."""
        total = 0
        stored = getattr(self.storage, "_storage", None)
        if isinstance(stored, TensorDictBase):
            total += sum(v.numel() * v.element_size() for v in stored.values(True, True))
        if self._roots is not None:
            total += sum(v.numel() * v.element_size() for v in self._roots.values(True, True))
            total += self._root_owner.numel() * self._root_owner.element_size()
        return total

    def episode_lengths(self) -> torch.Tensor:
        """Stored steps of each stored episode (or surviving piece), in id order."""
        stored = self._storage_td()
        if stored is None:
            return torch.zeros(0, dtype=torch.int64)
        ids = stored.get(self.traj_key)[: len(self)].reshape(-1)
        return torch.unique(ids, return_counts=True)[1]

    def can_sample(self) -> bool:
        """Whether a chunk fits: some stored episode (``cross_episodes``: stream piece) has
        ``chunk_length`` steps.

        Examples:
            >>> import torch
            >>> from tensordict import TensorDict
            >>> one_step = TensorDict({"obs": torch.zeros(6), ("next", "done"): torch.ones(6, 1, dtype=torch.bool)}, [6])
            >>> per_episode = make_replay_buffer(50, batch_size=1, chunk_length=4)
            >>> stream = make_replay_buffer(50, batch_size=1, chunk_length=4, cross_episodes=True)
            >>> _ = per_episode.extend(one_step), stream.extend(one_step)
            >>> per_episode.can_sample(), stream.can_sample()
            (False, True)
        """
        stored = self._storage_td()
        if stored is None:
            return False
        key = _STREAM_KEY if self.cross_episodes else self.traj_key
        ids = stored.get(key)[: len(self)].reshape(-1)
        return bool(torch.unique(ids, return_counts=True)[1].max() >= self.chunk_length)

    def add(self, data: TensorDictBase) -> int:
        """Adds one step (a tensordict with empty batch size); returns its storage index."""
        if not isinstance(data, TensorDictBase):
            raise TypeError(f"SequenceReplayBuffer.add: data must be a TensorDict, got {type(data).__name__}.")
        index = self.extend(data.unsqueeze(0) if data.ndim == 0 else data)
        return index[0] if index.numel() == 1 else index

    # ----------------------------------------------------------------- sampling
    def _rebuild(self, data: TensorDictBase, rows: torch.Tensor) -> TensorDictBase:
        """Puts the root entries back into rows gathered from storage (``rows``: their indices)."""
        slots = data.get(_ROOT_SLOT_KEY, None)
        if _META in data.keys():
            data = data.exclude(_META)
        if slots is None or not self.root_keys:
            return data
        capacity = self.storage.max_size
        shape = rows.shape  # [N] or [B, L]: the batch the gathered entries have
        rows = rows.reshape(-1).to(slots.device)
        slots = slots.reshape(-1)
        # a row's root entry is the next entry of the row gathered just before it when that
        # one is its predecessor in storage (inside a chunk), else it is read from storage
        follows = torch.zeros_like(rows, dtype=torch.bool)
        follows[1:] = rows[1:] == (rows[:-1] + 1) % capacity
        has_slot = slots >= 0
        fetch = (~follows & ~has_slot).nonzero().squeeze(-1)
        own = has_slot.nonzero().squeeze(-1)
        stored = self.storage._storage
        for key in self.root_keys:
            nxt = data.get(("next", *key))
            root = nxt.reshape(-1, *nxt.shape[len(shape):]).roll(1, 0)
            if len(fetch):
                root[fetch] = stored.get(("next", *key))[(rows[fetch] - 1) % capacity].to(root.device)
            if len(own):
                root[own] = self._roots.get(_key(key))[slots[own].to(self._roots.device)].to(root.device)
            data.set(_key(key), root.reshape(nxt.shape))
        return data

    def steps(self, index: torch.Tensor | slice | int) -> TensorDictBase:
        """Stored rows as they were written (root observations included, no bookkeeping).

        Examples:
            >>> import torch
            >>> from tensordict import TensorDict
            >>> rb = make_replay_buffer(10, batch_size=1, chunk_length=2)
            >>> obs = torch.arange(5.).unsqueeze(-1).expand(5, 16)  # 64 bytes per step
            >>> _ = rb.extend(TensorDict({"observation": obs[:4], ("next", "observation"): obs[1:]}, [4]))
            >>> rb.steps(slice(0, 4))["observation"][:, 0]
            tensor([0., 1., 2., 3.])
            >>> "observation" in rb.storage.get(slice(0, 4)).keys()  # stored once, under "next"
            False
        """
        rows = torch.arange(len(self))[index].reshape(-1)
        return self._rebuild(self.storage.get(rows), rows)

    def _sample(self, batch_size: int) -> tuple[Any, dict]:
        # TensorDictReplayBuffer._sample, with the root entries rebuilt before the transforms
        with self._replay_lock, self._write_lock:
            index, info = self._sampler.sample(self._storage, batch_size)
            # the sampler's own read of these rows (for its slice flags) is the sample: no second gather
            data = self._sampler.take_rows(index) if isinstance(self._sampler, ChunkSliceSampler) else None
            if self._sample_unit is not None:
                index, info = self._sample_unit.expand(index, info, self._storage)
                data = None
            info["index"] = index
            if self._writer.tracks_generations:
                info["index_generation"] = self._writer.generations_of(index)
            rows = index[0] if isinstance(index, tuple) else index
            device = self._storage_device()
            rows = rows.to(device)
            data = self._rebuild(self._storage.get(rows) if data is None else data, rows)
        data = self._collate_fn(data)
        if self._transform is not None and len(self._transform):
            with data.unlock_(), _set_dispatch_td_nn_modules(True):
                data = self._transform(data)
        return data, info

    def sample(
        self, batch_size: int | None = None, return_info: bool = False, include_info: bool | None = None
    ) -> TensorDictBase | tuple[TensorDictBase, dict]:
        """Samples ``[B, L]`` chunks (``batch_size`` counts transitions: ``B * L``, the default)."""
        if batch_size is not None and batch_size % self.chunk_length:
            raise ValueError(
                f"SequenceReplayBuffer.sample: batch_size={batch_size} counts transitions and must be a multiple "
                f"of chunk_length={self.chunk_length}."
            )
        if len(self) == 0:
            raise RuntimeError("SequenceReplayBuffer.sample: the buffer is empty; extend it with episodes first.")
        try:
            out = super().sample(batch_size, return_info=True, include_info=include_info)
        except RuntimeError as err:
            if "sufficient length" in str(err):
                what = ("stream piece (consecutive steps of one environment in one batch row)"
                        if self.cross_episodes else "episode")
                hint = "" if self.cross_episodes else " (episodes shorter than chunk_length are skipped)"
                raise RuntimeError(
                    f"SequenceReplayBuffer.sample: no stored {what} has chunk_length={self.chunk_length} steps yet"
                    f"{hint}. Original error: {err}"
                ) from err
            raise
        data, info = out
        if data.batch_size != (data.numel() // self.chunk_length, self.chunk_length):
            data = data.reshape(-1, self.chunk_length)
        return (data, info) if return_info else data

    @property
    def num_chunks(self) -> int | None:
        """Chunks per default sample (``B``)."""
        return None if self._batch_size is None else self._batch_size // self.chunk_length

    @property
    def num_episodes(self) -> int:
        """Episodes (or pieces of episodes) labelled so far, stored or overwritten."""
        return self._episode_state["next_id"]

    # ------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        out["_episode_state"] = dict(self._episode_state)
        out["_roots"] = {"keys": [list(k) for k in self.root_keys] if self.root_keys is not None else None,
                         "data": None if self._roots is None else self._roots.to_dict(),
                         "owner": self._root_owner}
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        episode_state = state_dict.pop("_episode_state")
        roots = state_dict.pop("_roots")
        super().load_state_dict(state_dict)
        self._episode_state = {**_fresh_episode_state(), **episode_state}
        self.root_keys = None if roots["keys"] is None else [tuple(k) for k in roots["keys"]]
        self._root_owner = roots["owner"]
        self._roots = None if roots["data"] is None else TensorDict(
            roots["data"], batch_size=[len(roots["owner"])], device=self._storage_device())

    def dumps(self, path: str | Path) -> None:
        """Same as :func:`save_replay_buffer` (only the stored rows are written)."""
        save_replay_buffer(self, path)

    def loads(self, path: str | Path) -> None:
        """Same as :func:`load_replay_buffer` into this buffer."""
        load_replay_buffer(path, self)

    def empty(self, empty_write_count: bool = True) -> None:
        super().empty(empty_write_count=empty_write_count)
        self._episode_state = _fresh_episode_state()
        self._roots, self._root_owner = None, None  # root_keys stay: the storage keeps its layout


def _human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _check_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"make_replay_buffer: {name} must be an int >= {minimum}, got {value!r}.")
    return value


def _key_to_json(key: NestedKey) -> str | list[str]:
    key = unravel_key(key)
    return list(key) if isinstance(key, tuple) else key


def _key_from_json(key: str | list[str]) -> NestedKey:
    return tuple(key) if isinstance(key, list) else key


def make_replay_buffer(
    capacity: int,
    batch_size: int,
    chunk_length: int,
    *,
    device: torch.device | str = "cpu",
    memmap_dir: str | Path | None = None,
    dequantize_bits: int | None = 5,
    pixel_keys: Sequence[NestedKey] = ("pixels", ("next", "pixels")),
    traj_key: NestedKey = "episode",
    exclude_keys: Sequence[NestedKey] = DEFAULT_EXCLUDE_KEYS,
    prefetch: int | None = None,
    generator: torch.Generator | None = None,
    storage_device: torch.device | str | None = None,
    cross_episodes: bool = False,
) -> SequenceReplayBuffer:
    """Builds the sequence replay buffer: ``rb.sample()`` gives ``[batch_size, chunk_length]``.

    Args:
        capacity: maximum number of stored steps (transitions); the oldest are
            overwritten first.
        batch_size: chunks per sample (``B``; PlaNet: 50).
        chunk_length: steps per chunk (``L``; PlaNet: 50).
        device: where samples are returned (and, unless ``storage_device`` says
            otherwise, where a ``LazyTensorStorage`` lives: ``"cuda"`` keeps the whole
            buffer on the GPU).
        memmap_dir: if given, a ``LazyMemmapStorage`` there (CPU, on disk;
            samples are moved to ``device``). TorchRL refuses to overwrite
            existing memmap files in it: use a fresh directory per buffer.
        dequantize_bits: stored pixels (``uint8``) are returned as floats in
            ``[-0.5, 0.5)`` with PlaNet's dequantisation noise for this bit depth
            (:class:`~torchrl_rssm.envs.Dequantize`; match ``make_env``'s
            ``bit_depth``). ``None`` returns the ``uint8`` pixels as stored.
        pixel_keys: the entries ``Dequantize`` converts (missing ones are skipped,
            so vector-observation data passes untouched).
        traj_key: where the buffer writes its episode ids.
        exclude_keys: entries dropped before writing. Default
            :data:`DEFAULT_EXCLUDE_KEYS`: the policy's recorded ``state``/``belief``
            and warm-start ``plan`` (root and ``next``), which training never reads.
            Pass ``()`` to store everything.
        prefetch: number of batches TorchRL prefetches in background threads.
        generator: RNG for the sampler (reproducible chunk positions; the
            dequantisation noise uses torch's global RNG).
        storage_device: where a ``LazyTensorStorage`` lives when it differs from
            ``device``, e.g. ``"cpu"`` storage with ``device="cuda"``: the buffer then
            fits in host memory and each sampled batch is moved to ``device``.
        cross_episodes: ``False``: chunks never cross an episode boundary and episodes
            shorter than ``chunk_length`` are skipped. ``True``: chunks are slices of
            each environment's stream of steps and may cross episode boundaries, with
            ``is_init`` set at every episode start (DreamerV3's replay; episodes of any
            length train). See the module documentation.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> rb = make_replay_buffer(1000, batch_size=4, chunk_length=5)
        >>> for ep in range(3):
        ...     T = 10
        ...     _ = rb.extend(TensorDict({
        ...         "pixels": torch.randint(0, 256, (T, 3, 64, 64), dtype=torch.uint8),
        ...         "action": torch.randn(T, 1),
        ...         "is_init": torch.arange(T).unsqueeze(-1) == 0,
        ...         ("next", "done"): torch.arange(T).unsqueeze(-1) == T - 1,
        ...     }, [T]))
        >>> batch = rb.sample()
        >>> batch.shape, batch["pixels"].dtype
        (torch.Size([4, 5]), torch.float32)
        >>> bool((batch["episode"] == batch["episode"][:, :1]).all())
        True

        Episodes of one step, sampled in chunks of 4 that cross them:

        >>> rb = make_replay_buffer(100, batch_size=2, chunk_length=4, cross_episodes=True)
        >>> _ = rb.extend(TensorDict({"observation": torch.arange(8.).unsqueeze(-1),
        ...                           ("next", "observation"): torch.arange(1., 9.).unsqueeze(-1),
        ...                           ("next", "terminated"): torch.ones(8, 1, dtype=torch.bool)}, [8]))
        >>> batch = rb.sample()
        >>> batch.shape, bool(batch["is_init"].all())
        (torch.Size([2, 4]), True)
    """
    capacity = _check_int(capacity, "capacity")
    batch_size = _check_int(batch_size, "batch_size")
    chunk_length = _check_int(chunk_length, "chunk_length")
    if chunk_length > capacity:
        raise ValueError(f"make_replay_buffer: chunk_length={chunk_length} cannot exceed capacity={capacity}.")
    if dequantize_bits is not None:
        _check_int(dequantize_bits, "dequantize_bits")
        if dequantize_bits > 8:
            raise ValueError(f"make_replay_buffer: dequantize_bits must be in [1, 8] or None, got {dequantize_bits}.")
    if not isinstance(cross_episodes, bool):
        raise TypeError(f"make_replay_buffer: cross_episodes must be a bool, got {cross_episodes!r}.")
    device = torch.device(device)
    storage_device = device if storage_device is None else torch.device(storage_device)
    if memmap_dir is not None:
        storage = LazyMemmapStorage(capacity, scratch_dir=str(memmap_dir))
        storage_device = torch.device("cpu")
    else:
        storage = LazyTensorStorage(capacity, device=storage_device)
    sampler = ChunkSliceSampler(
        slice_len=chunk_length,
        traj_key=_STREAM_KEY if cross_episodes else traj_key,
        strict_length=True,
        cache_values=True,  # boundaries are recomputed only after a write (storage revision)
    )
    transforms = []
    if storage_device != device:
        transforms.append(DeviceCastTransform(device, orig_device=storage_device))
    if dequantize_bits is not None:
        transforms.append(Dequantize(dequantize_bits, in_keys=list(pixel_keys)))
    config = {
        "capacity": capacity,
        "batch_size": batch_size,
        "chunk_length": chunk_length,
        "device": str(device),
        "storage_device": str(storage_device),
        "memmap": memmap_dir is not None,
        "dequantize_bits": dequantize_bits,
        "pixel_keys": [_key_to_json(k) for k in pixel_keys],
        "traj_key": _key_to_json(traj_key),
        "exclude_keys": [_key_to_json(k) for k in exclude_keys],
        "cross_episodes": cross_episodes,
    }
    return SequenceReplayBuffer(
        storage=storage,
        sampler=sampler,
        batch_size=batch_size * chunk_length,
        transform=Compose(*transforms) if transforms else None,
        prefetch=prefetch,
        generator=generator,
        chunk_length=chunk_length,
        traj_key=traj_key,
        exclude_keys=exclude_keys,
        cross_episodes=cross_episodes,
        config=config,
    )


# ------------------------------------------------------------------------ files
_MANIFEST = "manifest.json"
_CRC_BLOCK = 1 << 24


def file_digest(path: Path) -> tuple[int, int]:
    """``(size, crc32)`` of a file, read in 16 MB blocks."""
    import zlib

    crc, size = 0, 0
    with open(path, "rb") as file:
        while block := file.read(_CRC_BLOCK):
            crc = zlib.crc32(block, crc)
            size += len(block)
    return size, crc


def write_manifest(folder: str | Path, skip: Sequence[str] = (), extra: dict[str, Any] | None = None) -> Path:
    """Writes ``folder/manifest.json``: size and CRC-32 of every file below ``folder``.

    Files under the sub-folders named in ``skip`` (which carry their own manifest) are left
    out; ``extra`` is stored beside the digests. Written last, so a folder whose manifest
    exists and verifies (:func:`verify_manifest`) was written completely.
    """
    folder = Path(folder)
    files = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if not path.is_file() or rel == _MANIFEST or rel.split("/")[0] in skip:
            continue
        files[rel] = list(file_digest(path))
    tmp = folder / (_MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"files": files, **(extra or {})}, indent=1))
    tmp.replace(folder / _MANIFEST)
    return folder / _MANIFEST


def verify_manifest(folder: str | Path, error: type[Exception] = ReplayLoadError) -> dict[str, Any]:
    """Checks every file listed in ``folder/manifest.json``; returns the manifest.

    Raises ``error`` with one line naming the first file that is missing, truncated
    (wrong size) or corrupted (wrong CRC-32).
    """
    folder = Path(folder)
    path = folder / _MANIFEST
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
    except FileNotFoundError:
        raise error(f"{path}: missing (the folder was not written completely).") from None
    except (ValueError, KeyError, TypeError) as err:
        raise error(f"{path}: unreadable ({type(err).__name__}: {err}).") from None
    stats = []
    for rel, (size, _) in files.items():
        file = folder / rel
        if not file.is_file():
            raise error(f"{file}: missing.")
        stat = file.stat()
        if stat.st_size != size:
            raise error(f"{file}: truncated or altered ({stat.st_size:,} bytes, {size:,} written).")
        stats.append((rel, stat.st_size, stat.st_mtime_ns))
    # a folder checked once is not read again while no file changed (a resume checks twice)
    seen = (str(folder.resolve()), path.stat().st_mtime_ns, tuple(stats))
    if seen in _VERIFIED:
        return manifest
    for rel, (_, crc) in files.items():
        if file_digest(folder / rel)[1] != crc:
            raise error(f"{folder / rel}: corrupted (CRC-32 differs from the one written).")
    _VERIFIED.add(seen)
    return manifest


_VERIFIED: set[tuple] = set()


def save_replay_buffer(rb: SequenceReplayBuffer, path: str | Path) -> Path:
    """Saves the buffer's stored rows, write cursor, episode counter and settings under ``path``.

    Only the ``len(rb)`` stored rows are written (TorchRL's own ``dumps`` writes the
    whole preallocated capacity), as memory-mapped files under ``path/data`` (and the
    side store of root observations under ``path/roots``); ``path/config.json`` holds the
    :func:`make_replay_buffer` arguments, ``path/state.pt`` the cursor and counters and
    ``path/manifest.json`` (written last) every file's size and CRC-32, which
    :func:`load_replay_buffer` checks. Works for both storages; the copy is independent of
    ``memmap_dir``. ``rb.dumps(path)`` does the same.

    Examples:
        >>> import tempfile, torch
        >>> from tensordict import TensorDict
        >>> rb = make_replay_buffer(100, batch_size=2, chunk_length=3)
        >>> _ = rb.extend(TensorDict({"obs": torch.arange(10.), ("next", "done"): torch.arange(10) == 9}, [10]))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = save_replay_buffer(rb, d)
        ...     rb2 = load_replay_buffer(d)
        >>> len(rb2), rb2.sample().shape
        (10, torch.Size([2, 3]))
    """
    if not isinstance(rb, SequenceReplayBuffer):
        raise TypeError(f"save_replay_buffer: rb must come from make_replay_buffer, got {type(rb).__name__}.")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / _MANIFEST).unlink(missing_ok=True)  # the folder is incomplete until the manifest is back
    n = len(rb)
    if n:
        rb.storage.get(slice(0, n)).memmap(prefix=path / "data", copy_existing=True, existsok=True)
    if rb._roots is not None and len(rb._roots):
        rb._roots.memmap(prefix=path / "roots", copy_existing=True, existsok=True)
    state = {
        "version": _FORMAT_VERSION,
        "len": n,
        "writer": {k: int(v) for k, v in rb.writer.state_dict().items()},
        "episodes": dict(rb._episode_state),
        "root_keys": None if rb.root_keys is None else [list(k) for k in rb.root_keys],
        "root_owner": None if rb._root_owner is None else rb._root_owner.clone(),
        "bytes_per_step": rb.bytes_per_step,
    }
    torch.save(state, path / "state.pt")
    (path / "config.json").write_text(json.dumps(rb.config, indent=1))
    write_manifest(path)
    return path


def load_replay_buffer(
    path: str | Path,
    rb: SequenceReplayBuffer | None = None,
    *,
    device: torch.device | str | None = None,
    memmap_dir: str | Path | None = None,
    batch_size: int | None = None,
    chunk_length: int | None = None,
    prefetch: int | None = None,
) -> SequenceReplayBuffer:
    """Restores a buffer saved by :func:`save_replay_buffer`, into ``rb`` or into a new one.

    Args:
        path: the directory given to :func:`save_replay_buffer`.
        rb: an existing buffer from :func:`make_replay_buffer` to load into (its
            contents are replaced; its device, storage kind, sampling shape and
            transforms are kept). Its capacity, ``traj_key`` and ``cross_episodes``
            must match the saved ones. A ``LazyMemmapStorage`` that has not been written
            yet may overwrite memmap files left in its directory (e.g. by a killed run).
            When ``rb`` is given, the keyword arguments below must be left out.
        device: for a new buffer: storage/sample device (default: the saved one).
        memmap_dir: for a new buffer: load into a ``LazyMemmapStorage`` there
            (existing memmap files in it are overwritten); ``None`` loads into
            memory (``LazyTensorStorage`` on ``device``), whatever the saved
            storage was.
        batch_size, chunk_length: for a new buffer: override the saved sampling shape.
        prefetch: for a new buffer: as in :func:`make_replay_buffer`.

    Returns:
        The restored buffer (``rb`` itself when given). The stored rows, their
        positions, the write cursor (so the next write overwrites what it would
        have overwritten) and the episode counter are restored: sampling and
        extending continue as before the save.

    Raises:
        ReplayLoadError: a file is missing, truncated or corrupted, or was written by
            another format version (one line naming the file). ``rb`` is left as it was.
    """
    path = Path(path)
    if not path.is_dir():
        raise ReplayLoadError(f"{path}: no saved replay buffer there (not a folder).")
    verify_manifest(path)
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise ReplayLoadError(f"{path / 'config.json'}: unreadable ({type(err).__name__}: {err}).") from None
    try:
        state = torch.load(path / "state.pt", weights_only=True)
    except Exception as err:  # noqa: BLE001 -- torch.load raises many kinds; all mean "cannot read"
        raise ReplayLoadError(f"{path / 'state.pt'}: unreadable ({type(err).__name__}: {err}).") from None
    if not isinstance(state, dict) or state.get("version") != _FORMAT_VERSION:
        found = state.get("version") if isinstance(state, dict) else type(state).__name__
        raise ReplayLoadError(f"{path / 'state.pt'}: replay format version {found!r}, this package reads "
                              f"{_FORMAT_VERSION}.")
    n = int(state["len"])
    try:
        data = TensorDict.load_memmap(path / "data") if n else None
        roots = TensorDict.load_memmap(path / "roots") if (path / "roots").is_dir() else None
    except Exception as err:  # noqa: BLE001
        raise ReplayLoadError(f"{path}: stored rows unreadable ({type(err).__name__}: {err}).") from None
    if data is not None and data.shape[0] != n:
        raise ReplayLoadError(f"{path / 'data'}: {data.shape[0]} rows, state.pt says {n}.")
    saved_cross = bool(cfg.get("cross_episodes", False))
    if rb is None:
        if memmap_dir is not None and Path(memmap_dir).resolve() == (path / "data").resolve():
            raise ValueError("load_replay_buffer: memmap_dir must differ from the saved data directory.")
        rb = make_replay_buffer(
            cfg["capacity"],
            batch_size if batch_size is not None else cfg["batch_size"],
            chunk_length if chunk_length is not None else cfg["chunk_length"],
            device=device if device is not None else cfg["device"],
            memmap_dir=memmap_dir,
            dequantize_bits=cfg["dequantize_bits"],
            pixel_keys=[_key_from_json(k) for k in cfg["pixel_keys"]],
            traj_key=_key_from_json(cfg["traj_key"]),
            exclude_keys=[_key_from_json(k) for k in cfg["exclude_keys"]],
            prefetch=prefetch,
            storage_device=None if device is not None or memmap_dir is not None else cfg.get("storage_device"),
            cross_episodes=saved_cross,
        )
    else:
        if not isinstance(rb, SequenceReplayBuffer):
            raise TypeError(f"load_replay_buffer: rb must come from make_replay_buffer, got {type(rb).__name__}.")
        given = {"device": device, "memmap_dir": memmap_dir, "batch_size": batch_size,
                 "chunk_length": chunk_length, "prefetch": prefetch}
        clash = [k for k, v in given.items() if v is not None]
        if clash:
            raise ValueError(f"load_replay_buffer: {clash} only apply to a new buffer; rb keeps its own settings.")
        if rb.storage.max_size != cfg["capacity"]:
            raise ValueError(
                f"load_replay_buffer: rb has capacity {rb.storage.max_size}, the saved buffer {cfg['capacity']}."
            )
        if rb.traj_key != unravel_key(_key_from_json(cfg["traj_key"])):
            raise ValueError(f"load_replay_buffer: rb.traj_key={rb.traj_key!r}, saved {cfg['traj_key']!r}.")
        if rb.cross_episodes != saved_cross:
            raise ValueError(f"load_replay_buffer: rb.cross_episodes={rb.cross_episodes}, saved {saved_cross}.")
        rb.empty()
    if isinstance(rb.storage, LazyMemmapStorage) and not rb.storage.initialized:
        rb.storage.existsok = True
    if n:
        index = torch.arange(n)
        rb.storage.set(index, data)
        rb.sampler.extend(index)
    rb.writer.load_state_dict(state["writer"])
    rb._episode_state = {**_fresh_episode_state(), **state["episodes"]}
    rb.root_keys = None if state["root_keys"] is None else [tuple(k) for k in state["root_keys"]]
    rb._root_owner = state["root_owner"]
    rb._roots = None if roots is None else roots.to(rb._storage_device()).clone()
    if rb._roots is None:  # an empty side store is not written
        rb._root_owner = None
    rb.bytes_per_step = state["bytes_per_step"]
    return rb
