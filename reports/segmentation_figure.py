"""A figure of segmentations as a user wants to look at them: for a few images, the image,
the predicted label map and the ground truth side by side, one legend of the classes shown.

Made with `matplotlib.figure.Figure` (no pyplot) and saved atomically, as every report figure.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from alignprobe.errors import ValidationError
from alignprobe.reports.plot_style import PAGE_WIDTH_IN, paper_style, save_figure

#: ignored pixels are drawn in this grey, so they are not mistaken for a class
IGNORE_RGB = (0.55, 0.55, 0.55)


def class_colours(num_classes: int) -> np.ndarray:
    """``(num_classes, 3)`` RGB in [0, 1]: tab20 first (distinct), then a spread of hues."""
    from matplotlib import colormaps

    base = np.asarray(colormaps["tab20"].colors)[:, :3]
    base = np.concatenate([base[0::2], base[1::2]])  # the strong tones before the light ones
    if num_classes <= len(base):
        return base[:num_classes]
    extra = colormaps["hsv"](np.linspace(0, 1, num_classes - len(base), endpoint=False))[:, :3]
    return np.concatenate([base, extra])


def colourise(label_map: np.ndarray, colours: np.ndarray, ignore_index: int | None = 255):
    """``(H, W)`` class indices -> ``(H, W, 3)`` float RGB."""
    m = np.asarray(label_map)
    out = np.empty(m.shape + (3,), dtype=np.float64)
    ignored = m == ignore_index if ignore_index is not None else np.zeros(m.shape, bool)
    valid = (~ignored) & (m >= 0) & (m < len(colours))
    if not (valid | ignored).all():
        raise ValidationError(f"a label map holds class {int(m[~(valid | ignored)][0])}, "
                              f"outside the {len(colours)} classes")
    out[valid] = colours[m[valid]]
    out[ignored] = IGNORE_RGB
    return out


def segmentation_figure(images: Sequence, predictions: Sequence, targets: Sequence | None,
                        class_names: Sequence[str], path: str | Path | None = None, *,
                        ignore_index: int | None = 255, max_images: int = 4,
                        title: str | None = None):
    """Rows of image / prediction / ground truth (no ground-truth column when ``targets`` is
    None) for the first ``max_images`` images; writes ``path`` (PNG, PDF, SVG by suffix) when
    given and returns the `Figure`."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    n = min(len(images), len(predictions), max_images)
    if n == 0:
        raise ValidationError("no images to draw; give at least one image and its prediction")
    if targets is not None and len(targets) < n:
        raise ValidationError(f"{len(targets)} ground-truth maps for {n} images")
    colours = class_colours(len(class_names))
    cols = 2 if targets is None else 3
    shown: set[int] = set()
    with paper_style():
        first = np.asarray(images[0])
        aspect = first.shape[0] / max(1, first.shape[1])
        panel = PAGE_WIDTH_IN / 3  # inches per column
        fig = Figure(figsize=(panel * cols, n * (panel * aspect + 0.3) + 0.7), layout="constrained")
        axes = np.asarray(fig.subplots(n, cols, squeeze=False))
        heads = ["image", "prediction", "ground truth"][:cols]
        for r in range(n):
            img = np.asarray(images[r])
            maps = [np.asarray(predictions[r])] + ([] if targets is None else
                                                    [np.asarray(targets[r])])
            for m in maps:
                if m.shape != img.shape[:2]:
                    raise ValidationError(f"image {r} is {img.shape[:2]} but a label map is "
                                          f"{m.shape}; give maps at the image's size")
                shown.update(int(v) for v in np.unique(m) if v != ignore_index)
            axes[r, 0].imshow(img)
            for c, m in enumerate(maps, 1):
                axes[r, c].imshow(colourise(m, colours, ignore_index), interpolation="nearest")
            for c in range(cols):
                axes[r, c].set_axis_off()
                if r == 0:
                    axes[r, c].set_title(heads[c])
        handles = [Patch(color=colours[k], label=class_names[k]) for k in sorted(shown)
                   if 0 <= k < len(class_names)]
        if ignore_index is not None and any(
                (np.asarray(m) == ignore_index).any() for m in (targets or [])[:n]):
            handles.append(Patch(color=IGNORE_RGB, label="ignored"))
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 5))
        if title:
            fig.suptitle(title)
    if path is not None:
        save_figure(fig, path)
    return fig
