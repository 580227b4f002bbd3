"""Sequence replay buffer: ``[B, L]`` chunks that never cross an episode boundary.

Built from TorchRL parts: a :class:`~torchrl.data.TensorDictReplayBuffer` with a
:class:`~torchrl.data.LazyTensorStorage` (on any device) or a
:class:`~torchrl.data.LazyMemmapStorage` (on disk), a
:class:`~torchrl.data.SliceSampler` and, on sampling, the
:class:`~torchrl_rssm.envs.Dequantize` transform.

How episode boundaries are found
--------------------------------
Storage rows are written in order; the sampler is
``SliceSampler(slice_len=L, traj_key="episode", strict_length=True)``: a chunk is
``L`` consecutive rows that all carry the same ``"episode"`` id. The buffer
writes that id itself when data is added (:meth:`SequenceReplayBuffer.extend`),
from whatever the data carries:

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

Episodes (or surviving pieces of overwritten episodes) shorter than ``L`` are
skipped by the sampler (``strict_length=True``); if no stored episode has ``L``
steps yet, :meth:`~SequenceReplayBuffer.sample` raises a ``RuntimeError`` that
says so. Chunk starts are uniform within an episode and episodes are picked
uniformly (not in proportion to their length; for dm_control's fixed-length
episodes this makes no difference).

What is stored
--------------
By default the buffer drops the policy's recorded latents (``state``/``belief``, root and
``next``) and its warm-start ``plan`` (:data:`DEFAULT_EXCLUDE_KEYS`): training starts every
chunk from the initial latent and filters the observations itself, so these are never read.
Both the root observation (``pixels``/``observation``, read at the first step of each
chunk, where the RSSM filters o_0 with a zero action) and ``("next", obs)`` are kept: for
64x64 pixels that is 2 x 12,288 bytes per step (uint8), about 24.6 kB per step with the
rest (1.2 GB per 50,000 steps). :meth:`SequenceReplayBuffer.describe` reports the capacity
and the estimated memory once the first write has fixed the row layout.

Sampled chunks also carry TorchRL's slice markers: ``("next", "truncated")``
(and ``("next", "done")``) is set at the last step of every chunk and
``is_init`` at the first (OR-ed with the stored flags); the RSSM starts every
chunk from a zero state, which is what ``is_init`` asks for.
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
from tensordict.utils import NestedKey, unravel_key
from torchrl.data import LazyMemmapStorage, LazyTensorStorage, SliceSampler, TensorDictReplayBuffer
from torchrl.envs.transforms import Compose, DeviceCastTransform

from ..envs.transforms import Dequantize

__all__ = ["DEFAULT_EXCLUDE_KEYS", "ChunkSliceSampler", "SequenceReplayBuffer", "load_replay_buffer",
           "make_replay_buffer", "save_replay_buffer"]

_END_KEYS: tuple[NestedKey, ...] = (("next", "done"), ("next", "terminated"), ("next", "truncated"))
_COLLECTOR_TRAJ_KEY: NestedKey = ("collector", "traj_ids")
_FORMAT_VERSION = 1
_LOG = logging.getLogger("torchrl_rssm.data")

#: Entries the buffer drops by default: the acting policy's recorded latents and warm-start
#: plan (training never reads them; see "What is stored").
DEFAULT_EXCLUDE_KEYS: tuple[NestedKey, ...] = (
    "state", "belief", "plan", ("next", "state"), ("next", "belief"), ("next", "plan"),
)


class _FlagRows:
    """Storage stand-in for ``SliceSampler._finalize_index``: reads only the flag entries.

    TorchRL's ``SliceSampler`` reads ``storage[index]`` (every entry, pixels
    included) only to get ``done``/``terminated``/``is_init`` for the slice
    markers, then the buffer gathers the same rows again. This view restricts
    that first read to the flags.
    """

    def __init__(self, storage, keys: Sequence[NestedKey]):
        self._storage = storage
        self._keys = keys

    def __getitem__(self, index):
        data = getattr(self._storage, "_storage", None)
        if not isinstance(data, TensorDictBase):
            return self._storage[index]
        present = set(data.keys(True, True))
        return data.select(*[k for k in self._keys if k in present])[index]

    def __getattr__(self, name):
        return getattr(self._storage, name)


class ChunkSliceSampler(SliceSampler):
    """``SliceSampler`` that does not gather whole rows just to read the slice flags.

    Same arguments and samples as :class:`~torchrl.data.SliceSampler`.
    """

    def _finalize_index(self, *, storage, **kwargs):
        keys = [k for k in (self.init_key,) if k is not None]
        if self.truncated_key is not None:
            keys += [_replace_last(self.truncated_key, "done"), _replace_last(self.truncated_key, "terminated")]
        return super()._finalize_index(storage=_FlagRows(storage, [unravel_key(k) for k in keys]), **kwargs)


def _replace_last(key: NestedKey, new: str) -> NestedKey:
    key = unravel_key(key)
    return (*key[:-1], new) if isinstance(key, tuple) else new


def _fresh_episode_state() -> dict[str, Any]:
    return {"next_id": 0, "open": False, "last_traj_ids": None, "last_episode": None}


class SequenceReplayBuffer(TensorDictReplayBuffer):
    """A ``TensorDictReplayBuffer`` that labels episodes on write and samples ``[B, L]`` chunks.

    Build it with :func:`make_replay_buffer`. Differences from its base class:

    * :meth:`extend` / :meth:`add` write a buffer-unique episode id under
      ``traj_key`` (see the module documentation) and drop ``exclude_keys``;
      the caller's tensordict is not modified.
    * :meth:`sample` returns ``[num_chunks, chunk_length]`` instead of a flat
      ``[num_chunks * chunk_length]`` batch. ``batch_size`` keeps TorchRL's
      meaning (transitions, a multiple of ``chunk_length``).
    * :meth:`dumps` / :meth:`loads` / :meth:`state_dict` also carry the episode
      counter, so appending after a restore continues the numbering.
    """

    def __init__(
        self,
        *,
        chunk_length: int,
        traj_key: NestedKey = "episode",
        exclude_keys: Sequence[NestedKey] = (),
        config: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.chunk_length = int(chunk_length)
        self.traj_key = unravel_key(traj_key)
        self.exclude_keys = [unravel_key(k) for k in exclude_keys]
        self.config = dict(config or {})
        self._episode_state = _fresh_episode_state()
        self._warned_no_boundaries = False
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
        return out

    def extend(self, tensordicts: TensorDictBase, *, update_priority: bool | None = None) -> torch.Tensor:
        """Adds a batch of consecutive steps ``[T]`` (or ``[*N, T]``) and labels its episodes.

        Returns the storage indices written.
        """
        if not isinstance(tensordicts, TensorDictBase):
            raise TypeError(
                f"SequenceReplayBuffer.extend: tensordicts must be a TensorDict, got {type(tensordicts).__name__}."
            )
        data = self._label_episodes(tensordicts)
        first = len(self) == 0 and self.bytes_per_step is None
        if first and data.numel():
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
                f"about {_human_bytes(total)} when full")

    def episode_lengths(self) -> torch.Tensor:
        """Stored steps of each stored episode (or surviving piece), in id order."""
        if len(self) == 0:
            return torch.zeros(0, dtype=torch.int64)
        ids = self.storage.get(slice(0, len(self))).get(self.traj_key).reshape(-1)
        return torch.unique(ids, return_counts=True)[1]

    def add(self, data: TensorDictBase) -> int:
        """Adds one step (a tensordict with empty batch size); returns its storage index."""
        if not isinstance(data, TensorDictBase):
            raise TypeError(f"SequenceReplayBuffer.add: data must be a TensorDict, got {type(data).__name__}.")
        index = self.extend(data.unsqueeze(0) if data.ndim == 0 else data)
        return index[0] if index.numel() == 1 else index

    # ----------------------------------------------------------------- sampling
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
                raise RuntimeError(
                    f"SequenceReplayBuffer.sample: no stored episode has chunk_length={self.chunk_length} steps yet "
                    f"(episodes shorter than chunk_length are skipped). Original error: {err}"
                ) from err
            raise
        data, info = out
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
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        episode_state = state_dict.pop("_episode_state", None)
        super().load_state_dict(state_dict)
        self._episode_state = dict(episode_state) if episode_state is not None else _recover_episode_state(self)

    def dumps(self, path: str | Path) -> None:
        """TorchRL's ``dumps`` plus the episode counter (writes the whole capacity; see
        :func:`save_replay_buffer` for a format that writes only the stored rows)."""
        super().dumps(path)
        with open(Path(path) / "episode_state.json", "w") as file:
            json.dump(self._episode_state, file)

    def loads(self, path: str | Path) -> None:
        super().loads(path)
        file = Path(path) / "episode_state.json"
        if file.exists():
            with open(file) as f:
                self._episode_state = json.load(f)
        else:
            self._episode_state = _recover_episode_state(self)

    def empty(self, empty_write_count: bool = True) -> None:
        super().empty(empty_write_count=empty_write_count)
        self._episode_state = _fresh_episode_state()


def _recover_episode_state(rb: SequenceReplayBuffer) -> dict[str, Any]:
    """Best-effort episode counter for a buffer restored without it: continue after the max id."""
    state = _fresh_episode_state()
    if len(rb):
        ids = rb.storage.get(slice(0, len(rb))).get(rb.traj_key, None)
        if ids is not None:
            state["next_id"] = int(ids.max()) + 1
    return state


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
) -> SequenceReplayBuffer:
    """Builds the sequence replay buffer: ``rb.sample()`` gives ``[batch_size, chunk_length]``.

    Args:
        capacity: maximum number of stored steps (transitions); the oldest are
            overwritten first.
        batch_size: chunks per sample (``B``; PlaNet: 50).
        chunk_length: steps per chunk (``L``; PlaNet: 50). Chunks never cross an
            episode boundary; shorter episodes are skipped.
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
        traj_key: where the buffer writes its episode ids (the sampler's ``traj_key``).
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
    device = torch.device(device)
    storage_device = device if storage_device is None else torch.device(storage_device)
    if memmap_dir is not None:
        storage = LazyMemmapStorage(capacity, scratch_dir=str(memmap_dir))
        storage_device = torch.device("cpu")
    else:
        storage = LazyTensorStorage(capacity, device=storage_device)
    sampler = ChunkSliceSampler(
        slice_len=chunk_length,
        traj_key=traj_key,
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
        config=config,
    )


def save_replay_buffer(rb: SequenceReplayBuffer, path: str | Path) -> Path:
    """Saves the buffer's stored rows, write cursor, episode counter and settings under ``path``.

    Only the ``len(rb)`` stored rows are written (TorchRL's ``rb.dumps`` writes
    the whole preallocated capacity), as memory-mapped files under
    ``path/data``; ``path/config.json`` holds the :func:`make_replay_buffer`
    arguments and ``path/state.pt`` the cursor and episode counter. Works for
    both storages; the copy is independent of ``memmap_dir``.

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
    n = len(rb)
    if n:
        data = rb.storage.get(slice(0, n))
        data.memmap(prefix=path / "data", copy_existing=True, existsok=True)
    state = {
        "version": _FORMAT_VERSION,
        "len": n,
        "writer": {k: int(v) for k, v in rb.writer.state_dict().items()},
        "episodes": dict(rb._episode_state),
    }
    torch.save(state, path / "state.pt")
    with open(path / "config.json", "w") as file:
        json.dump(rb.config, file, indent=1)
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
            transforms are kept). Its capacity and ``traj_key`` must match the
            saved ones. A ``LazyMemmapStorage`` that has not been written yet may
            overwrite memmap files left in its directory (e.g. by a killed run).
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
    """
    path = Path(path)
    if not (path / "config.json").exists() or not (path / "state.pt").exists():
        raise FileNotFoundError(f"load_replay_buffer: {str(path)!r} has no config.json/state.pt from save_replay_buffer.")
    with open(path / "config.json") as file:
        cfg = json.load(file)
    state = torch.load(path / "state.pt", weights_only=True)
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
        rb.empty()
    if isinstance(rb.storage, LazyMemmapStorage) and not rb.storage.initialized:
        rb.storage.existsok = True
    n = int(state["len"])
    if n:
        data = TensorDict.load_memmap(path / "data")
        index = torch.arange(n)
        rb.storage.set(index, data)
        rb.sampler.extend(index)
        rb.bytes_per_step = sum(v[0].numel() * v.element_size() for v in data.values(True, True))
    rb.writer.load_state_dict(state["writer"])
    rb._episode_state = dict(state["episodes"])
    return rb
