"""The paper's protocol through `alignprobe run`: train->val vision quality, overlap checks, fixed samples."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from alignprobe.config import EncodeOptions
from alignprobe.probe.data.overlap import TrainTestOverlapError
from alignprobe.probe.pipelines.run import RunConfig, run_pair
from helpers import invoke

OPTIONS = EncodeOptions(quiet=True, device="cpu")


def test_labelled_train_records_the_train_to_val_protocol(tmp_path):
    result = invoke("run", "--vision", "pixels-8", "--text", "bow", "--metrics", "knn,linear_probe,kmeans_nmi",
                    "--labelled-train", "digits:train", "--labelled", "digits:test", "--out", tmp_path, "-q")
    assert result.exit_code == 0, result.output
    [path] = list(tmp_path.glob("probe__*.json"))
    record = json.loads(path.read_text())
    details, metrics = record["details"], record["metrics"]
    assert details["vision_protocol"] == "train->val"
    assert details["vision_bank_n"] > details["vision_eval_n"] > 0  # the bank is digits:train, scored on test
    assert {"knn_top1@10", "knn_top1@20", "knn_top1@100", "knn_top1@200", "linear_probe_top1", "kmeans_nmi"} <= set(metrics)
    assert metrics["knn_top1@10"] > 0.5  # raw pixels separate handwritten digits well (chance 0.1)
    split = invoke("run", "--vision", "pixels-8", "--text", "bow", "--metrics", "knn", "--labelled", "digits:test",
                   "--out", tmp_path / "split", "-q")
    assert split.exit_code == 0
    record = json.loads(next((tmp_path / "split").glob("probe__*.json")).read_text())
    assert record["details"]["vision_protocol"] == "split"


def _image_set(directory, names):
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(directory / name)


def test_pairs_sharing_images_with_the_retrieval_set_is_an_error_unless_allowed(tmp_path):
    images = tmp_path / "images"
    _image_set(images, [f"{i}.png" for i in range(8)])
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("image,caption\n" + "".join(f"{images}/{i}.png,picture {i}\n" for i in range(6)))
    test = tmp_path / "test.csv"  # images 4 and 5 are in both
    test.write_text("image,caption\n" + "".join(f"{images}/{i}.png,photo {i}\n" for i in range(4, 8)))
    config = dict(vision="pixels-8", text="bow", pairs=f"csv:{pairs}", retrieval=f"csv:{test}",
                  metrics=("retrieval",), train={"epochs": 1, "out_dim": 8})
    with pytest.raises(TrainTestOverlapError) as err:
        run_pair(RunConfig(**config), out_dir=tmp_path / "r", options=OPTIONS)
    message = str(err.value)
    # the count of shared images out of the test set, how they were found, an example, the way out
    assert message.startswith("2 of the 4 ") and "2 by path, 0 by content" in message
    assert re.search(r"e\.g\. --retrieval '[^']*[45]\.png'", message), message
    assert "allow_overlap" in message
    assert not list((tmp_path / "r").glob("probe__*.json"))  # refused before any work
    record, _, _ = run_pair(RunConfig(**config, allow_overlap=True), out_dir=tmp_path / "r", options=OPTIONS)
    overlap = record["details"]["overlap"]["pairs->retrieval"]
    assert overlap["n"] == 2 and overlap["allowed"] is True


def test_similarity_uses_a_fixed_sample_and_reports_chance(tmp_path):
    config = RunConfig(vision="pixels-8", text="bow", pairs="shapes:train?n=300", metrics=("similarity",),
                       similarity_samples=200)
    record, _, _ = run_pair(config, out_dir=tmp_path, options=OPTIONS)
    metrics, details = record["metrics"], record["details"]
    assert details["similarity_n"] == 200
    for name in ("mutual_knn", "cka", "cknna"):
        assert f"{name}_null" in metrics and np.isfinite(metrics[f"{name}_null"])
    assert metrics["cka"] > metrics["cka_null"]  # shapes' captions describe the images: above chance


def test_retrieval_keeps_at_most_five_captions_per_image(tmp_path):
    images = tmp_path / "images"
    _image_set(images, ["a.png", "b.png", "c.png", "d.png"])
    test = tmp_path / "test.jsonl"
    rows = [{"image": f"{images}/{n}.png", "caption": [f"{n} caption {k}" for k in range(7)]} for n in "abcd"]
    test.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = RunConfig(vision="pixels-8", text="bow", pairs="shapes:train?n=60", retrieval=f"jsonl:{test}",
                       metrics=("retrieval",), train={"epochs": 1, "out_dim": 8})
    record, _, _ = run_pair(config, out_dir=tmp_path / "r", options=OPTIONS)
    assert record["details"]["retrieval_max_captions"] == 5 and record["details"]["retrieval_captions"] == 20
