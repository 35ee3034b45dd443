"""The CLI under bad input: numeric options refused before any work, unwritable outputs refused
before any work, a damaged cache and strict mode through the commands, messages in flags; never a
traceback without -vv."""
from __future__ import annotations

import csv

import pytest
from helpers import invoke
from PIL import Image


def cli(*args):
    return invoke(*args, catch_exceptions=True)


def assert_clean_failure(result, code=2):
    """A clear message and an exit code; never an exception escaping (a traceback)."""
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output


# --------------------------------------------------------------------------- numeric options
@pytest.mark.parametrize("args, flag", [
    (["encode", "--model", "pixels", "--data", "digits", "--num-workers", "-1"], "--num-workers"),
    (["encode", "--model", "pixels", "--data", "digits", "--batch-size", "0"], "--batch-size"),
    (["encode", "--model", "pixels", "--data", "digits", "--shard-rows", "0"], "--shard-rows"),
    (["encode", "--model", "pixels", "--data", "digits", "--shard", "2/2"], "--shard"),
    (["encode", "--model", "pixels", "--data", "digits", "--shard", "half"], "--shard"),
    (["run", "--vision", "pixels", "--text", "bow", "--epochs", "0"], "--epochs"),
    (["run", "--vision", "pixels", "--text", "bow", "--num-workers", "-1"], "--num-workers"),
    (["run", "--vision", "pixels", "--text", "bow", "--seed", "-1"], "--seed"),
    (["run", "--vision", "pixels", "--text", "bow", "--lr", "0"], "--lr"),
    (["sweep", "--vision", "pixels", "--text", "bow", "--seeds", "0,x"], "--seeds"),
    (["sweep", "--vision", "pixels", "--text", "bow", "--seeds", "-3"], "--seeds"),
    (["sweep", "--vision", "pixels", "--text", "bow", "--shard", "0/0"], "--shard"),
    (["sweep", "--vision", "pixels", "--text", "bow", "--epochs", "-2"], "--epochs"),
    (["plot", ".", "--n-boot", "0"], "--n-boot"),
])
def test_bad_numbers_are_refused_before_any_work(tmp_path, monkeypatch, args, flag):
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "cache"
    monkeypatch.setenv("ALIGNPROBE_CACHE_DIR", str(cache))
    result = cli(*args)
    assert_clean_failure(result)
    assert flag in result.output and "Invalid value" in result.output
    assert not cache.exists() and not (tmp_path / "results").exists()  # nothing encoded, nothing written


def test_good_numbers_still_pass_the_checks(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNPROBE_CACHE_DIR", str(tmp_path / "cache"))
    result = cli("encode", "--model", "pixels", "--data", "digits", "--num-workers", "0", "--shard-rows", "500",
                 "--batch-size", "256", "--shard", "0/1", "-q")
    assert result.exit_code == 0, result.output
    [entry] = list((tmp_path / "cache").glob("vision/*/*"))
    assert len(list(entry.glob("shard-*.safetensors"))) == 4  # 1,797 digits in shards of 500


# --------------------------------------------------------------------------- output locations
@pytest.fixture
def blocker(tmp_path):
    path = tmp_path / "a-file"
    path.write_text("not a directory")
    return path


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_out_below_a_file_fails_before_any_work(tmp_path, monkeypatch, blocker, command):
    monkeypatch.setenv("ALIGNPROBE_CACHE_DIR", str(tmp_path / "cache"))
    result = cli(command, "--vision", "pixels", "--text", "bow", "--results-dir", blocker / "results")
    assert_clean_failure(result)
    assert "results directory (--results-dir)" in result.output and f"'{blocker}' is a file" in result.output
    assert not (tmp_path / "cache").exists() and blocker.read_text() == "not a directory"


@pytest.mark.parametrize("command", [
    ["encode", "--model", "pixels", "--data", "digits"],
    ["run", "--vision", "pixels", "--text", "bow"],
    ["sweep", "--vision", "pixels", "--text", "bow"],
])
def test_cache_dir_below_a_file_fails_before_any_work(tmp_path, monkeypatch, blocker, command):
    monkeypatch.chdir(tmp_path)
    result = cli(*command, "--cache-dir", blocker / "cache")
    assert_clean_failure(result)
    assert "embedding cache (--cache-dir)" in result.output and "is a file" in result.output
    assert not (tmp_path / "results").exists()


def test_no_recompute_may_read_a_cache_it_cannot_write(tmp_path, blocker):
    # Below a file nothing can be cached, so a miss is the usual clear --no-recompute error, not a write check.
    result = cli("encode", "--model", "pixels", "--data", "digits", "--cache-dir", blocker / "cache", "--no-recompute")
    assert_clean_failure(result)
    assert "no cached images" in result.output and "--no-recompute" in result.output


def test_report_and_plot_outputs_below_a_file(tmp_path, blocker):
    (tmp_path / "results").mkdir()
    report = cli("report", tmp_path / "results", "--output", blocker / "t.md")
    assert_clean_failure(report)
    assert "report file (--output)" in report.output and "is a file" in report.output
    export = cli("report", tmp_path / "results", "--export", blocker / "all.csv")
    assert_clean_failure(export)
    assert "--export" in export.output
    plot = cli("plot", tmp_path / "results", "--output-dir", blocker / "plots")
    assert_clean_failure(plot)
    assert "plot directory (--output-dir)" in plot.output


# --------------------------------------------------------------------------- damaged data and cache
def _pairs(tmp_path, corrupt: bool):
    rows = []
    for i in range(6):
        path = tmp_path / f"im{i}.png"
        Image.new("RGB", (16, 16), (40 * i, 10, 10)).save(path)
        rows.append({"image": path.name, "caption": f"picture {i}"})
    if corrupt:
        (tmp_path / "im2.png").write_bytes(b"\x89PNG not really an image")
    with open(tmp_path / "pairs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["image", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    return f"csv:{tmp_path / 'pairs.csv'}"


def test_strict_after_a_lenient_encode_is_an_error_naming_the_images(tmp_path):
    data = _pairs(tmp_path, corrupt=True)
    cache = tmp_path / "cache"
    lenient = cli("encode", "--model", "pixels", "--data", data, "--cache-dir", cache, "--num-workers", "0", "-q")
    assert lenient.exit_code == 0, lenient.output
    strict = cli("encode", "--model", "pixels", "--data", data, "--cache-dir", cache, "--num-workers", "0", "-q",
                 "--strict")
    assert_clean_failure(strict)
    assert "--strict" in strict.output and "'im2.png'" in strict.output


def test_damaged_cache_through_the_cli(tmp_path):
    data = _pairs(tmp_path, corrupt=False)
    cache = tmp_path / "cache"
    args = ("encode", "--model", "pixels", "--data", data, "--cache-dir", cache, "--num-workers", "0", "-q")
    assert cli(*args).exit_code == 0
    [shard] = list(cache.rglob("shard-00000.safetensors"))
    shard.write_bytes(shard.read_bytes()[:100])
    refused = cli(*args, "--no-recompute")
    assert_clean_failure(refused)
    assert f"cache entry {shard.parent} is damaged" in refused.output
    repaired = cli(*args)
    assert repaired.exit_code == 0, repaired.output
    assert "miss" in repaired.output and list(shard.parent.glob("damaged-*/shard-00000.safetensors"))
    assert "hit" in cli(*args).output


def test_wrong_modality_speaks_in_flags(tmp_path):
    result = cli("run", "--vision", "bow", "--text", "pixels", "--results-dir", tmp_path / "r", "--cache-dir", tmp_path / "c")
    assert_clean_failure(result)
    assert "--text NAME" in result.output or "--vision NAME" in result.output


def test_bad_data_without_and_with_vv(tmp_path):
    (tmp_path / "bad.csv").write_bytes("image,caption\nx.png,caf\u00e9\n".encode("latin-1"))
    quiet = cli("encode", "--model", "pixels", "--data", tmp_path / "bad.csv", "--cache-dir", tmp_path / "c")
    assert_clean_failure(quiet)
    at = (tmp_path / "bad.csv").read_bytes().index(b"\xe9")
    assert "?encoding=latin-1" in quiet.output and f"byte offset {at} " in quiet.output
    loud = cli("encode", "--model", "pixels", "--data", tmp_path / "bad.csv", "--cache-dir", tmp_path / "c", "-vv")
    assert loud.exit_code == 2 and "Traceback" in loud.output and "?encoding=latin-1" in loud.output


def test_os_errors_are_one_line_not_a_traceback(tmp_path, monkeypatch):
    from alignprobe.probe.embeddings import encode_job

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "cache" / "shard-00000.safetensors"))

    monkeypatch.setattr(encode_job, "encode_with", full_disk)
    result = cli("encode", "--model", "pixels", "--data", "digits", "--cache-dir", tmp_path / "cache")
    assert_clean_failure(result, code=1)
    assert "No space left on device" in result.output and "shard-00000.safetensors" in result.output
