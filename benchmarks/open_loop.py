"""Open-loop predictions of a trained pixel model as a PNG: truth above prediction.

Loads a run (``load_trainer(logdir)``: model and replay buffer), takes replay chunks,
filters the first ``--context`` frames with the posterior (``wm.rollout.observe``, the
chunk's first observation filtered as in training) and then predicts the rest open loop
from the actions alone (``wm.rollout.imagine``), decoding both with ``wm.decoder``. Each
sequence is two rows: the true frames above the model's; a red bar marks the context
frames (reconstructions), the rest are predictions.

    python benchmarks/open_loop.py runs/planet-quick-pixels --out benchmarks/results/open_loop_quick_pixels.png
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402

from torchrl_rssm.recipes import load_trainer  # noqa: E402
from torchrl_rssm.recipes.agent import open_loop_prediction  # noqa: E402


@torch.no_grad()
def predictions(trainer, sequences: int = 3, context: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``truth, prediction``: ``[N, T, C, H, W]`` in ``[0, 1]``; the first ``context`` steps filtered."""
    key = trainer.agent.obs_key
    if key != "pixels":
        raise ValueError(f"open_loop: the run observes {key!r}, not pixels.")
    torch.manual_seed(seed)
    batch = trainer.buffer.sample()[:sequences]
    truth, prediction, _ = open_loop_prediction(trainer.world_model, key, batch, context)
    return (truth + 0.5).clamp(0, 1), (prediction + 0.5).clamp(0, 1)


def save_png(truth: torch.Tensor, prediction: torch.Tensor, path: Path, context: int, every: int = 2,
             title: str = "") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = list(range(0, truth.shape[1], every))
    n = truth.shape[0]
    fig, axes = plt.subplots(2 * n, len(steps), figsize=(0.9 * len(steps), 1.0 * 2 * n), squeeze=False)
    for i in range(n):
        for j, t in enumerate(steps):
            for row, images in ((2 * i, truth), (2 * i + 1, prediction)):
                ax = axes[row, j]
                ax.imshow(images[i, t].permute(1, 2, 0).squeeze(-1).cpu().numpy(),
                          cmap="gray" if images.shape[2] == 1 else None)
                ax.set_xticks([])
                ax.set_yticks([])
                if t < context:
                    for side in ax.spines.values():
                        side.set_color("red")
                        side.set_linewidth(2)
            if i == 0:
                axes[0, j].set_title(f"t={t}", fontsize=7)
        axes[2 * i, 0].set_ylabel("truth", fontsize=7)
        axes[2 * i + 1, 0].set_ylabel("model", fontsize=7)
    fig.suptitle(title + f"\nred frames: {context} context steps filtered; after them, open loop", fontsize=8)
    fig.tight_layout(pad=0.2, rect=(0, 0, 1, 1 - 0.5 / (2 * n + 1)))  # room for the two-line title
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logdir", help="a pixel run's logdir (or its checkpoint)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "open_loop.png")
    parser.add_argument("--sequences", type=int, default=3)
    parser.add_argument("--context", type=int, default=5)
    parser.add_argument("--every", type=int, default=2, help="show every N-th frame")
    args = parser.parse_args(argv)
    trainer = load_trainer(args.logdir, progress=False)
    truth, prediction = predictions(trainer, args.sequences, args.context)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    title = (f"{trainer.cfg.env} from pixels, after {trainer.collected} episodes, "
             f"{trainer.counters['updates']} updates")
    save_png(truth, prediction, args.out, args.context, args.every, title)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
