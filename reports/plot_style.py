"""Paper-ready figure style: sizes, fonts, a colour-blind-safe palette, atomic saving.

Figures are made with `matplotlib.figure.Figure` directly, never through
pyplot, so that reports neither pick a GUI backend nor leak figures into a
global registry (the same code runs headless on a cluster and in a notebook).
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Iterator

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.textpath import TextToPath

from alignprobe.errors import ValidationError
from alignprobe.io import atomic_path

#: Single column and full text width of a two-column paper (CVPR, NeurIPS), inches.
COLUMN_WIDTH_IN = 3.5
PAGE_WIDTH_IN = 7.0

#: Okabe & Ito (2008): distinguishable under the common colour-vision deficiencies.
#: Yellow is last: it is nearly invisible on white and in greyscale.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442")
#: Markers vary with colour so that series stay apart when printed in greyscale.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")

# 7-10 pt at the printed size (figures are saved at their true size, never scaled in LaTeX).
RC = {
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 7.5,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.linewidth": 0.6,
    "lines.linewidth": 1.0,
    "lines.markersize": 5,
    "savefig.dpi": 300,
    # No "tight" bbox: constrained layout already fits labels and annotations, and a second layout pass per
    # save costs more than the drawing itself.
    # Type 42 (TrueType) fonts in PDFs: editable text, and accepted by conference checkers that reject Type 3.
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    # Encoder names are user text: "$x^2$" must print as typed, and "$\\foo$" must not abort a figure, so no
    # mathtext and no LaTeX on any label (every figure is made and saved inside `paper_style`).
    "text.parse_math": False,
    "text.usetex": False,
}
POINT_LABEL_SIZE = 7


@contextlib.contextmanager
def paper_style() -> Iterator[None]:
    """Apply the paper rc settings for the figures made inside (without touching the global rc)."""
    with matplotlib.rc_context(RC):
        yield


def style_for(index: int) -> dict:
    """Colour and marker of the `index`-th series: both vary, so greyscale prints still tell them apart."""
    return {"color": PALETTE[index % len(PALETTE)], "marker": MARKERS[index % len(MARKERS)]}


# Label offsets tried in order (points): right-above, right-below, left-above, left-below, above, below,
# right, left; then the same sides further out, joined to their point by a thin leader line (crowded corners).
_NEAR_OFFSETS = ((4, 3, "left", "bottom"), (4, -3, "left", "top"), (-4, 3, "right", "bottom"),
                 (-4, -3, "right", "top"), (0, 6, "center", "bottom"), (0, -6, "center", "top"),
                 (6, 0, "left", "center"), (-6, 0, "right", "center"))
_LABEL_OFFSETS = _NEAR_OFFSETS + tuple((dx * k, dy * k, ha, va) for k in (3, 5, 7, 9, 12, 15)
                                       for dx, dy, ha, va in _NEAR_OFFSETS)
_LEADER = {"arrowstyle": "-", "linewidth": 0.4, "color": "0.5", "shrinkA": 0, "shrinkB": 2}


def label_points(ax, x: np.ndarray, y: np.ndarray, names: list[str], avoid: tuple = ()) -> None:
    """Name each point, moving a label to another side when it would cover an earlier label or a point.

    A greedy search in points (each label's width measured from its font), not a
    solver: good enough for the tens of encoders of a sweep, and dependency-free.
    Where every near side clashes (a crowded corner), the label moves further out
    along a leader line. Labels outside the axes' box, or on an artist of ``avoid``
    (the legend), count as clashes too.
    """
    ax.autoscale_view()
    if not hasattr(ax.figure.canvas, "get_renderer"):  # a bare Figure: an Agg canvas measures what is drawn
        FigureCanvasAgg(ax.figure)
    engine = ax.figure.get_layout_engine()
    if engine is not None:  # place against the final axes box, not the pre-layout one
        engine.execute(ax.figure)
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    fig_w, fig_h = ax.figure.get_size_inches() * 72
    pos = ax.get_position()
    sx = pos.width * fig_w / ((x1 - x0) or 1.0)
    sy = pos.height * fig_h / ((y1 - y0) or 1.0)
    px, py = (x - x0) * sx, (y - y0) * sy
    size = POINT_LABEL_SIZE
    placed: list[tuple[float, float, float, float]] = []
    marker = [(a - 3, b - 3, a + 3, b + 3) for a, b in zip(px, py)]
    marker += [_box_in_axes_points(ax, artist) for artist in avoid]
    for i in np.argsort(-py):  # top first: labels above points are the most readable
        w, h = _text_size(names[i], size)
        best = None
        for dx, dy, ha, va in _LABEL_OFFSETS:
            left = px[i] + dx - (w if ha == "right" else w / 2 if ha == "center" else 0)
            bottom = py[i] + dy - (h if va == "top" else h / 2 if va == "center" else 0)
            box = (left, bottom, left + w, bottom + h)
            clashes = sum(_overlap(box, other) for other in placed + marker[:i] + marker[i + 1:])
            clashes += _outside(box, pos.width * fig_w, pos.height * fig_h)
            if best is None or clashes < best[0]:
                best = (clashes, box, dx, dy, ha, va)
            if clashes == 0:
                break
        _, box, dx, dy, ha, va = best
        placed.append(box)
        far = abs(dx) > 6 or abs(dy) > 6
        label = ax.annotate(names[i], (x[i], y[i]), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                            fontsize=size, arrowprops=_LEADER if far else None)
        label.set_in_layout(False)  # placed inside the axes box: the layout must not move that box again


def _box_in_axes_points(ax, artist) -> tuple[float, float, float, float]:
    """An artist's drawn box (the legend's, where 'best' put it) in points from the axes' corner."""
    figure = ax.figure
    renderer = figure.canvas.get_renderer()
    box, frame, scale = artist.get_window_extent(renderer), ax.get_window_extent(renderer), 72.0 / figure.dpi
    return ((box.x0 - frame.x0) * scale, (box.y0 - frame.y0) * scale,
            (box.x1 - frame.x0) * scale, (box.y1 - frame.y0) * scale)


def _text_size(text: str, size: float) -> tuple[float, float]:
    """Width and height in points of `text` in the current font (labels are never mathtext), 1 pt padded."""
    width, height, _ = TextToPath().get_text_width_height_descent(text, FontProperties(size=size), ismath=False)
    return width + 1.0, max(height, size) + 1.0


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _outside(box, width: float, height: float) -> bool:
    return box[0] < 0 or box[1] < 0 or box[2] > width or box[3] > height


def new_figure(n_panels: int = 1, panel_height_in: float = 2.8, max_cols: int = 3,
               sharey: bool = False) -> tuple[Figure, list]:
    """A figure one column wide for one panel, page wide for several."""
    ncols = min(n_panels, max_cols)
    nrows = -(-n_panels // ncols)
    width = COLUMN_WIDTH_IN if n_panels == 1 else PAGE_WIDTH_IN
    fig = Figure(figsize=(width, panel_height_in * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=sharey).ravel().tolist()
    for extra in axes[n_panels:]:
        extra.set_visible(False)
    return fig, axes[:n_panels]


def save_figure(fig: Figure, path: str | Path, fmt: str | None = None) -> Path:
    """Save `fig` to `path` atomically (a temp file beside it, then a rename)."""
    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    supported = fig.canvas.get_supported_filetypes()
    if fmt not in supported:
        raise ValidationError(f"cannot save a figure as {fmt!r}; supported: {', '.join(sorted(supported))}")
    with paper_style(), atomic_path(path) as tmp:
        # The temp name ends in ".tmp": the format must be given explicitly.
        fig.savefig(tmp, format=fmt)
    return path


def figure_png_bytes(fig: Figure, dpi: int = 150) -> bytes:
    buf = io.BytesIO()
    with paper_style():
        fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
