"""Environment factory and pixel transforms (BitDepth, Dequantize, ResizePixels)."""
import os

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from tensordict import TensorDict  # noqa: E402
from torchrl.data import Composite, OneHot, Unbounded, UnboundedDiscrete  # noqa: E402
from torchrl.envs import TensorDictPrimer  # noqa: E402
from torchrl.envs.utils import check_env_specs  # noqa: E402

from torchrl_rssm.envs import (  # noqa: E402
    DEFAULT_ACTION_REPEAT,
    PAPER_TASKS,
    BitDepth,
    Dequantize,
    GrayScalePixels,
    ResizePixels,
    available_envs,
    make_env,
)
from torchrl_rssm.modules import pixels_to_model  # noqa: E402

ALL_U8 = torch.arange(256, dtype=torch.uint8)


# ----------------------------------------------------------------- BitDepth
@pytest.mark.parametrize("bits", [1, 3, 5, 8])
def test_bitdepth_values_on_grid(bits):
    t = BitDepth(bits)
    step = 2 ** (8 - bits)
    out = t(TensorDict(pixels=ALL_U8.clone(), batch_size=[256]))["pixels"]
    assert out.dtype == torch.uint8
    assert torch.equal(out.long(), (ALL_U8.long() // step) * step)
    # idempotent, and grid values pass unchanged
    assert torch.equal(t._apply_transform(out), out)
    grid = torch.arange(0, 256, step, dtype=torch.uint8)
    assert torch.equal(t._apply_transform(grid), grid)
    # the model's conversion gives PlaNet's values exactly
    planet = torch.floor(ALL_U8.double() / step) / 2**bits - 0.5
    assert torch.equal(pixels_to_model(out).double(), planet)


def test_bitdepth_layouts_errors_and_spec():
    t = BitDepth(5)
    hwc = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    assert torch.equal(t._apply_transform(hwc), (hwc // 8) * 8)
    with pytest.raises(TypeError, match="uint8"):
        t._apply_transform(hwc.float())
    for bad in (0, 9, 5.0, True):
        with pytest.raises(ValueError, match="bits"):
            BitDepth(bad)
    spec = Composite(pixels=UnboundedDiscrete(shape=(3, 64, 64), dtype=torch.uint8))
    out = t.transform_observation_spec(spec)["pixels"]
    assert out.dtype == torch.uint8 and out.shape == (3, 64, 64)
    assert int(out.space.low.min()) == 0 and int(out.space.high.max()) == 248
    assert out.is_in(t._apply_transform(torch.full((3, 64, 64), 255, dtype=torch.uint8)))


# --------------------------------------------------------------- Dequantize
def test_dequantize_range_offset_and_grid():
    torch.manual_seed(0)
    x = BitDepth(5)._apply_transform(ALL_U8.repeat(400))  # every grid value, many times
    td = TensorDict({"pixels": x, ("next", "pixels"): x.clone()}, batch_size=[x.numel()])
    out = Dequantize(5)(td)
    for key in ("pixels", ("next", "pixels")):
        y = out[key]
        assert y.dtype == torch.float32
        assert y.min() >= -0.5 and y.max() < 0.5
        offset = y - pixels_to_model(x)
        assert offset.min() >= 0 and offset.max() < 1 / 32
        assert abs(offset.mean().item() - 1 / 64) < 5e-4  # half a quantisation step
        assert torch.equal((torch.floor((y + 0.5) * 32) * 8).to(torch.uint8), x)  # floor recovers the grid
    # without noise: exactly the model's conversion; floats pass unchanged
    assert torch.equal(Dequantize(5, noise=False)._apply_transform(x), pixels_to_model(x))
    f = torch.rand(5)
    assert Dequantize(5)._apply_transform(f) is f
    # missing keys are skipped (vector data passes through)
    assert "pixels" not in Dequantize(5)(TensorDict(observation=torch.zeros(3, 2), batch_size=[3])).keys()


def test_dequantize_top_value_stays_below_half(monkeypatch):
    # u = 1 - 2**-24 (the largest torch.rand value) would round 248/256 - 0.5 + u/32 up to 0.5 in float32
    x = torch.full((10,), 248, dtype=torch.uint8)
    monkeypatch.setattr(torch, "rand", lambda shape, **kw: torch.full(shape, 1 - 2**-24, **kw))
    y = Dequantize(5)._apply_transform(x)
    assert (y < 0.5).all() and (y > 0.49).all()


def test_dequantize_spec():
    spec = Composite(pixels=UnboundedDiscrete(shape=(3, 64, 64), dtype=torch.uint8))
    out = Dequantize(5, in_keys=["pixels"]).transform_observation_spec(spec)["pixels"]
    assert out.dtype == torch.float32 and out.shape == (3, 64, 64)


def test_resize_pixels():
    img = torch.full((2, 90, 120, 3), 77, dtype=torch.uint8)
    out = ResizePixels(64, channels_last=True)(TensorDict(pixels=img, batch_size=[2]))["pixels"]
    assert out.shape == (2, 3, 64, 64) and out.dtype == torch.uint8 and (out == 77).all()
    spec = Composite(pixels=Unbounded(shape=(90, 120, 3), dtype=torch.uint8))
    assert ResizePixels(64, channels_last=True).transform_observation_spec(spec)["pixels"].shape == (3, 64, 64)


# ------------------------------------------------------------------ make_env
def test_paper_tasks_and_names():
    assert PAPER_TASKS == {
        "dmc:cartpole-swingup": 8, "dmc:reacher-easy": 4, "dmc:cheetah-run": 4,
        "dmc:finger-spin": 2, "dmc:ball_in_cup-catch": 4, "dmc:walker-walk": 2,
    }
    for name, repeat in PAPER_TASKS.items():
        assert DEFAULT_ACTION_REPEAT[name[4:].split("-")[0]] == repeat
    names = available_envs("dmc")
    assert set(PAPER_TASKS) <= set(names)
    assert "gym:Pendulum-v1" in available_envs()


def test_dmc_pixels_env():
    env = make_env("dmc:cartpole-swingup", seed=0)
    assert env.action_repeat == 8 and env.max_episode_steps == 125
    spec = env.observation_spec["pixels"]
    assert spec.shape == (3, 64, 64) and spec.dtype == torch.uint8
    check_env_specs(env)
    td = env.rollout(1000, break_when_any_done=True)
    assert td.shape == (125,)  # 1000 env steps / action repeat 8
    assert td["next", "truncated"][-1].item() and not td["next", "done"][:-1].any()
    assert td["next", "step_count"][-1].item() == 125 and td["is_init"][0].item()
    px = td["next", "pixels"]
    assert px.dtype == torch.uint8 and px.shape == (125, 3, 64, 64)
    assert (px % 8 == 0).all() and px.float().std() > 0  # 5-bit grid, a real image
    assert td["action"].dtype == torch.float32 and td["next", "reward"].dtype == torch.float32


def test_dmc_action_repeat_matches_single_steps():
    """One agent step with repeat R == R environment steps (reward summed), pixel and vector envs alike."""
    actions = torch.linspace(-1, 1, 5).unsqueeze(-1)
    single = make_env("dmc:cartpole-swingup", from_pixels=False, action_repeat=1, seed=3)
    vec4 = make_env("dmc:cartpole-swingup", from_pixels=False, action_repeat=4, seed=3)
    pix4 = make_env("dmc:cartpole-swingup", from_pixels=True, pixels_only=False, action_repeat=4, seed=3)
    rewards = {}
    for name, env, repeat in (("single", single, 4), ("vec", vec4, 1), ("pix", pix4, 1)):
        td = env.reset()
        total, obs = [], []
        for a in actions:
            r = 0.0
            for _ in range(repeat):
                td = env.step(td.set("action", a.clone()))
                r += td["next", "reward"].item()
                td = td["next"].clone()
            total.append(r)
            obs.append(td["observation"])
        rewards[name] = (torch.tensor(total), torch.stack(obs))
    for name in ("vec", "pix"):
        torch.testing.assert_close(rewards[name][0], rewards["single"][0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(rewards[name][1], rewards["single"][1], rtol=1e-5, atol=1e-5)
    assert pix4.observation_spec["pixels"].shape == (3, 64, 64)


def test_dmc_vector_env_and_primer():
    primer = TensorDictPrimer(belief=Unbounded((4,)), state=Unbounded((3,)))
    env = make_env("dmc:walker-walk", from_pixels=False, seed=1, primers=primer)
    assert env.action_repeat == 2 and env.max_episode_steps == 500
    obs = env.observation_spec["observation"]
    assert obs.shape == (24,) and obs.dtype == torch.float32 and "pixels" not in env.observation_spec.keys()
    check_env_specs(env)
    td = env.reset()
    assert (td["belief"] == 0).all() and td["state"].shape == (3,)
    # same seed -> same initial states; another seed -> different ones
    first = [make_env("dmc:walker-walk", from_pixels=False, seed=s).reset()["observation"] for s in (7, 7, 8)]
    torch.testing.assert_close(first[0], first[1])
    assert not torch.allclose(first[0], first[2])


def test_gym_vector_env():
    env = make_env("gym:Pendulum-v1", from_pixels=False, seed=0)
    assert env.observation_spec["observation"].shape == (3,)
    assert env.action_repeat == 1 and env.max_episode_steps == 200
    check_env_specs(env)
    assert make_env("gym:Pendulum-v1", from_pixels=False, action_repeat=4).max_episode_steps == 50


class _ToyRender(gymnasium.Env):
    """Renders a frame whose value counts the environment steps (for the pixel path)."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, render_mode=None):
        self.observation_space = gymnasium.spaces.Box(-1, 1, (2,), np.float32)
        self.action_space = gymnasium.spaces.Box(-1, 1, (1,), np.float32)
        self.render_mode = render_mode
        self.t = 0

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.full(2, self.t / 100, np.float32), 1.0, False, False, {}

    def render(self):
        return np.full((90, 120, 3), self.t * 10, np.uint8)


def test_gym_pixels_env():
    if "ToyRender-v0" not in gymnasium.registry:
        gymnasium.register("ToyRender-v0", entry_point=_ToyRender, max_episode_steps=20)
    env = make_env("gym:ToyRender-v0", action_repeat=2, bit_depth=None)
    assert env.max_episode_steps == 10
    assert set(env.observation_spec.keys()) >= {"pixels"} and "observation" not in env.observation_spec.keys()
    check_env_specs(env)
    td = env.rollout(100, break_when_any_done=True)
    assert td.shape == (10,) and td["pixels"].shape == (10, 3, 64, 64) and td["pixels"].dtype == torch.uint8
    # rendered once per agent step, after both repeated steps; reward summed
    assert td["next", "pixels"][:, 0, 0, 0].tolist() == [20 * (i + 1) for i in range(10)]
    assert (td["next", "reward"] == 2).all()
    both = make_env("gym:ToyRender-v0", pixels_only=False)
    assert {"pixels", "observation"} <= set(both.observation_spec.keys())
    check_env_specs(both)


def test_gym_pixels_unsupported_renderer_is_explained():
    # Pendulum needs pygame to render, which this machine may lack: either it works or the error says why
    try:
        env = make_env("gym:Pendulum-v1")
    except RuntimeError as err:
        assert "from_pixels=False" in str(err)
    else:
        assert env.observation_spec["pixels"].shape == (3, 64, 64)


def test_unknown_names_and_bad_arguments():
    with pytest.raises(ValueError, match="cartpole-swingup") as info:
        make_env("dmc:cartpole-swingupp")
    assert "dmc:<domain>-<task>" in str(info.value) and "walker-walk" in str(info.value)
    with pytest.raises(ValueError, match="Pendulum-v1"):
        make_env("gym:Pendulum-v99")
    with pytest.raises(ValueError, match="backend"):
        make_env("atari:Pong")
    with pytest.raises(TypeError, match="name"):
        make_env(3)
    with pytest.raises(ValueError, match="action_repeat"):
        make_env("dmc:cartpole-swingup", action_repeat=0)
    with pytest.raises(ValueError, match="bit_depth"):
        make_env("dmc:cartpole-swingup", bit_depth=9)
    with pytest.raises(ValueError, match="max_episode_steps"):
        make_env("dmc:cartpole-swingup", max_episode_steps=-1)
    with pytest.raises(TypeError, match="primers"):
        make_env("dmc:cartpole-swingup", from_pixels=False, primers=[object()])


# -------------------------------------------------------------- grayscale
def test_grayscale_pixels_values_spec_and_errors():
    rgb = torch.randint(0, 256, (2, 4, 3, 5, 6), dtype=torch.uint8)
    out = GrayScalePixels()(TensorDict(pixels=rgb, batch_size=[2, 4]))["pixels"]
    r, g, b = rgb.double().unbind(-3)
    expected = (0.2989 * r + 0.587 * g + 0.114 * b).round().unsqueeze(-3)
    assert out.dtype == torch.uint8 and out.shape == (2, 4, 1, 5, 6)
    assert (out.double() - expected).abs().max() <= 1  # float32 rounding at .5 boundaries
    assert (out.double() == expected).float().mean() > 0.99
    white = torch.full((3, 2, 2), 255, dtype=torch.uint8)
    assert (GrayScalePixels()._apply_transform(white) == 255).all()
    one = torch.randint(0, 256, (1, 5, 5), dtype=torch.uint8)
    assert GrayScalePixels()._apply_transform(one) is one
    spec = GrayScalePixels().transform_observation_spec(Composite(pixels=Unbounded((3, 96, 80), dtype=torch.uint8)))
    assert spec["pixels"].shape == (1, 96, 80) and spec["pixels"].dtype == torch.uint8
    with pytest.raises(ValueError, match=r"channels-first \[\*B, 3, H, W\]"):
        GrayScalePixels()._apply_transform(torch.zeros(5, 5, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        GrayScalePixels()._apply_transform(torch.zeros(3, 5, 5))


# ------------------------------------------------- environment kwargs (dmc)
def test_dmc_env_kwargs_and_grayscale():
    short = make_env("dmc:cartpole-swingup", from_pixels=False, env_kwargs={"time_limit": 2})
    assert short.max_episode_steps == 25  # 2 s / 0.01 s = 200 physics steps, repeat 8
    with pytest.raises(ValueError, match="env_kwargs"):
        make_env("dmc:cartpole-swingup", from_pixels=False, env_kwargs={"no_such_kwarg": 1})
    with pytest.raises(ValueError, match="seed"):
        make_env("dmc:cartpole-swingup", seed=0, env_kwargs={"random": 1})
    rgb = make_env("dmc:cartpole-swingup", seed=0, bit_depth=None, image_size=(48, 80))
    gray = make_env("dmc:cartpole-swingup", seed=0, bit_depth=None, image_size=(48, 80), grayscale=True)
    assert gray.observation_spec["pixels"].shape == (1, 48, 80)
    a, b = rgb.reset()["pixels"], gray.reset()["pixels"]  # same seed, same first frame
    assert a.shape == (3, 48, 80) and b.shape == (1, 48, 80)
    torch.testing.assert_close(b, GrayScalePixels()._apply_transform(a), rtol=0, atol=0)
    check_env_specs(gray)


# ------------------------------------------ Gymnasium envs that observe images
class _ToyImage(gymnasium.Env):
    """Native image observations (no render): ``Box(0, 255, shape, uint8)``, ``Discrete(n)`` actions.

    Pixel (i, j, c) of the observation at step t is ``(offset + t + 10 i + j + 50 c) % 256``
    (channels-last), so layout changes are checked value by value.
    """

    metadata = {"render_modes": []}

    def __init__(self, shape=(60, 70, 3), n=4, offset=0, render_mode=None):
        self.shape, self.offset, self.t = tuple(shape), offset, 0
        self.observation_space = gymnasium.spaces.Box(0, 255, self.shape, np.uint8)
        self.action_space = gymnasium.spaces.Discrete(n)
        self.render_mode = render_mode

    def _obs(self):
        idx = np.indices(self.shape).astype(np.int64)
        value = self.offset + self.t + 10 * idx[0] + idx[1]
        if len(self.shape) == 3:
            value = value + 50 * idx[2]
        return (value % 256).astype(np.uint8)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        return self._obs(), float(action), False, False, {}


def _register_toy_image():
    if "ToyImage-v0" not in gymnasium.registry:
        gymnasium.register("ToyImage-v0", entry_point=_ToyImage, max_episode_steps=30)


def test_gym_native_image_env_channels_first_uint8_and_env_kwargs():
    _register_toy_image()
    env = make_env("gym:ToyImage-v0", image_size=(60, 70), bit_depth=None, env_kwargs={"offset": 7, "n": 3})
    spec = env.observation_spec["pixels"]
    assert spec.shape == (3, 60, 70) and spec.dtype == torch.uint8
    assert isinstance(env.action_spec, OneHot) and env.action_spec.shape == (3,)
    check_env_specs(env)
    td = env.rollout(4)
    raw = _ToyImage((60, 70, 3), offset=7)
    raw.reset()
    for t in range(4):
        expected = torch.from_numpy(raw._obs()).permute(2, 0, 1)  # env_kwargs reached the constructor
        assert torch.equal(td["pixels"][t], expected), t
        raw.step(0)
    # one-hot actions flow to the env: reward = the action's index
    assert torch.equal(td["next", "reward"].squeeze(-1), td["action"].float().argmax(-1).float())
    # resized (default 64), grayscale, bit depth: still channels-first uint8
    small = make_env("gym:ToyImage-v0", grayscale=True)
    px = small.reset()["pixels"]
    assert px.shape == (1, 64, 64) and px.dtype == torch.uint8 and (px % 8 == 0).all()
    check_env_specs(small)


def test_gym_native_grayscale_hw_image_under_observation_key():
    if "ToyImageHW-v0" not in gymnasium.registry:
        gymnasium.register("ToyImageHW-v0", entry_point=_ToyImage, kwargs={"shape": (50, 52)})
    env = make_env("gym:ToyImageHW-v0", image_size=(50, 52), bit_depth=None)
    assert set(env.observation_spec.keys()) >= {"pixels"} and "observation" not in env.observation_spec.keys()
    px = env.reset()["pixels"]
    raw = _ToyImage((50, 52))
    raw.reset()
    assert px.shape == (1, 50, 52) and torch.equal(px[0], torch.from_numpy(raw._obs()))
    check_env_specs(env)


def test_gym_native_image_bad_arguments_are_named():
    _register_toy_image()
    with pytest.raises(ValueError, match="from_pixels=True"):
        make_env("gym:ToyImage-v0", from_pixels=False)
    with pytest.raises(ValueError, match="grayscale=True needs from_pixels"):
        make_env("gym:Pendulum-v1", from_pixels=False, grayscale=True)
    with pytest.raises(ValueError, match="action_repeat"):
        make_env("gym:ToyImage-v0", env_kwargs={"frame_skip": 2})
    with pytest.raises(ValueError, match="env_kwargs.*gymnasium.make"):
        make_env("gym:ToyImage-v0", env_kwargs={"no_such_kwarg": 2})
    with pytest.raises(ValueError, match="env_kwargs must be a dict"):
        make_env("gym:ToyImage-v0", env_kwargs=[("offset", 1)])
    with pytest.raises(ValueError, match="image_size"):
        make_env("gym:ToyImage-v0", image_size=(64, 0))
    with pytest.raises(ValueError, match="grayscale must be a bool"):
        make_env("gym:ToyImage-v0", grayscale="yes")


def test_carracing_discrete_grayscale_96_trains_and_plans():
    """A Gymnasium image env with discrete actions end to end: env_kwargs, grayscale, 96x96 images,
    a few RSSMLoss + Adam updates on collected data, then planning with CEM (one-hot actions)."""
    from functools import partial

    from torchrl_rssm.envs import dequantize
    from torchrl_rssm.modules import make_world_model
    from torchrl_rssm.objectives import RSSMLoss
    from torchrl_rssm.policies import PlaNetPolicy

    torch.manual_seed(0)
    env = make_env("gym:CarRacing-v3", env_kwargs={"continuous": False}, grayscale=True, image_size=96,
                   action_repeat=2, max_episode_steps=6, seed=0)
    assert env.observation_spec["pixels"].shape == (1, 96, 96) and env.observation_spec["pixels"].dtype == torch.uint8
    assert isinstance(env.action_spec, OneHot) and env.action_spec.shape == (5,)
    wm = make_world_model(env.observation_spec, env.action_spec, state_dim=4, belief_dim=8, hidden_dim=8, channels=4)
    assert wm.encoder.output_dim() == 32 * 4 * 4  # 96 -> 47 -> 22 -> 10 -> 4
    policy = PlaNetPolicy(wm, action_spec=env.action_spec, planning_horizon=3, optim_steps=2, num_candidates=12,
                          top_k=3, observation_transform=partial(dequantize, bits=5))
    env.append_transform(policy.make_tensordict_primer())
    data = env.rollout(6, policy)
    assert data.shape == (6,) and data["next", "truncated"][-1].item()
    action = data["action"]
    assert ((action == 0) | (action == 1)).all() and (action.sum(-1) == 1).all()
    assert env.action_spec.is_in(action[0])

    loss_fn = RSSMLoss(wm)
    optim = torch.optim.Adam(wm.parameters(), lr=3e-3)
    batch = data.exclude("state", "belief", ("next", "state"), ("next", "belief")).unsqueeze(0)  # [B=1, T=6]
    reco_errors = []
    for _ in range(4):
        out = loss_fn(batch)
        total = sum(v for k, v in out.items() if k.startswith("loss_"))
        assert torch.isfinite(total)
        optim.zero_grad()
        total.backward()
        assert all(p.grad is not None for p in wm.encoder.parameters())
        optim.step()
        reco_errors.append(out["reco_error"].item())
    assert reco_errors[-1] < reco_errors[0]
    # plan again with the trained model
    more = env.rollout(3, policy)
    assert more["action"].shape == (3, 5) and (more["action"].sum(-1) == 1).all()


# ----------------------------------------- constructor keywords and user env modules
def test_extra_keywords_reach_the_constructor_like_torchrls_envs():
    """``make_env(name, **kwargs)`` passes kwargs on, as TorchRL's GymEnv / DMControlEnv do."""
    _register_toy_image()
    env = make_env("gym:ToyImage-v0", image_size=(60, 70), bit_depth=None, offset=7, n=3)
    assert env.action_spec.shape == (3,)  # n reached the constructor
    raw = _ToyImage((60, 70, 3), offset=7)
    assert torch.equal(env.reset()["pixels"], torch.from_numpy(raw.reset()[0]).permute(2, 0, 1))
    # the same as env_kwargs, and both together
    both = make_env("gym:ToyImage-v0", image_size=(60, 70), bit_depth=None, env_kwargs={"offset": 7}, n=3)
    assert torch.equal(both.reset()["pixels"], env.reset()["pixels"]) and both.action_spec.shape == (3,)
    # dm_control: to the task's factory (time_limit 2 s = 200 steps, 25 agent steps at repeat 8)
    assert make_env("dmc:cartpole-swingup", from_pixels=False, time_limit=2).max_episode_steps == 25
    with pytest.raises(ValueError, match=r"\['offset'\] given both"):
        make_env("gym:ToyImage-v0", env_kwargs={"offset": 1}, offset=2)
    with pytest.raises(ValueError, match="not accepted by the Gymnasium env"):
        make_env("gym:ToyImage-v0", no_such_kwarg=2)
    with pytest.raises(ValueError, match="action_repeat"):
        make_env("gym:ToyImage-v0", frame_skip=2)


def test_carracing_discrete_from_keywords():
    env = make_env("gym:CarRacing-v3", from_pixels=True, continuous=False)
    assert isinstance(env.action_spec, OneHot) and env.action_spec.shape == (5,)
    assert env.observation_spec["pixels"].shape == (3, 64, 64)


_USER_ENV_MODULE = '''
import gymnasium
import numpy as np


class Drift(gymnasium.Env):
    """Position drifts by the action; reward = position."""

    def __init__(self, speed=1.0):
        self.speed = speed
        self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (1,), np.float32)
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.x = np.zeros(1, np.float32)
        return self.x.copy(), {}

    def step(self, action):
        self.x = self.x + self.speed * np.asarray(action, np.float32)
        return self.x.copy(), float(self.x[0]), False, False, {}


gymnasium.register(id="{env_id}", entry_point=__name__ + ":Drift", max_episode_steps=7)
'''


def _write_env_module(directory, module: str, env_id: str) -> None:
    (directory / f"{module}.py").write_text(_USER_ENV_MODULE.replace("{env_id}", env_id))


def test_gym_module_colon_id_imports_the_users_module(tmp_path, monkeypatch):
    """``gym:<module>:<id>`` imports the module (which registers the id), like gymnasium.make("module:Id")."""
    import sys

    module, env_id = f"user_envs_{tmp_path.name.replace('-', '_')}", "DriftTest-v0"
    _write_env_module(tmp_path, module, env_id)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert env_id not in gymnasium.registry
    env = make_env(f"gym:{module}:{env_id}", from_pixels=False, speed=0.5)
    assert module in sys.modules and env_id in gymnasium.registry
    assert env.max_episode_steps == 7  # the registration's limit
    td = env.rollout(3, lambda td: td.set("action", torch.ones(1)))
    torch.testing.assert_close(td["next", "observation"][:, 0], torch.tensor([0.5, 1.0, 1.5]))
    gymnasium.registry.pop(env_id)


def test_gym_module_colon_id_from_the_working_directory_and_errors(tmp_path, monkeypatch):
    """A console script has no working directory on sys.path: the module is found there anyway."""
    import sys

    module, env_id = f"cwd_envs_{tmp_path.name.replace('-', '_')}", "DriftCwd-v0"
    _write_env_module(tmp_path, module, env_id)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    env = make_env(f"gym:{module}:{env_id}", from_pixels=False)
    assert env.rollout(2)["next", "observation"].shape == (2, 1)
    gymnasium.registry.pop(env_id)
    with pytest.raises(ValueError, match="could not import module 'no_such_envs'"):
        make_env("gym:no_such_envs:Drift-v0", from_pixels=False)
    with pytest.raises(ValueError, match="registers no Gymnasium id 'Missing-v0'"):
        make_env(f"gym:{module}:Missing-v0", from_pixels=False)
    with pytest.raises(ValueError, match="not a Python module name"):
        make_env("gym:my-envs:Drift-v0", from_pixels=False)
