"""Figures of results, drawn with matplotlib (headless: the Agg backend, no display needed)."""

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

# Above this many classes, tick labels and cell counts would overlap into a grey blur.
MAX_LABELLED_CLASSES = 30


def confusion_figure(confusion: torch.Tensor, class_names: Sequence[str]) -> Figure:
    """Rows: true class, columns: predicted. Colour is the row's share (so rare classes read as
    well as common ones); the number in a cell is its count."""
    counts = confusion.cpu().double()
    shares = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    n = len(class_names)
    size = min(4 + 0.45 * n, 20)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    image = ax.imshow(shares.numpy(), cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= MAX_LABELLED_CLASSES:
        ax.set_xticks(range(n), class_names, rotation=60, ha="right")
        ax.set_yticks(range(n), class_names)
        for i in range(n):
            for j in range(n):
                colour = "white" if shares[i, j] > 0.5 else "black"
                ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", color=colour)
    ax.set_title("confusion matrix")
    fig.tight_layout()
    return fig


def reliability_figure(
    calibration: dict[str, dict[str, torch.Tensor]],
    temperature: float,
    fitted_on: int | None = None,
) -> Figure:
    """The reliability diagram: per confidence bin, how often the top class was right (bars)
    against how confident the net was (the diagonal is perfect calibration); one panel for the
    softmax, one for the calibrated probabilities where there are any (`fitted_on`: how many
    validation images the temperature was fitted on, where known)."""
    fig, axes = plt.subplots(
        1, len(calibration), figsize=(4.5 * len(calibration), 4.5), squeeze=False
    )
    for ax, (kind, values) in zip(axes[0], calibration.items(), strict=True):
        bins = len(values["count"])
        centres = (torch.arange(bins) + 0.5) / bins
        filled = values["count"] > 0
        accuracy, confidence = values["accuracy"][filled], values["confidence"][filled]
        ax.bar(
            centres[filled],
            accuracy,
            width=1 / bins,
            edgecolor="black",
            color="tab:blue",
            label="accuracy",
        )
        ax.bar(
            centres[filled],
            (confidence - accuracy).abs(),
            bottom=torch.minimum(accuracy, confidence),
            width=1 / bins,
            color="tab:red",
            alpha=0.35,
            hatch="//",
            label="gap to confidence",
        )
        ax.plot([0, 1], [0, 1], "k--", linewidth=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top class)")
        ax.set_ylabel("accuracy")
        title = "softmax" if kind == "raw" else f"temperature {temperature:.3g}"
        if kind != "raw" and fitted_on:
            title += f" (fitted on {fitted_on} images)"
        ax.set_title(f"{title}: ECE {float(values['ece']):.3f}")
        ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


def image_grid_figure(
    images: torch.Tensor, captions: Sequence[str], title: str, columns: int = 8
) -> Figure:
    """uint8 NCHW images in a grid, one caption above each: the grid is one picture in one
    axes, the captions text on it (an axes per image made every run's first batch and test
    report cost half a second of drawing)."""
    n = len(images)
    columns = max(1, min(columns, n))
    rows = max(1, -(-n // columns))
    height, width = images.shape[-2:]
    # a cell is its image and a band above it for the caption, in the figure's 1.9 x 2.4
    # inches a cell, so the pixels stay square
    gap = max(1, width // 16)
    cell_width = width + gap
    # a band of at least a fifth of the image: tall images too leave room for the caption
    cell_height = max(round(cell_width * 2.4 / 1.9), height + max(1, height // 5))
    band = cell_height - height
    canvas = np.full((rows * cell_height, columns * cell_width, 3), 255, dtype=np.uint8)
    pixels = images.expand(-1, 3, -1, -1).permute(0, 2, 3, 1).cpu().numpy()
    fig = plt.figure(figsize=(1.9 * columns, 2.4 * rows))
    top = 1 - 0.8 / (2.4 * rows)  # room for the title
    ax = fig.add_axes((0.01, 0.01, 0.98, top - 0.01))
    ax.axis("off")
    for i, caption in enumerate(captions[:n]):
        row, column = divmod(i, columns)
        y, x = row * cell_height + band, column * cell_width + gap // 2
        canvas[y : y + height, x : x + width] = pixels[i]
        ax.text(x + width / 2, y - band * 0.08, caption, ha="center", va="bottom", fontsize=8)
    ax.imshow(canvas, interpolation="nearest")
    fig.suptitle(title)
    return fig


def cam_overlay(images: torch.Tensor, maps: torch.Tensor, weight: float = 0.5) -> torch.Tensor:
    """uint8 NCHW images with their class-activation maps (N, H, W in [0, 1]) laid over them
    in the jet colours Grad-CAM's papers use (red: where the class's evidence is), `weight` the
    map's share of each pixel; uint8 NCHW."""
    jet = torch.from_numpy(matplotlib.colormaps["jet"](maps.clamp(0, 1).numpy())[..., :3])
    heat = jet.permute(0, 3, 1, 2).float()
    mixed = (1 - weight) * images.cpu().float() / 255 + weight * heat
    return (mixed * 255).round().clamp(0, 255).to(torch.uint8)


def explanation_figure(
    images: torch.Tensor,
    predicted: torch.Tensor,
    true: torch.Tensor,
    captions: Sequence[str],
    predicted_names: Sequence[str],
    true_names: Sequence[str],
    per_row: int = 4,
) -> Figure:
    """Each wrong image (uint8 NCHW) beside its class-activation maps (N, H, W in [0, 1]) for
    the predicted and for the true class, as one cell of three pictures, `per_row` cells a row:
    where the net found the class it chose, and where it looked for the one it missed. One axes
    a cell, not three: a figure's cost is its axes."""
    n, width = len(images), images.shape[-1]
    gap = torch.full((*images.shape[:3], max(1, width // 16)), 255, dtype=torch.uint8)
    cells = torch.cat(
        [images.cpu(), gap, cam_overlay(images, predicted), gap, cam_overlay(images, true)], dim=3
    )
    per_row = max(1, min(per_row, n))
    rows = max(1, -(-n // per_row))
    fig, axes = plt.subplots(rows, per_row, figsize=(4.2 * per_row, 1.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, ax in enumerate(axes.flat[:n]):
        ax.imshow(cells[i].permute(1, 2, 0).numpy(), interpolation="nearest")
        caption = captions[i].replace("\n", "  ")  # one line: the second names the maps
        ax.set_title(f"{caption}\nCAM of: {predicted_names[i]} | {true_names[i]}", fontsize=8)
    fig.suptitle("most confidently wrong: image, Grad-CAM of the predicted and of the true class")
    height = 1.9 * rows
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.7 / height, hspace=0.5)
    return fig


def rendered(fig: Figure) -> np.ndarray:
    """The figure drawn once, as RGB pixels (H, W, 3 uint8): what its PNG file and TensorBoard
    both take, so it is not drawn twice (a figure's cost is its drawing)."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def save_png(pixels: np.ndarray, path: str) -> None:
    Image.fromarray(pixels).save(path)


def close_figure(fig: Figure) -> None:
    plt.close(fig)
