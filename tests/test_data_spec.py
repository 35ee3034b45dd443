"""Spec parsing and the shared contract of `open_dataset`."""
import json
import subprocess
import sys

import pytest

from alignprobe.errors import DataError
from alignprobe.probe.data.spec import KINDS, open_dataset, parse_spec


def test_parse_spec_forms(tmp_path):
    assert parse_spec("shapes") == ("shapes", "", {})
    assert parse_spec("shapes:train?n=10") == ("shapes", "train", {"n": "10"})
    assert parse_spec("csv:/d/p.csv?image=img&caption=a%26b") == (
        "csv", "/d/p.csv", {"image": "img", "caption": "a&b"})
    # a glob '?' is not a query; a '+' stays literal
    assert parse_spec("wds:/s/0000?.tar") == ("wds", "/s/0000?.tar", {})
    assert parse_spec("coco:/d/k.json?split=train+restval")[2] == {"split": "train+restval"}
    (tmp_path / "p.csv").write_text("image,caption\n")
    assert parse_spec(str(tmp_path / "p.csv"))[0] == "csv"
    (tmp_path / "x.jsonl").touch()
    assert parse_spec(str(tmp_path / "x.jsonl"))[0] == "jsonl"
    assert parse_spec(f"{tmp_path}/shards/{{000..009}}.tar")[0] == "wds"


def test_unknown_kind_lists_valid_kinds():
    with pytest.raises(DataError) as exc:
        open_dataset("imagenet:/data/x")
    msg = str(exc.value)
    assert "unknown data source kind 'imagenet'" in msg
    for kind in KINDS:
        assert kind in msg


def test_other_spec_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_dataset(str(tmp_path / "missing.csv"))
    with pytest.raises(DataError, match="unknown key\\(s\\) \\['colour'\\].*valid keys: split, templates, class_names, n, size, seed"):
        open_dataset("shapes?colour=red")
    with pytest.raises(DataError, match="names no path"):
        open_dataset("csv:")
    with pytest.raises(DataError, match="empty data spec"):
        open_dataset("  ")
    with pytest.raises(DataError, match="size='big' must be an integer"):
        open_dataset("digits?size=big")
    with pytest.raises(DataError, match="gives templates 'simple' but templates='clip'"):
        open_dataset("shapes?templates=simple", templates="clip")


def test_describe_is_json_and_complete():
    d = open_dataset("shapes:test?n=50").describe()
    json.dumps(d)
    assert d["name"] == "shapes:test?n=50" and d["n"] == 10 and d["kind"] == "shapes"
    assert d["n_classes"] == 6 and len(d["fingerprint"]) == 64 and d["split"] == "test"


def test_import_is_light():
    # the contract modules must not pull torch or scikit-learn in at import time
    code = ("import sys; import alignprobe.probe.data.spec, alignprobe.probe.data.datasets, "
            "alignprobe.probe.data.templates; "
            "bad = [m for m in ('torch', 'sklearn', 'pandas') if m in sys.modules]; "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
