"""TensorBoard logging through TorchRL's ``TensorboardLogger``, with images and videos.

TorchRL's ``log_video`` goes through ``SummaryWriter.add_video``, which needs moviepy 1.x
(``moviepy.editor``); without it nothing is written. Here videos are encoded as animated
GIFs with Pillow and written as the same image summary TensorBoard shows as a video.
"""
from __future__ import annotations

import io
import json

import numpy as np
import torch
from torch.utils.tensorboard.summary import Summary, hparams
from torchrl.record.loggers.tensorboard import TensorboardLogger


def _to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """``[T, C, H, W]`` (uint8, or floats in [-0.5, 0.5] / [0, 1]) -> ``[T, H, W, C]`` uint8."""
    video = video.detach().cpu()
    if video.dtype != torch.uint8:
        lo = -0.5 if video.min() < 0 else 0.0
        video = ((video - lo).clamp(0, 1) * 255).round().to(torch.uint8)
    return video.permute(0, 2, 3, 1).numpy()


class RSSMTensorboardLogger(TensorboardLogger):
    """TorchRL's ``TensorboardLogger`` plus ``log_images``, a moviepy-free ``log_video``, and
    ``log_hparams`` written into the run itself (``SummaryWriter.add_hparams`` writes them to a new
    timestamped folder, which TensorBoard lists as an extra, empty run).

    Examples:
        >>> import tempfile, torch
        >>> logger = RSSMTensorboardLogger("demo", log_dir=tempfile.mkdtemp())
        >>> logger.log_scalar("loss", 1.0, step=0)
        >>> logger.log_video("video", torch.zeros(4, 3, 8, 8, dtype=torch.uint8), step=0)
        >>> logger.log_hparams({"model_lr": 1e-3, "env_kwargs": {"continuous": False}})
    """

    #: the scalar TensorBoard's hparams view shows beside each run's settings
    HPARAM_METRICS = ("test/return",)

    def log_hparams(self, cfg: dict, metrics: tuple[str, ...] | None = None) -> None:
        """The run's settings in TensorBoard's hparams view, written into this run's own folder.

        Values other than numbers, strings and booleans (e.g. a dict) are written as JSON; the
        view shows ``metrics`` (scalar tags the run logs) beside them.
        """
        clean = {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v) for k, v in cfg.items()}
        tags = self.HPARAM_METRICS if metrics is None else metrics
        writer = self.experiment._get_file_writer()
        for summary in hparams(clean, {tag: float("nan") for tag in tags}):
            writer.add_summary(summary)

    def log_images(self, name: str, images: torch.Tensor, step: int | None = None) -> None:
        """Logs a batch of images ``[N, C, H, W]`` (same ranges as :meth:`log_video`)."""
        frames = _to_uint8_frames(images)
        self.experiment.add_images(name, frames, global_step=step, dataformats="NHWC")

    def log_video(self, name: str, video: torch.Tensor, step: int | None = None, fps: int = 8, **kwargs) -> None:
        """Logs a video ``[T, C, H, W]`` (or ``[1, T, C, H, W]``) as an animated GIF."""
        from PIL import Image

        if video.ndim == 5:
            video = video[0]
        frames = _to_uint8_frames(video)
        images = [Image.fromarray(f if f.shape[-1] == 3 else f[..., 0]) for f in frames]
        buffer = io.BytesIO()
        images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:],
                       duration=int(1000 / fps), loop=0)
        _, h, w, c = frames.shape
        image = Summary.Image(height=h, width=w, colorspace=c, encoded_image_string=buffer.getvalue())
        self.experiment._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=name, image=image)]), step)
