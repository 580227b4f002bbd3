"""Sequence replay buffer: episode-respecting [B, L] chunks, dequantisation, save/restore, collectors."""
import os

os.environ.setdefault("MUJOCO_GL", "egl")

import pytest  # noqa: E402
import torch  # noqa: E402
from tensordict import TensorDict  # noqa: E402

from torchrl_rssm.data import load_replay_buffer, make_replay_buffer, save_replay_buffer  # noqa: E402

PIX = (3, 8, 8)  # small images keep the tests fast; the buffer does not care about the size


def episode(ep: int, length: int, *, flags: bool = True, pixels: bool = True) -> TensorDict:
    """A hand-made episode: obs = 1000 * ep + t, pixels = 8 * (ep % 32) (on the 5-bit grid)."""
    t = torch.arange(length)
    data = {"obs": 1000.0 * ep + t.float(), "t": t, "action": torch.randn(length, 2)}
    if pixels:
        value = 8 * (ep % 32)
        data["pixels"] = torch.full((length, *PIX), value, dtype=torch.uint8)
        data[("next", "pixels")] = torch.full((length, *PIX), value, dtype=torch.uint8)
    if flags:
        data["is_init"] = (t == 0).unsqueeze(-1)
        data[("next", "done")] = (t == length - 1).unsqueeze(-1)
    return TensorDict(data, [length])


def assert_chunks_within_episodes(batch, chunk_length):
    ids = batch["episode"]
    assert (ids == ids[:, :1]).all(), "a chunk crosses an episode boundary"
    assert (batch["t"].diff(dim=1) == 1).all(), "steps in a chunk are not consecutive"
    assert ((batch["obs"] // 1000).diff(dim=1) == 0).all()
    assert batch.shape[1] == chunk_length


def test_chunks_never_cross_episodes_and_short_episodes_are_skipped():
    B, L = 16, 6
    rb = make_replay_buffer(1000, batch_size=B, chunk_length=L)
    lengths = [10, 3, 25, 5, 7, 40, 6]  # 3 and 5 are shorter than L
    for ep, n in enumerate(lengths):
        rb.extend(episode(ep, n))
    assert len(rb) == sum(lengths) and rb.num_episodes == len(lengths)
    seen = set()
    for _ in range(60):
        batch = rb.sample()
        assert batch.shape == (B, L)
        assert_chunks_within_episodes(batch, L)
        seen |= set((batch["obs"][:, 0] // 1000).long().tolist())
    assert seen == {0, 2, 4, 5, 6}  # every episode with >= L steps, none shorter


def test_chunk_sampler_matches_torchrl_slice_sampler():
    """Our sampler keeps the rows TorchRL's reads for the slice flags (they become the sample): same chunks, same flags."""
    from torchrl.data import SliceSampler

    rb = make_replay_buffer(300, batch_size=10, chunk_length=4, dequantize_bits=None)
    for ep in range(6):
        rb.extend(episode(ep, 9 + ep))
    ours = rb.sampler
    plain = SliceSampler(slice_len=4, traj_key="episode", strict_length=True, cache_values=True)
    results = []
    for sampler in (ours, plain):
        rb._sampler = sampler
        sampler._rng = torch.Generator().manual_seed(0)
        results.append(rb.sample())
    rb._sampler = ours
    for key in ("obs", "episode", "is_init", ("next", "done"), ("next", "truncated"), ("next", "terminated")):
        assert torch.equal(results[0][key], results[1][key]), key
    assert results[0]["is_init"][:, 0].all() and results[0]["next", "truncated"][:, -1].all()


def test_pixels_stored_uint8_sampled_dequantized():
    rb = make_replay_buffer(200, batch_size=8, chunk_length=4)
    for ep in range(5):
        rb.extend(episode(ep, 12))
    stored = rb.steps(slice(0, len(rb)))
    assert stored["pixels"].dtype == torch.uint8 and stored["next", "pixels"].dtype == torch.uint8
    batch, info = rb.sample(return_info=True)
    index = info["index"][0].reshape(batch.shape)
    for key in ("pixels", ("next", "pixels")):
        y = batch[key]
        assert y.dtype == torch.float32 and y.shape == (8, 4, *PIX)
        assert y.min() >= -0.5 and y.max() < 0.5
        grid = (torch.floor((y + 0.5) * 32) * 8).to(torch.uint8)
        assert torch.equal(grid, stored[key][index])
    assert rb.steps(slice(0, len(rb)))["pixels"].dtype == torch.uint8  # storage untouched
    raw = make_replay_buffer(200, batch_size=8, chunk_length=4, dequantize_bits=None)
    raw.extend(episode(0, 12))
    assert raw.sample()["pixels"].dtype == torch.uint8


def test_episode_split_across_extends_continues_and_ids_stay_unique():
    rb = make_replay_buffer(500, batch_size=32, chunk_length=5)
    ep = episode(0, 20)
    rb.extend(ep[:8])  # unfinished episode...
    rb.extend(ep[8:])  # ...continued by the next batch (no is_init there)
    rb.extend(episode(1, 10))
    ids = rb.steps(slice(0, len(rb)))["episode"]
    assert ids.tolist() == [0] * 20 + [1] * 10
    crossing = False
    for _ in range(20):
        batch = rb.sample()
        assert_chunks_within_episodes(batch, 5)
        crossing |= bool(((batch["t"][:, 0] < 8) & (batch["t"][:, -1] >= 8)).any())
    assert crossing  # chunks do span the write boundary inside the episode
    # hand-written ids reused (0 again) and collector traj_ids restarting at 0 still give new episodes
    again = episode(0, 10, flags=False)
    again["episode"] = torch.zeros(10, dtype=torch.long)
    rb.extend(again)
    again2 = episode(0, 10, flags=False)
    again2["episode"] = torch.ones(10, dtype=torch.long)
    rb.extend(again2)
    coll = episode(0, 12, flags=False)
    coll["collector", "traj_ids"] = torch.tensor([0] * 6 + [1] * 6)
    rb.extend(coll)
    ids = rb.steps(slice(0, len(rb)))["episode"]
    assert ids[30:].tolist() == [2] * 10 + [3] * 10 + [4] * 6 + [5] * 6
    assert rb.num_episodes == 6


def test_batched_data_rows_become_separate_pieces():
    rb = make_replay_buffer(500, batch_size=8, chunk_length=3)
    data = torch.stack([episode(0, 6, flags=False), episode(1, 6, flags=False)])  # [N=2, T=6], no flags
    with pytest.warns(UserWarning, match="none of is_init"):
        rb.extend(data)
    ids = rb.steps(slice(0, len(rb)))["episode"]
    assert ids.tolist() == [0] * 6 + [1] * 6
    assert_chunks_within_episodes(rb.sample(), 3)


def test_adding_while_sampling_and_wrapping_at_capacity():
    L = 5
    rb = make_replay_buffer(50, batch_size=16, chunk_length=L)
    rb.extend(episode(0, 12))
    assert set(rb.sample()["episode"].unique().tolist()) == {0}
    for ep in range(1, 12):  # 144 steps into 50 slots: the storage wraps around twice
        rb.extend(episode(ep, 12))
        batch = rb.sample()
        assert_chunks_within_episodes(batch, L)
        assert len(rb) == min(50, 12 * (ep + 1))
    live = set(rb.steps(slice(0, 50))["episode"].tolist())
    assert live == {7, 8, 9, 10, 11}  # ep 7 partly overwritten (2 steps left)
    seen = set()
    for _ in range(40):
        batch = rb.sample()
        assert_chunks_within_episodes(batch, L)
        seen |= set(batch["episode"][:, 0].tolist())
    assert seen == {8, 9, 10, 11}  # the 2-step remainder of episode 7 is too short


def test_sampling_errors():
    rb = make_replay_buffer(100, batch_size=4, chunk_length=10)
    with pytest.raises(RuntimeError, match="empty"):
        rb.sample()
    rb.extend(episode(0, 5))
    with pytest.raises(RuntimeError, match="chunk_length=10"):
        rb.sample()
    with pytest.raises(ValueError, match="multiple of chunk_length"):
        rb.sample(batch_size=15)
    with pytest.raises(ValueError, match="chunk_length"):
        make_replay_buffer(10, batch_size=4, chunk_length=20)
    with pytest.raises(ValueError, match="batch_size"):
        make_replay_buffer(10, batch_size=0, chunk_length=2)
    with pytest.raises(TypeError, match="TensorDict"):
        rb.extend({"obs": torch.zeros(3)})


def test_exclude_keys_drops_root_pixels():
    rb = make_replay_buffer(100, batch_size=4, chunk_length=3, exclude_keys=["pixels"])
    data = episode(0, 10)
    rb.extend(data)
    assert "pixels" in data.keys()  # the caller's data is untouched
    batch = rb.sample()
    assert "pixels" not in batch.keys() and batch["next", "pixels"].dtype == torch.float32


@pytest.mark.parametrize("memmap", [False, True])
def test_save_load_round_trip(tmp_path, memmap):
    kwargs = {"memmap_dir": tmp_path / "mm"} if memmap else {}
    rb = make_replay_buffer(60, batch_size=6, chunk_length=4, dequantize_bits=None, **kwargs)
    for ep in range(7):  # 70 steps into 60 slots: saved while wrapped around
        rb.extend(episode(ep, 10))
    rb.extend(episode(7, 6)[:3])  # an unfinished episode at the end
    save_replay_buffer(rb, tmp_path / "ckpt")
    for target in [None, tmp_path / "mm2"]:
        rb2 = load_replay_buffer(tmp_path / "ckpt", memmap_dir=target)
        assert len(rb2) == len(rb) == 60
        before, after = rb.steps(slice(0, 60)), rb2.steps(slice(0, 60))
        for key in ("episode", "obs", "pixels", ("next", "pixels"), ("next", "done")):
            assert torch.equal(before[key], after[key]), key
        assert rb2.writer.state_dict() == rb.writer.state_dict()
        # same sampler RNG -> same chunks
        rb.sampler._rng, rb2.sampler._rng = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
        s1, s2 = rb.sample(), rb2.sample()
        assert torch.equal(s1["obs"], s2["obs"]) and torch.equal(s1["pixels"], s2["pixels"])
        assert_chunks_within_episodes(s2, 4)
        # appending continues the unfinished episode and the numbering, overwriting the same slots
        rb2.extend(episode(7, 6)[3:])
        rb2.extend(episode(8, 5))
        tail = rb2.steps(slice(0, 60))
        assert tail["episode"][13:16].tolist() == [7, 7, 7] and tail["episode"][16:21].tolist() == [8] * 5
        assert len(list((tmp_path / "ckpt").rglob("*"))) > 0
    if memmap:
        assert any((tmp_path / "mm2").rglob("*.memmap"))
    # resuming into a freshly built buffer (e.g. a restarted run whose memmap dir still holds old files)
    if memmap:  # memmap files left behind by a killed run
        stale = make_replay_buffer(60, batch_size=6, chunk_length=4, memmap_dir=tmp_path / "stale")
        stale.extend(episode(99, 10))
        del stale
        kwargs = {"memmap_dir": tmp_path / "stale"}
    fresh = make_replay_buffer(60, batch_size=6, chunk_length=4, dequantize_bits=None, **kwargs)
    assert load_replay_buffer(tmp_path / "ckpt", fresh) is fresh
    assert torch.equal(fresh.steps(slice(0, 60))["obs"], rb.steps(slice(0, 60))["obs"])
    assert fresh.num_episodes == rb.num_episodes and fresh.writer.state_dict() == rb.writer.state_dict()
    with pytest.raises(ValueError, match="capacity"):
        load_replay_buffer(tmp_path / "ckpt", make_replay_buffer(61, batch_size=6, chunk_length=4))
    with pytest.raises(ValueError, match="new buffer"):
        load_replay_buffer(tmp_path / "ckpt", fresh, device="cpu")


def test_dumps_loads_and_state_dict_keep_episode_counter(tmp_path):
    """``rb.dumps``/``rb.loads`` are save_replay_buffer/load_replay_buffer (one format); state_dict too."""
    rb = make_replay_buffer(40, batch_size=2, chunk_length=3)
    rb.extend(episode(0, 10))
    rb.extend(episode(1, 4)[:2])
    rb.dumps(tmp_path / "d")
    assert (tmp_path / "d" / "manifest.json").is_file() and (tmp_path / "d" / "state.pt").is_file()
    rb2 = make_replay_buffer(40, batch_size=2, chunk_length=3)
    rb2.loads(tmp_path / "d")
    assert len(rb2) == 12 and rb2.num_episodes == 2
    rb2.extend(episode(1, 4)[2:])
    assert rb2.steps(slice(0, 14))["episode"].tolist() == [0] * 10 + [1] * 4
    sd = rb2.state_dict()
    rb3 = make_replay_buffer(40, batch_size=2, chunk_length=3)
    rb3.load_state_dict(sd)
    assert rb3.num_episodes == 2 and len(rb3) == 14
    assert torch.equal(rb3.steps(slice(0, 14))["pixels"], rb2.steps(slice(0, 14))["pixels"])


try:  # torchrl 0.14 renamed SyncDataCollector to Collector
    from torchrl.collectors import SyncDataCollector
except ImportError:
    from torchrl.collectors import Collector as SyncDataCollector


@pytest.mark.parametrize("buffer_in_collector", [False, True])
def test_with_sync_data_collector(buffer_in_collector):
    from torchrl_rssm.envs import make_env

    env = make_env("dmc:cartpole-swingup", max_episode_steps=6, seed=0)
    rb = make_replay_buffer(100, batch_size=8, chunk_length=3)
    # 2 episodes of 6 steps in batches of 4: the first episode is split across batches
    extra = {"replay_buffer": rb} if buffer_in_collector else {}
    collector = SyncDataCollector(env, policy=None, frames_per_batch=4, total_frames=12, **extra)
    for data in collector:
        if not buffer_in_collector:
            assert data["pixels"].dtype == torch.uint8
            rb.extend(data)
    collector.shutdown()
    assert len(rb) == 12 and rb.num_episodes == 2
    stored = rb.steps(slice(0, 12))
    assert stored["episode"].tolist() == [0] * 6 + [1] * 6
    assert torch.equal(stored["episode"], stored["collector", "traj_ids"])
    for _ in range(5):
        batch = rb.sample()
        assert batch.shape == (8, 3)
        assert (batch["episode"] == batch["episode"][:, :1]).all()
        assert (batch["step_count"].squeeze(-1).diff(dim=1) == 1).all()
        assert batch["next", "pixels"].dtype == torch.float32 and batch["next", "pixels"].shape == (8, 3, 3, 64, 64)
        assert batch["pixels"].min() >= -0.5 and batch["pixels"].max() < 0.5


def _three_episodes_in_one_extend(flag: str) -> TensorDict:
    """Episodes of 4, 6 and 5 steps, concatenated, carrying only one boundary flag."""
    data = torch.cat([episode(ep, n, pixels=False) for ep, n in enumerate((4, 6, 5))])
    if flag == "is_init":
        del data["next", "done"]
    else:
        del data["is_init"]
    return data


@pytest.mark.parametrize("flag", ["is_init", "done"])
def test_one_extend_with_several_episodes_splits_on_each_flag_alone(flag):
    """Only ``is_init`` (or only ``("next", "done")``) present: still three episodes, split where they end."""
    rb = make_replay_buffer(100, batch_size=8, chunk_length=4, dequantize_bits=None)
    data = _three_episodes_in_one_extend(flag)
    assert set(data.keys(True, True)) & {"is_init", ("next", "done")} == {"is_init" if flag == "is_init"
                                                                        else ("next", "done")}
    rb.extend(data)
    ids = rb.steps(slice(0, len(rb)))["episode"]
    assert ids.tolist() == [0] * 4 + [1] * 6 + [2] * 5
    assert rb.episode_lengths().tolist() == [4, 6, 5]
    for _ in range(20):
        assert_chunks_within_episodes(rb.sample(), 4)


def test_recorded_latents_and_plan_are_not_stored_observations_stored_once():
    """Training never reads the policy's latents or warm-start plan; each observation is stored once."""
    from torchrl_rssm.data import DEFAULT_EXCLUDE_KEYS

    data = episode(0, 6)
    for key in ("state", "belief", "plan", ("next", "state"), ("next", "belief"), ("next", "plan")):
        data[key] = torch.randn(6, 3)
    rb = make_replay_buffer(50, batch_size=1, chunk_length=3)
    rb.extend(data)
    raw = set(rb.storage.get(slice(0, 6)).keys(True, True))
    assert not raw & {"state", "belief", "plan", ("next", "state"), ("next", "belief"), ("next", "plan")}
    assert {("next", "pixels"), "obs", "action"} <= raw and "pixels" not in raw  # root pixels: side store
    assert {"pixels", ("next", "pixels"), "obs", "action"} <= set(rb.steps(slice(0, 6)).keys(True, True))
    assert rb.root_keys == [("pixels",)]
    assert len(DEFAULT_EXCLUDE_KEYS) == 6
    # the size report: bytes of one stored step, counted by hand
    per_step = (3 * 8 * 8 * 1        # pixels, once (next; uint8)
                + 4 + 8 + 2 * 4     # obs (float32), t (int64), action (2 x float32)
                + 1 + 1 + 8         # is_init, ("next", "done"), episode id (int64)
                + 8)                # the row's slot in the side store of root observations (int64)
    assert rb.bytes_per_step == per_step
    assert f"{per_step * 50 / 1e3:.1f} kB when full" in rb.describe()
    assert "capacity 50 steps on cpu" in rb.describe()
    keep_all = make_replay_buffer(50, batch_size=1, chunk_length=3, exclude_keys=())
    keep_all.extend(data)
    assert ("next", "belief") in keep_all.steps(slice(0, 6)).keys(True, True)


def test_storage_device_is_recorded_and_samples_move_to_device():
    """Storage in host memory, sampled batches on the training device (the CUDA half runs where CUDA is)."""
    from torchrl.envs.transforms import DeviceCastTransform

    same = make_replay_buffer(50, batch_size=2, chunk_length=3, dequantize_bits=None, storage_device="cpu")
    same.extend(episode(0, 8))
    assert same.config["storage_device"] == "cpu" and same.config["device"] == "cpu"
    assert not any(isinstance(t, DeviceCastTransform) for t in same.transform)
    assert same.sample()["obs"].device.type == "cpu"
    if torch.cuda.is_available():  # DeviceCastTransform(cuda) touches CUDA when built
        rb = make_replay_buffer(50, batch_size=2, chunk_length=3, device="cuda", storage_device="cpu")
        rb.extend(episode(0, 8))
        assert rb.steps(slice(0, 1))["obs"].device.type == "cpu"
        batch = rb.sample()
        assert batch["obs"].device.type == "cuda" and batch["next", "pixels"].dtype == torch.float32
        assert rb.config["storage_device"] == "cpu" and rb.config["device"] == "cuda"


# ---------------------------------------------------------------- each observation stored once
def _stream_of_episodes(lengths, seed=0, pix=PIX, break_rule_in=None):
    """Collector-like data: root observation at t = next observation at t - 1 within an episode."""
    g = torch.Generator().manual_seed(seed)
    eps = []
    for ep, n in enumerate(lengths):
        frames = torch.randint(0, 32, (n + 1, *pix), generator=g, dtype=torch.uint8) * 8
        obs = torch.randn(n + 1, 3, generator=g)
        t = torch.arange(n)
        data = TensorDict({
            "pixels": frames[:-1], ("next", "pixels"): frames[1:],
            "observation": obs[:-1], ("next", "observation"): obs[1:],
            "step_count": t.unsqueeze(-1), ("next", "step_count"): (t + 1).unsqueeze(-1),
            "action": torch.randn(n, 2, generator=g), ("next", "reward"): torch.randn(n, 1, generator=g),
            "is_init": (t == 0).unsqueeze(-1), ("next", "done"): (t == n - 1).unsqueeze(-1),
        }, [n])
        if ep == break_rule_in:  # data that does not follow the rule is stored as given
            data["pixels"] = torch.randint(0, 256, (n, *pix), generator=g, dtype=torch.uint8)
        eps.append(data)
    return eps


def _old_layout_buffer(capacity, batch_size, chunk_length, dequantize_bits=5):
    """TorchRL's plain buffer storing every root entry: what this package's buffer stored before."""
    from torchrl.data import LazyTensorStorage, SliceSampler, TensorDictReplayBuffer
    from torchrl_rssm.envs import Dequantize

    return TensorDictReplayBuffer(
        storage=LazyTensorStorage(capacity), batch_size=batch_size * chunk_length,
        sampler=SliceSampler(slice_len=chunk_length, traj_key="episode", strict_length=True, cache_values=True),
        transform=Dequantize(dequantize_bits) if dequantize_bits else None)


def test_sampled_chunks_equal_the_old_layout_through_wraparound():
    """Same data, same seeds: the compact buffer returns exactly what a buffer of every root entry does."""
    B, L, C = 6, 4, 70
    ours, old = make_replay_buffer(C, batch_size=B, chunk_length=L), _old_layout_buffer(C, B, L)
    lengths = [9, 13, 5, 11, 3, 17, 8, 12, 6, 14, 10, 7, 15, 9]  # 159 steps into 70 slots: wraps twice
    for i, data in enumerate(_stream_of_episodes(lengths, break_rule_in=5)):
        pieces = [data[:4], data[4:]] if i % 3 == 0 else [data]  # episodes split across writes
        for piece in pieces:
            index = ours.extend(piece)
            old.extend(piece.clone().set("episode", ours.storage.get(index)["episode"]))
            # stored rows, as written, are the same (root observations included)
            n = len(ours)
            expect, got = old.storage.get(slice(0, n)), ours.steps(slice(0, n))
            for key in expect.keys(True, True):
                if key != "index":
                    assert torch.equal(expect[key], got[key]), key
            if any(int(x) >= L for x in ours.episode_lengths()):
                for seed in range(3):
                    for rb in (ours, old):
                        rb.sampler._rng = torch.Generator().manual_seed(seed)
                    torch.manual_seed(seed)  # the dequantisation noise
                    a = ours.sample()
                    torch.manual_seed(seed)
                    b = old.sample().reshape(B, L)
                    assert set(a.keys(True, True)) == set(b.keys(True, True))
                    for key in b.keys(True, True):
                        assert torch.equal(a[key], b[key]), key
    # the side store holds about one root observation per stored episode, not one per step
    assert len(ours) == C and int((ours._root_owner >= 0).sum()) <= 12
    assert ours.storage.get(slice(0, C)).get("pixels", None) is None


def test_bytes_per_stored_64x64_pixel_step():
    """A collected 64x64 RGB step costs at most 13.5 kB (24.6 kB when the root image was stored too)."""
    from torchrl_rssm.envs import make_env

    env = make_env("dmc:cartpole-swingup", max_episode_steps=50, seed=0)
    env.set_seed(0)
    data = torch.cat([env.rollout(50, break_when_any_done=False) for _ in range(2)])
    assert data["pixels"].shape[-3:] == (3, 64, 64) and data["pixels"].dtype == torch.uint8
    ours = make_replay_buffer(len(data), batch_size=2, chunk_length=8)
    ours.extend(data[:50])
    ours.extend(data[50:])
    per_step = ours.nbytes() / len(ours)  # everything held: rows (full capacity) and the side store
    assert ours.bytes_per_step <= 13_500 and per_step <= 13_500, (ours.bytes_per_step, per_step)
    old = _old_layout_buffer(len(data), 2, 8)
    old.extend(data.clone().set("episode", torch.arange(100) // 50))
    old_bytes = sum(v.numel() * v.element_size() for v in old.storage.get(slice(0, 100)).values(True, True)) / 100
    assert old_bytes > 24_500 and per_step < 0.55 * old_bytes
    assert torch.equal(ours.steps(slice(0, 100))["pixels"], data["pixels"])


# ---------------------------------------------------------------- chunks across episodes
def test_one_step_episodes_sampled_in_chunks_of_8_across_episodes():
    """cross_episodes: 1-step episodes train; is_init at each start; terminated and truncated kept apart."""
    n = 40
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 32, (n, *PIX), generator=g, dtype=torch.uint8) * 8  # reset frames
    last = torch.randint(0, 32, (n, *PIX), generator=g, dtype=torch.uint8) * 8
    truncated = torch.arange(n) % 3 == 1  # every third episode ends by the time limit
    data = TensorDict({
        "pixels": frames, ("next", "pixels"): last, "obs": torch.arange(n).float(),
        "is_init": torch.ones(n, 1, dtype=torch.bool),
        ("next", "terminated"): (~truncated).unsqueeze(-1), ("next", "truncated"): truncated.unsqueeze(-1),
        ("next", "done"): torch.ones(n, 1, dtype=torch.bool),
    }, [n])
    rb = make_replay_buffer(100, batch_size=5, chunk_length=8, dequantize_bits=None, cross_episodes=True)
    rb.extend(data[:25])
    rb.extend(data[25:])  # one environment's stream continues across writes
    assert rb.num_episodes == n and rb.episode_lengths().tolist() == [1] * n
    for _ in range(10):
        batch, info = rb.sample(return_info=True)
        rows = info["index"][0].reshape(5, 8)
        assert batch.shape == (5, 8)
        assert (batch["obs"].diff(dim=1) == 1).all()  # consecutive steps of the stream
        assert batch["is_init"].all()
        assert torch.equal(batch["pixels"], frames[rows]) and torch.equal(batch["next", "pixels"], last[rows])
        assert torch.equal(batch["next", "terminated"].squeeze(-1), ~truncated[rows])
        end = torch.zeros(5, 8, dtype=torch.bool)
        end[:, -1] = True
        assert torch.equal(batch["next", "truncated"].squeeze(-1), truncated[rows] | end)
        assert not (batch["next", "terminated"] & batch["next", "truncated"]).squeeze(-1)[:, :-1].any()
    # the default (per-episode) buffer refuses them: no episode has 8 steps
    per_episode = make_replay_buffer(100, batch_size=5, chunk_length=8, dequantize_bits=None)
    per_episode.extend(data)
    with pytest.raises(RuntimeError, match="no stored episode has chunk_length=8"):
        per_episode.sample()


def test_cross_episodes_resets_only_at_episode_starts_and_keeps_streams_apart():
    rb = make_replay_buffer(400, batch_size=16, chunk_length=6, cross_episodes=True)
    lengths = [1, 4, 2, 7, 1, 1, 3, 9, 2, 5]
    stream = torch.cat(_stream_of_episodes(lengths))
    stream["is_init"] = torch.zeros_like(stream["is_init"])  # boundaries from ("next", "done") alone
    rb.extend(stream[:13])
    rb.extend(stream[13:])
    starts = torch.zeros(len(stream), dtype=torch.bool)
    starts[torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)[:-1]))] = True
    assert torch.equal(rb.steps(slice(0, len(stream)))["is_init"].squeeze(-1), starts)
    # two environments in one [N=2, T] batch: each row its own stream piece
    two = torch.stack([torch.cat(_stream_of_episodes([3, 5], seed=s)) for s in (1, 2)])
    rb.extend(two)
    for _ in range(20):
        batch, info = rb.sample(return_info=True)
        rows = info["index"][0].reshape(16, 6)
        stored = rb.steps(slice(0, len(rb)))
        assert torch.equal(batch["is_init"].squeeze(-1)[:, 1:], stored["is_init"].squeeze(-1)[rows[:, 1:]])
        assert batch["is_init"][:, 0].all()
        assert ((rows.diff(dim=1)) == 1).all()  # slices never leave a stream piece
        piece = stored["_replay", "stream"] if ("_replay", "stream") in stored.keys(True) else None
        assert piece is None  # bookkeeping never shows
        raw = rb.storage.get(slice(0, len(rb)))["_replay", "stream"]
        assert (raw[rows] == raw[rows[:, :1]]).all()
        # root observation at t is next observation at t - 1 except at episode starts
        inside = ~batch["is_init"].squeeze(-1)[:, 1:]
        assert (batch["observation"][:, 1:][inside] == batch["next", "observation"][:, :-1][inside]).all()


def test_truncated_or_corrupted_replay_file_is_a_clear_error(tmp_path):
    from torchrl_rssm.data import ReplayLoadError

    rb = make_replay_buffer(100, batch_size=2, chunk_length=3)
    for data in _stream_of_episodes([10, 12]):
        rb.extend(data)
    save_replay_buffer(rb, tmp_path / "r")
    target = make_replay_buffer(100, batch_size=2, chunk_length=3)
    target.extend(_stream_of_episodes([7], seed=3)[0])
    big = max((p for p in (tmp_path / "r" / "data").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    payload = big.read_bytes()
    big.write_bytes(payload[: len(payload) // 2])
    with pytest.raises(ReplayLoadError, match=f"{big.name}: truncated") as err:
        load_replay_buffer(tmp_path / "r", target)
    assert "\n" not in str(err.value)
    assert len(target) == 7  # the buffer loaded into is left as it was
    big.write_bytes(bytes([payload[0] ^ 1]) + payload[1:])  # same size, one bit flipped
    with pytest.raises(ReplayLoadError, match=f"{big.name}: corrupted"):
        load_replay_buffer(tmp_path / "r")
    (tmp_path / "r" / "manifest.json").unlink()  # a save killed before its last file
    with pytest.raises(ReplayLoadError, match="manifest.json: missing"):
        load_replay_buffer(tmp_path / "r")


def test_cross_episodes_stream_wrapping_at_capacity_never_joins_newest_to_oldest():
    """One environment's stream overwrites the ring: chunks stay consecutive, observations exact."""
    rb = make_replay_buffer(30, batch_size=20, chunk_length=6, dequantize_bits=None, cross_episodes=True)
    n = 0
    for k in range(20):
        length = (1, 3, 2, 5)[k % 4]
        t = torch.arange(n, n + length)
        root = (t % 256).to(torch.uint8)
        root[0] = 255 - root[0]  # the reset observation is not the previous step's next one
        rb.extend(TensorDict({
            "obs": t.float(), "pixels": root.view(-1, 1, 1, 1).expand(length, *PIX).clone(),
            ("next", "pixels"): ((t + 1) % 256).to(torch.uint8).view(-1, 1, 1, 1).expand(length, *PIX).clone(),
            ("next", "terminated"): (torch.arange(length) == length - 1).unsqueeze(-1)}, [length]))
        n += length
        if len(rb) < 6:
            continue
        for _ in range(3):
            batch = rb.sample()
            step = batch["obs"].long()
            assert (step.diff(dim=1) == 1).all()  # never across the write cursor
            start = batch["is_init"].squeeze(-1) & (step > 0)
            expect = torch.where(start, 255 - step % 256, step % 256)
            inner = torch.ones_like(start)
            inner[:, 0] = False  # a chunk's first step is marked is_init whether or not an episode starts
            assert (batch["pixels"][..., 0, 0, 0].long()[inner] == expect[inner]).all()
            assert (batch["next", "pixels"][..., 0, 0, 0].long() == (step + 1) % 256).all()
    assert len(rb) == 30 and int((rb._root_owner >= 0).sum()) <= 30
