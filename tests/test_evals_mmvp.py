"""evaluate_mmvp on the official layout, against per-category accuracies counted by hand."""
import csv

import numpy as np
import pytest
from PIL import Image

from _colour_pair import Aligned, colour_pair, cosine, word_vector
from alignprobe.probe.evals import evaluate_mmvp, mmvp_similarities

# (type, (id, statement, rgb of that id's image)) x 2; the odd id's image is the pair's first
COLOUR = "Color and Appearance"
PAIRS = [
    (COLOUR, (1, "the cup is red", (255, 0, 0)), (2, "the cup is blue", (0, 0, 255))),
    (COLOUR, (3, "the cup is red", (255, 0, 100)), (4, "the cup is blue", (255, 0, 0))),
    ("Texts", (5, "a green sign", (0, 255, 0)), (6, "a blue sign", (0, 0, 255))),
    ("Texts", (7, "a green sign", (0, 200, 60)), (8, "a blue sign", (0, 120, 255))),
    ("Quantity and Count", (9, "two red apples", (255, 120, 0)),
     (10, "two green apples", (255, 60, 60))),
]


def _write(root):
    with open(root / "Questions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Question ID", "Type", "Statement"])
        for t, *rows in PAIRS:
            for q, statement, rgb in rows:
                w.writerow([q, t, statement])
                d = root / "MLLM_VLM Images" / t
                d.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (30, 20), rgb).save(d / f"{q}.jpg", quality=100)


def _by_hand():
    right: dict[str, list[bool]] = {}
    for t, a, b in PAIRS:
        first, second = a, b  # image 0 is the odd id's, listed first
        ok = True
        for q, statement, _ in (a, b):
            text = word_vector("a photo of " + statement)
            s0 = cosine(text, np.array(first[2], float))
            s1 = cosine(text, np.array(second[2], float))
            ok &= (s0 > s1) == (q % 2 == 1)
        right.setdefault(t, []).append(ok)
    return {t: sum(v) / len(v) for t, v in right.items()}


def test_scores_equal_the_hand_count(tmp_path):
    _write(tmp_path)
    pair = colour_pair()
    out = evaluate_mmvp(*pair, tmp_path, progress=False)
    by_hand = _by_hand()
    assert by_hand == {"Color and Appearance": 0.5, "Texts": 1.0, "Quantity and Count": 0.0}
    assert out == pytest.approx({
        "mmvp": np.mean(list(by_hand.values())),
        "mmvp_color_and_appearance": 0.5, "mmvp_texts": 1.0, "mmvp_quantity_and_count": 0.0})
    pairs, s = mmvp_similarities(*pair, tmp_path, progress=False)
    assert s.shape == (5, 2, 2) and pairs[2].targets == (0, 1)


def test_an_even_id_first_is_refused(tmp_path):
    from alignprobe.errors import DataError

    _write(tmp_path)
    rows = (tmp_path / "Questions.csv").read_text().splitlines()
    rows[1], rows[2] = rows[2], rows[1]
    (tmp_path / "Questions.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match="odd id"):
        evaluate_mmvp(*colour_pair(), tmp_path, progress=False)


def test_evaluate_aligned_gives_one_row_for_winoground_and_mmvp(tmp_path):
    from test_evals_winoground import _write as write_winoground

    from alignprobe.probe.evals import evaluate_aligned, evaluate_winoground

    (tmp_path / "mmvp").mkdir()
    (tmp_path / "wino").mkdir()
    _write(tmp_path / "mmvp")
    write_winoground(tmp_path / "wino")
    pair = colour_pair()
    row = evaluate_aligned(Aligned(*pair), winoground=tmp_path / "wino", mmvp=tmp_path / "mmvp",
                           progress=False)
    assert row == {**evaluate_winoground(*pair, tmp_path / "wino", progress=False),
                   **evaluate_mmvp(*pair, tmp_path / "mmvp", progress=False)}
