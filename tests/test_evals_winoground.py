"""evaluate_winoground on the official layout, against scores counted by hand."""
import json

import numpy as np
import pytest
from PIL import Image

from _colour_pair import colour_pair, cosine, word_vector
from alignprobe.errors import DataError
from alignprobe.probe.evals import evaluate_winoground, winoground_similarities

# (caption_0, caption_1, rgb image_0, rgb image_1)
EXAMPLES = [
    ("a red cup", "a blue cup", (255, 0, 0), (0, 0, 255)),      # text right, image right
    ("a red cup", "a blue cup", (255, 0, 0), (255, 0, 0)),      # ties: both wrong
    ("a red cup", "a blue cup", (255, 0, 0), (255, 0, 100)),    # image 1 prefers caption 0
    ("a red cup", "a blue cup", (255, 0, 100), (0, 200, 60)),   # caption 1 prefers image 0
    ("a green tree", "a blue tree", (0, 0, 255), (0, 255, 0)),  # swapped: both wrong
]


def _write(root):
    rows = []
    for k, (c0, c1, i0, i1) in enumerate(EXAMPLES):
        (root / "images").mkdir(parents=True, exist_ok=True)
        for j, rgb in enumerate((i0, i1)):
            Image.new("RGB", (24, 18), rgb).save(root / "images" / f"ex_{k}_img_{j}.png")
        rows.append({"id": k, "caption_0": c0, "caption_1": c1, "image_0": f"ex_{k}_img_0",
                     "image_1": f"ex_{k}_img_1", "tag": "Object", "num_main_preds": 1})
    (root / "examples.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def _by_hand():
    text = image = group = 0
    for c0, c1, i0, i1 in EXAMPLES:
        s = {(c, i): cosine(word_vector(cap), np.array(rgb, float))
             for c, cap in enumerate((c0, c1)) for i, rgb in enumerate((i0, i1))}
        t = s[0, 0] > s[1, 0] + 1e-6 and s[1, 1] > s[0, 1] + 1e-6
        im = s[0, 0] > s[0, 1] + 1e-6 and s[1, 1] > s[1, 0] + 1e-6
        text, image, group = text + t, image + im, group + (t and im)
    n = len(EXAMPLES)
    return text / n, image / n, group / n


def test_scores_equal_the_hand_count(tmp_path):
    _write(tmp_path)
    pair = colour_pair()
    out = evaluate_winoground(*pair, tmp_path, progress=False)
    text, image, group = _by_hand()
    assert (text, image, group) == (0.4, 0.4, 0.2)  # the table above, read by hand
    assert out == pytest.approx({"winoground_text": text, "winoground_image": image,
                                 "winoground_group": group})
    examples, s = winoground_similarities(*pair, tmp_path, progress=False)
    assert s.shape == (5, 2, 2) and examples[4].captions == ("a green tree", "a blue tree")
    c0 = word_vector("a red cup")
    assert float(s[2, 0, 1]) == pytest.approx(cosine(c0, np.array([255, 0, 100.0])), abs=1e-4)


def test_missing_image_is_one_clear_error(tmp_path):
    _write(tmp_path)
    (tmp_path / "images" / "ex_4_img_0.png").unlink()
    with pytest.raises(DataError, match="ex_4_img_0.png"):
        evaluate_winoground(*colour_pair(), tmp_path, progress=False)
