"""`alignprobe train --from-sweep`, `eval`, `classify` and `load_aligned` on control encoders and tiny shapes."""
import json

import numpy as np
import pytest
import torch
from helpers import invoke

from alignprobe.cli_train import classify, evaluate, train

DATA = dict(pairs="shapes:train?n=200", labelled="shapes:test?n=200", retrieval="shapes:test?n=200")
# bow is 2048-d: a star text head would dominate the run time, so the text side is linear here
# (star on both sides is covered by test_sail_training.py)
TINY = ["--dim", "16", "--width", "2", "--text-head", "linear", "--epochs", "3", "--micro-batch", "64",
        "--chunk-size", "64"]


# slow: a module fixture trains from a sweep (~10 s); load_aligned, eval and classify also have fast tests
# (test_encoder_identity, test_classify_images)
pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Probe records of pixels x bow and hog x bow, as `alignprobe sweep` writes them."""
    from alignprobe.config import EncodeOptions
    from alignprobe.probe.pipelines.sweep import SweepConfig, run_sweep

    root = tmp_path_factory.mktemp("sail_cli")
    cache = root / "cache"
    config = SweepConfig(vision="pixels,hog", text="bow", seeds=[0],
                         run=dict(metrics=("zero_shot", "retrieval"), train={"epochs": 5}, **DATA))
    outcomes = run_sweep(config, out_dir=root / "results",
                         options=EncodeOptions(quiet=True, num_workers=0, cache_dir=str(cache)))
    assert [o.status for o in outcomes] == ["done", "done"], [o.error for o in outcomes]
    return root, cache


@pytest.fixture(scope="module")
def trained(sweep):
    root, cache = sweep
    results = root / "results"
    res = invoke("--from-sweep", results, "--top-k", "2", "--by", "i2t_r1", *TINY, "--cache-dir", cache,
                 "--num-workers", "0", "-q", command=train)
    assert res.exit_code == 0, res.output
    return root, cache, res.output


def test_from_sweep_trains_top_k_and_report_shows_both_kinds(trained):
    from alignprobe.reports.report import write_report
    from alignprobe.reports.store import load_results

    root, _, output = trained
    results = root / "results"
    assert "SAIL heads for the top 2 pairs" in output and "small data" in output
    records = [json.loads(p.read_text()) for p in sorted(results.glob("sail__*.json"))]
    assert sorted(r["vision"] for r in records) == ["hog", "pixels"]
    probe = json.loads(next(results.glob("probe__hog__*.json")).read_text())
    for rec in records:
        assert rec["kind"] == "sail" and rec["status"] == "ok"
        for key in ("vision", "text", "vision_info", "text_info", "config", "config_hash", "group_hash", "seed",
                    "metrics", "timings_s", "started", "finished", "environment", "checkpoint"):
            assert key in rec, key
        assert set(probe["metrics"]) & set(rec["metrics"]) >= {"zero_shot_top1", "i2t_r1", "t2i_r10"}
        assert rec["config"]["pairs"] == DATA["pairs"]  # trained on the data its probe ran on
        assert (root / "results" / "sail").exists() and json.loads(open(rec["checkpoint"]).read())["finished"]
    df = load_results(results)
    assert sorted(df["kind"]) == ["probe", "probe", "sail", "sail"]
    table = write_report(results, "md")
    assert table.count("sail") >= 2 and table.count("probe") >= 2
    # rerunning reuses the finished records instead of retraining
    again = invoke("--from-sweep", results, "--top-k", "1", "--by", "i2t_r1", *TINY, "--cache-dir", root / "cache",
                   "-q", command=train)
    assert again.exit_code == 0 and "reused" in again.output


def test_load_aligned_encode_and_classify(trained):
    import alignprobe
    from alignprobe.probe.pipelines.aligned import load_aligned
    from alignprobe.probe.data.spec import open_dataset

    root, _, _ = trained
    run = next((root / "results" / "sail").glob("hog__bow__*"))
    model = load_aligned(run, device="cpu")
    assert getattr(alignprobe, "load_aligned", load_aligned) is load_aligned
    ds = open_dataset("shapes:test?n=120")
    images = [ds.load_image(i) for i in range(12)]
    z_img = model.encode_image(images)
    z_txt = model.encode_text(["a red circle", "a blue square"])
    assert z_img.shape == (12, 16) and z_txt.shape == (2, 16)
    torch.testing.assert_close(z_img.norm(dim=1), torch.ones(12))
    result = model.classify(images, ds.class_names, templates=ds.templates)
    assert result.scores.shape == result.probs.shape == (12, len(ds.class_names))
    assert set(result.labels) <= set(ds.class_names) and np.all((result.probs > 0) & (result.probs < 1))
    assert len(result.top(3)[0]) == 3
    # the same numbers as heads applied to the frozen encoder's embeddings
    feats = model.encoder("vision").encode(images)
    torch.testing.assert_close(model.transform_image(feats), z_img)


def test_eval_and_classify_commands(trained, tmp_path):
    root, cache, _ = trained
    run = next((root / "results" / "sail").glob("hog__bow__*"))
    res = invoke("--model", run, "--retrieval", "none", "--cache-dir", cache, "--json", tmp_path / "eval.json", "-q",
                 command=evaluate)
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "eval.json").read_text())["metrics"]
    assert set(metrics) == {"zero_shot_top1", "zero_shot_top5"}
    record = json.loads(next((root / "results").glob("sail__hog__*.json")).read_text())
    assert metrics["zero_shot_top1"] == pytest.approx(record["metrics"]["zero_shot_top1"])

    from alignprobe.probe.data.spec import open_dataset

    ds = open_dataset("shapes:test?n=120")
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(3):
        ds.load_image(i).save(images / f"img{i}.png")
    res = invoke("--model", run, "--images", images, "--classes", "circle,square,triangle", "--top-k", "2",
                 "--device", "cpu", "--json", tmp_path / "pred.json", command=classify)
    assert res.exit_code == 0, res.output
    assert all(f"img{i}.png" in res.output for i in range(3))
    preds = json.loads((tmp_path / "pred.json").read_text())["predictions"]
    assert [p["class"] in ("circle", "square", "triangle") for p in preds] == [True] * 3
    bad = invoke("--model", run, "--images", tmp_path / "nothing", "--classes", "a,b", command=classify,
                 catch_exceptions=True)
    assert bad.exit_code == 2 and "--images" in bad.output and "neither an image file nor a directory" in bad.output
    # --top-k: at least 1 (click) and at most the number of classes (named with the count)
    zero = invoke("--model", run, "--images", images, "--classes", "a,b", "--top-k", "0", command=classify,
                  catch_exceptions=True)
    assert zero.exit_code == 2 and "--top-k" in zero.output and "x>=1" in zero.output
    many = invoke("--model", run, "--images", images, "--classes", "a,b", "--top-k", "3", command=classify,
                  catch_exceptions=True)
    assert many.exit_code == 2 and "--top-k=3 but there are 2 classes" in many.output
