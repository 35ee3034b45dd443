"""`alignprobe encode` and `alignprobe models` end to end through the CLI, offline."""
from __future__ import annotations

import csv

import numpy as np
from helpers import invoke
from PIL import Image

from alignprobe.config import EncodeOptions
from alignprobe.probe.embeddings import encoding
from alignprobe.probe.embeddings.encode_job import encode_dataset


def table_rows(output: str) -> list[dict]:
    lines = [line for line in output.splitlines() if line.strip()]
    start = next(i for i, line in enumerate(lines) if line.startswith("kind"))
    header = lines[start].split()
    return [dict(zip(header, line.split())) for line in lines[start + 2:] if not line.startswith("skipped")]


def test_encode_pixels_digits_then_cache_hit():
    first = invoke("encode", "--model", "pixels", "--data", "digits", "-q")
    assert first.exit_code == 0, first.output
    rows = table_rows(first.output)
    assert rows[0]["kind"] == "images" and rows[0]["rows"] == "1797" and rows[0]["cache"] == "miss"
    second = invoke("encode", "--model", "pixels", "--data", "digits", "-q")
    rows = table_rows(second.output)
    assert rows[0]["cache"] == "hit" and rows[0]["encoded"] == "0"


def test_encode_minilm_captions_and_prompts_then_cache_hit():
    first = invoke("encode", "--model", "minilm", "--data", "shapes?n=40", "-q")
    assert first.exit_code == 0, first.output
    kinds = {r["kind"]: r for r in table_rows(first.output)}
    assert set(kinds) == {"captions", "prompts"} and kinds["captions"]["dim"] == "384"
    assert all(r["cache"] == "miss" for r in kinds.values())
    second = invoke("encode", "--model", "minilm", "--data", "shapes?n=40", "-q")
    assert all(r["cache"] == "hit" and r["encoded"] == "0" for r in table_rows(second.output))


def test_unknown_model_suggests_names():
    result = invoke("encode", "--model", "dinov3", "--data", "digits", catch_exceptions=True)
    assert result.exit_code == 2
    assert "dinov2" in result.output and "Traceback" not in result.output


def test_unreachable_hub_model_fails_with_clear_message(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = invoke("encode", "--model", "dinov2", "--data", "digits", catch_exceptions=True)
    assert result.exit_code == 2
    assert "not in the local cache" in result.output and "hf download facebook/dinov2-large" in result.output
    assert "Traceback" not in result.output


def _pairs_csv(tmp_path, missing: bool, corrupt: bool):
    rows = []
    for i in range(6):
        path = tmp_path / f"img{i}.png"
        Image.new("RGB", (12, 12), (40 * i, 0, 0)).save(path)
        rows.append({"image": path.name, "caption": f"a red square number {i}"})
    if missing:
        rows.append({"image": "nowhere.png", "caption": "a missing picture"})
    if corrupt:
        (tmp_path / "broken.png").write_bytes(b"not a png at all")
        rows.append({"image": "broken.png", "caption": "a broken picture"})
    with open(tmp_path / "pairs.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["image", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    return tmp_path / "pairs.csv"


def test_missing_and_corrupt_images_are_skipped_and_counted(tmp_path):
    path = _pairs_csv(tmp_path, missing=True, corrupt=True)
    result = invoke("encode", "--model", "pixels", "--data", f"csv:{path}", "-q", "--num-workers", "0")
    assert result.exit_code == 0, result.output
    row = table_rows(result.output)[0]
    assert row["rows"] == "8" and row["skipped"] == "2"
    assert "nowhere.png" in result.output or "skipped images" in result.output


def test_missing_image_is_an_error_under_strict(tmp_path):
    path = _pairs_csv(tmp_path, missing=True, corrupt=False)
    result = invoke("encode", "--model", "pixels", "--data", f"csv:{path}", "--strict", "-q", catch_exceptions=True)
    assert result.exit_code == 2
    assert "nowhere.png" in result.output


def test_corrupt_image_is_an_error_under_strict(tmp_path):
    path = _pairs_csv(tmp_path, missing=False, corrupt=True)
    result = invoke("encode", "--model", "pixels", "--data", f"csv:{path}", "--strict", "-q",
                                       "--num-workers", "0", catch_exceptions=True)
    assert result.exit_code == 2
    assert "broken.png" in result.output or "could not be loaded" in result.output


def test_malformed_csv_names_file_row_and_columns(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("picture,words\nx.png,hello\n")
    result = invoke("encode", "--model", "pixels", "--data", f"csv:{path}", "-q", catch_exceptions=True)
    assert result.exit_code == 2
    assert "bad.csv" in result.output and "caption" in result.output


def test_grid_of_two_by_two_encoders_encodes_four_times(monkeypatch, tmp_path):
    misses = []
    real = encoding.encode_source

    def counting(encoder, source, **kwargs):
        res = real(encoder, source, **kwargs)
        if not res.cache_hit:
            misses.append((encoder.spec.name, source.kind))
        return res

    from alignprobe.probe.pipelines import workspace
    from alignprobe.probe.pipelines.sweep import SweepConfig, run_sweep

    monkeypatch.setattr(workspace, "encode_source", counting)  # every pipeline encodes through the workspace

    sweep = SweepConfig(vision=["pixels", "hog"], text=["bow", "minilm"],
                        run={"pairs": "shapes:train?n=60", "metrics": ("similarity",)})
    outcomes = run_sweep(sweep, out_dir=tmp_path / "results", options=EncodeOptions(quiet=True))
    assert [o.status for o in outcomes] == ["done"] * 4, [o.error for o in outcomes]
    assert len(misses) == 4, misses
    assert sorted(kind for _, kind in misses) == ["captions", "captions", "images", "images"]


def test_models_lists_registry():
    result = invoke("models", "--modality", "vision")
    assert result.exit_code == 0
    assert "dinov2" in result.output and "pixels" in result.output and "minilm" not in result.output
    text = invoke("models", "--modality", "text").output
    assert "minilm" in text.lower() and "bow" in text


def test_encode_dataset_api_returns_memory_mapped_embeddings():
    results = encode_dataset("bow", "shapes?n=30", options=EncodeOptions(quiet=True))
    emb = results["captions"].embeddings
    array = emb.to_numpy()
    assert array.shape[0] == 90 and np.isfinite(array).all()
    assert emb.manifest["identity"]["encoder"]["name"] == "bow"
