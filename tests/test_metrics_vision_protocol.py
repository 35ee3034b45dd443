"""Vision quality under the train->val protocol (bank -> val) and the split fallback, recorded."""
import numpy as np
import pytest

from alignprobe.errors import ValidationError
from alignprobe.metrics import kmeans_nmi, knn_accuracy, linear_probe_accuracy
from alignprobe.metrics.vision_protocol import vision_quality


def blobs(n, seed, n_classes=6, d=10):
    rng = np.random.default_rng(seed)
    c = np.random.default_rng(99).standard_normal((n_classes, d)) * 2
    y = rng.integers(0, n_classes, n)
    return (c[y] + rng.standard_normal((n, d))).astype(np.float32), y


def test_train_to_val_uses_the_bank_for_knn_and_probe_and_clusters_val(tmp_path):
    bank_x, bank_y = blobs(400, 0)
    val_x, val_y = blobs(120, 1)
    mm = np.memmap(tmp_path / "bank.f16", dtype=np.float16, mode="w+", shape=bank_x.shape)
    mm[:] = bank_x
    res = vision_quality(val_x, val_y, mm, bank_y, k=(10, 20), seed=3)
    m, d = res["metrics"], res["details"]
    assert d["vision_protocol"] == "train->val" and d["vision_bank_n"] == 400 and d["vision_eval_n"] == 120
    want = knn_accuracy(np.asarray(mm), bank_y, val_x, val_y, k=(10, 20))
    assert m["knn_top1@10"] == want[10] and m["knn_top1@20"] == want[20]
    lp = linear_probe_accuracy(np.asarray(mm, dtype=np.float32), bank_y, val_x, val_y, seed=3)
    assert m["linear_probe_top1"] == lp["top1"] and d["linear_probe_l2"] == lp["l2"]
    # the validation race is recorded: every l2 of the grid with its accuracy, and the rows it was run on
    assert d["linear_probe_val_accuracy"] == {f"{l2:.3g}": acc for l2, acc in lp["val_accuracy"].items()}
    assert len(d["linear_probe_val_accuracy"]) == 11 and d["linear_probe_val_n"] == lp["n_val"] == 81  # 20 % of each class
    assert d["linear_probe_val_accuracy"][f"{lp['l2']:.3g}"] == max(lp["val_accuracy"].values())
    assert m["kmeans_nmi"] == kmeans_nmi(val_x, val_y, seed=3)["nmi"]


def test_split_protocol_without_a_bank():
    x, y = blobs(300, 2)
    res = vision_quality(x, y, metrics=("knn",), k=(10, 500), seed=0)
    assert res["details"]["vision_protocol"] == "split"
    assert res["details"]["vision_bank_n"] == 240 and res["details"]["vision_eval_n"] == 60
    assert set(res["metrics"]) == {"knn_top1@10"}  # k above the bank size is dropped
    with pytest.raises(ValidationError, match="pass both bank_x and bank_y"):
        vision_quality(x, y, bank_x=x)
    with pytest.raises(ValidationError, match="metrics must be among"):
        vision_quality(x, y, metrics=("svm",))


def test_bank_rows_select_the_usable_bank_images():
    bank_x, bank_y = blobs(300, 5)
    val_x, val_y = blobs(80, 6)
    keep = np.flatnonzero(np.arange(300) % 5 != 0)
    res = vision_quality(val_x, val_y, bank_x, bank_y[keep], bank_rows=keep, metrics=("knn", "linear_probe"),
                         k=(10,))
    assert res["details"]["vision_bank_n"] == len(keep)
    ref = vision_quality(val_x, val_y, bank_x[keep], bank_y[keep], metrics=("knn", "linear_probe"), k=(10,))
    assert res["metrics"] == ref["metrics"]
