"""Test episodes from a trained agent, optionally written to a video (MP4 or GIF by suffix)."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from tqdm import tqdm

from .collection import first_episode_returns
from .trainer import Trainer

__all__ = ["VIDEO_SUFFIXES", "check_video_path", "evaluate", "write_gif", "write_video"]

#: video formats ``write_video`` writes, by file suffix
VIDEO_SUFFIXES = (".mp4", ".gif")


@torch.no_grad()
def evaluate(trainer: Trainer, episodes: int = 5, video: str | Path | None = None, progress: bool = False) -> dict:
    """Runs ``episodes`` noise-free episodes (``DETERMINISTIC``) as one batch; writes the first to ``video``.

    ``video`` is written in the format its suffix names (:func:`write_video`: ``.mp4`` or
    ``.gif``); any other suffix is refused before the episodes run. For agents trained on
    state vectors the test environments also render pixels (the model reads
    ``observation``; the frames ride along), so a video can still be written. ``progress``: a
    progress bar over the episodes' steps on stderr.
    """
    if video is not None:
        check_video_path(video)
    want_pixels = video is not None and not trainer.cfg.from_pixels
    bar = tqdm(total=trainer.episode_steps, disable=not progress, file=sys.stderr, unit="step", dynamic_ncols=True,
               desc=f"{trainer.agent.name}: {episodes} test episode{'s' if episodes != 1 else ''}")
    with bar:
        rollout = trainer.rollout_test(episodes, from_pixels=True if want_pixels else None,
                                       pixels_only=not want_pixels, callback=lambda env, td: bar.update())
        bar.update(bar.total - bar.n)  # TorchRL calls back between steps: not after the last
    returns = first_episode_returns(rollout).reshape(-1)
    result = {"episodes": episodes, "mean_return": float(returns.mean()),
              "returns": [round(float(r), 2) for r in returns], "env_steps": trainer.counters["env_steps"]}
    if video is not None:
        pixels = rollout["pixels"]
        write_video(pixels[0] if rollout.ndim == 2 else pixels, video)  # [E, T] batched, or [T]
        result["video"] = str(video)
    return result


def check_video_path(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"video={str(path)!r}: unsupported format {suffix or '(no suffix)'!r}; "
                         f"use a file name ending in {' or '.join(VIDEO_SUFFIXES)}.")
    return suffix


def _uint8_frames(frames: torch.Tensor) -> torch.Tensor:
    frames = frames.detach().cpu()
    if frames.dtype != torch.uint8:
        frames = ((frames + 0.5).clamp(0, 1) * 255).to(torch.uint8)
    return frames


def write_video(frames: torch.Tensor, path: str | Path, fps: int = 15) -> None:
    """Writes ``[T, 3, H, W]`` frames (uint8, or floats in [-0.5, 0.5]) as MP4 or GIF, by ``path``'s suffix.

    MP4 is encoded with H.264 through ``imageio`` and the ffmpeg binary that
    ``imageio-ffmpeg`` ships; GIF with Pillow.

    Examples:
        >>> import tempfile, torch
        >>> frames = torch.zeros(4, 3, 64, 64, dtype=torch.uint8)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     write_video(frames, f"{d}/clip.gif")
        ...     write_video(frames, f"{d}/clip.avi")
        Traceback (most recent call last):
        ...
        ValueError: video='.../clip.avi': unsupported format '.avi'; use a file name ending in .mp4 or .gif.
    """
    suffix = check_video_path(path)
    if suffix == ".gif":
        write_gif(frames, path, fps=fps)
        return
    try:
        import imageio.v2 as imageio
    except ImportError as err:  # declared dependency; a broken install gets a clear message
        raise ValueError(f"video={str(path)!r}: writing MP4 needs imageio and imageio-ffmpeg "
                         "(pip install imageio imageio-ffmpeg), or use a .gif name.") from err
    frames = _uint8_frames(frames).permute(0, 2, 3, 1).numpy()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    # macro_block_size=1: any frame size (64x64 is already a multiple of 16)
    with imageio.get_writer(str(path), format="FFMPEG", mode="I", fps=fps, codec="libx264",
                            pixelformat="yuv420p", macro_block_size=1) as writer:
        for frame in frames:
            writer.append_data(frame)


def write_gif(frames: torch.Tensor, path: str | Path, fps: int = 15) -> None:
    """Writes ``[T, 3, H, W]`` uint8 frames as an animated GIF."""
    from PIL import Image

    frames = _uint8_frames(frames)
    images = [Image.fromarray(f.permute(1, 2, 0).numpy()) for f in frames]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
