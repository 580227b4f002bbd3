"""Replay memory and sampling: each observation stored once, against TorchRL's plain buffer.

Rows (``ours_ms``: this package's ``make_replay_buffer``, which stores a root observation
only where it is not the previous step's next observation and rebuilds chunks at sampling;
``torchrl_ms``: TorchRL's ``TensorDictReplayBuffer`` + ``LazyTensorStorage`` +
``SliceSampler(traj_key="episode", strict_length=True)`` storing every root and next entry,
with the same ``Dequantize`` transform, i.e. the layout this package stored before):

- ``replay sample pixels 64x64 B=<B> L=<L>``: one ``[B, L]`` batch of 64x64 RGB uint8 steps
  (dequantised to float on the way out). The note gives both buffers' bytes per stored step.
- ``replay sample state <D>-dim B=<B> L=<L>``: the same with a state vector and no pixels.
- ``replay extend pixels 64x64 T=<T>``: writing one episode of ``T`` steps (ours also compares
  each root observation with the previous next observation).
- ``replay sample cross-episodes pixels 64x64 B=<B> L=<L> episodes of <E>``: the
  ``cross_episodes=True`` buffer (slices of the stream, chunks crossing short episodes); the
  TorchRL side is the same plain ``SliceSampler`` over a stream id.

The data is synthetic (random frames in the collector's layout: root observation at ``t`` =
next observation at ``t - 1`` within an episode), so no environment is stepped.

    python benchmarks/bench_replay.py [--quick] [--json PATH] [--device cuda]
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import median_ms, parse_args, report, row  # noqa: E402

from tensordict import TensorDict  # noqa: E402
from torchrl.data import LazyTensorStorage, SliceSampler, TensorDictReplayBuffer  # noqa: E402
from torchrl.envs.transforms import Compose, DeviceCastTransform  # noqa: E402

from torchrl_rssm.data import make_replay_buffer  # noqa: E402
from torchrl_rssm.envs import Dequantize  # noqa: E402


def episode(length: int, pixels: bool, state_dim: int, g: torch.Generator, action_dim: int = 6) -> TensorDict:
    """One episode in a TorchRL collector's layout (root at t = next at t - 1)."""
    t = torch.arange(length)
    data = {"action": torch.randn(length, action_dim, generator=g), ("next", "reward"): torch.randn(length, 1, generator=g),
            "step_count": t.unsqueeze(-1), ("next", "step_count"): (t + 1).unsqueeze(-1),
            "is_init": (t == 0).unsqueeze(-1), ("next", "done"): (t == length - 1).unsqueeze(-1),
            ("next", "terminated"): torch.zeros(length, 1, dtype=torch.bool),
            ("next", "truncated"): (t == length - 1).unsqueeze(-1)}
    if pixels:
        frames = torch.randint(0, 256, (length + 1, 3, 64, 64), generator=g, dtype=torch.uint8)
        data["pixels"], data[("next", "pixels")] = frames[:-1], frames[1:]
    else:
        obs = torch.randn(length + 1, state_dim, generator=g)
        data["observation"], data[("next", "observation")] = obs[:-1], obs[1:]
    return TensorDict(data, [length])


def plain_buffer(capacity: int, batch: int, chunk: int, device: str, traj_key="episode"):
    transforms = [] if device == "cpu" else [DeviceCastTransform(device, orig_device="cpu")]
    transforms.append(Dequantize(5))
    return TensorDictReplayBuffer(
        storage=LazyTensorStorage(capacity), batch_size=batch * chunk, transform=Compose(*transforms),
        sampler=SliceSampler(slice_len=chunk, traj_key=traj_key, strict_length=True, cache_values=True))


def stored_bytes(rb) -> float:
    """Bytes held per stored step (rows of the whole storage, plus our side store)."""
    if hasattr(rb, "nbytes"):
        return rb.nbytes() / len(rb)
    data = rb.storage._storage
    return sum(v.numel() * v.element_size() for v in data.values(True, True)) / len(rb)


def fill(ours, plain, episodes: list[TensorDict], stream: bool = False) -> None:
    for data in episodes:
        index = ours.extend(data)
        key = ("_replay", "stream") if stream else "episode"
        plain.extend(data.clone(False).set(key, ours.storage.get(index)[key]))


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    device = args.device
    repeats = args.repeats or (5 if args.quick else 20)
    B, L = (16, 16) if args.quick else (50, 50)
    T = 100 if args.quick else 500
    n_episodes = 6 if args.quick else 60  # full: 30k pixel steps (ours 0.4 GB, TorchRL's 0.7 GB)
    g = torch.Generator().manual_seed(0)
    rows = []
    kw = {"device": device, "storage_device": "cpu"}
    for pixels in (True, False):
        eps = [episode(T, pixels, 5, g) for _ in range(n_episodes)]
        capacity = T * n_episodes
        ours = make_replay_buffer(capacity, B, L, **kw)
        plain = plain_buffer(capacity, B, L, device)
        fill(ours, plain, eps)
        assert len(ours) == len(plain) == capacity
        ours_ms = median_sample(ours, repeats, device)
        plain_ms = median_sample(plain, repeats, device)
        what = "pixels 64x64" if pixels else "state 5-dim"
        rows.append(row(f"replay sample {what} B={B} L={L}", ours_ms, plain_ms, device,
                        {"capacity": capacity, "episode_steps": T, "batch": B, "chunk": L},
                        f"bytes/step: ours {stored_bytes(ours):,.0f}, TorchRL (root and next stored) "
                        f"{stored_bytes(plain):,.0f}"))
        if pixels:
            ours_w, plain_w = make_replay_buffer(capacity, B, L, **kw), plain_buffer(capacity, B, L, device)
            fill(ours_w, plain_w, eps[:1])
            new = eps[1]
            labelled = new.clone(False).set("episode", torch.full((T,), 1))
            ours_ms = median_ms(lambda rb=ours_w, d=new: rb.extend(d), 1, repeats)
            plain_ms = median_ms(lambda rb=plain_w, d=labelled: rb.extend(d), 1, repeats)
            rows.append(row(f"replay extend pixels 64x64 T={T}", ours_ms, plain_ms, device,
                            {"capacity": capacity, "episode_steps": T},
                            "ours compares each root observation with the previous next observation"))
    # the cross-episodes buffer over short episodes (DreamerV3's replay)
    short = 5
    eps = [episode(short, True, 5, g) for _ in range(T * n_episodes // short // 4)]
    capacity = short * len(eps)
    ours = make_replay_buffer(capacity, B, L, cross_episodes=True, **kw)
    plain = plain_buffer(capacity, B, L, device, traj_key=("_replay", "stream"))
    fill(ours, plain, eps, stream=True)
    rows.append(row(f"replay sample cross-episodes pixels 64x64 B={B} L={L} episodes of {short}",
                    median_sample(ours, repeats, device), median_sample(plain, repeats, device), device,
                    {"capacity": capacity, "episode_steps": short, "batch": B, "chunk": L},
                    f"bytes/step: ours {stored_bytes(ours):,.0f} (a root image per {short}-step episode), "
                    f"TorchRL {stored_bytes(plain):,.0f}"))
    report(rows, args.json)


def median_sample(rb, repeats: int, device: str) -> float:
    return median_ms(rb.sample, warmup=2, repeats=repeats, device=device)


if __name__ == "__main__":
    main()
