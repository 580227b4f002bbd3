"""Test episodes from a trained PlaNet agent, optionally written to a GIF."""
from __future__ import annotations

from pathlib import Path

import torch
from torchrl.envs.utils import ExplorationType, set_exploration_type

from .planet import PlaNetTrainer


@torch.no_grad()
def evaluate(trainer: PlaNetTrainer, episodes: int = 5, video: str | Path | None = None) -> dict:
    """Runs ``episodes`` noise-free episodes as one batch; writes the first one's frames to ``video``.

    For agents trained on state vectors the test environments also render pixels (the
    model reads ``observation``; the frames ride along), so a video can still be written.
    """
    want_pixels = video is not None and not trainer.cfg.from_pixels
    env = trainer.make_test_env(episodes, from_pixels=True if want_pixels else None,
                                pixels_only=not want_pixels)
    threads = torch.get_num_threads()
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        rollout = env.rollout(trainer.episode_steps, trainer.policy, break_when_any_done=False)
    env.close()
    torch.set_num_threads(threads)  # closing a batched TorchRL env resets it
    returns = rollout["next", "reward"].sum(-2).reshape(-1)
    result = {"episodes": episodes, "mean_return": float(returns.mean()),
              "returns": [round(float(r), 2) for r in returns], "env_steps": trainer.counters["env_steps"]}
    if video is not None:
        pixels = rollout["pixels"]
        write_gif(pixels[0] if rollout.ndim == 2 else pixels, video)  # [E, T] batched, or [T]
        result["video"] = str(video)
    return result


def write_gif(frames: torch.Tensor, path: str | Path, fps: int = 15) -> None:
    """Writes ``[T, 3, H, W]`` uint8 frames as an animated GIF."""
    from PIL import Image

    frames = frames.detach().cpu()
    if frames.dtype != torch.uint8:
        frames = ((frames + 0.5).clamp(0, 1) * 255).to(torch.uint8)
    images = [Image.fromarray(f.permute(1, 2, 0).numpy()) for f in frames]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
