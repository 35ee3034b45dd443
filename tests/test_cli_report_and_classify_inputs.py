"""What the CLI used to compute itself and now asks the library for: `report`'s record count and its holding
back of the store's per-record warnings (`reports.report_status`), and `classify`'s image files and class
names (`probe.data.classify_inputs`)."""
from __future__ import annotations

import json
import logging

import pytest
from helpers import write_images

from alignprobe.errors import DataError, ValidationError
from alignprobe.probe.data.classify_inputs import check_top_k, class_names, image_files
from alignprobe.reports.report_status import STORE_LOGGER, count_records, store_warnings_held


def test_count_records_names_the_unreadable_ones(tmp_path):
    (tmp_path / "plan.json").write_text(json.dumps({"pairs": []}))  # other JSON: read, not a damaged record
    (tmp_path / "probe__a__b__1.json").write_text("{not json")
    (tmp_path / "probe__c__d__2.json").write_text(json.dumps({"vision": "c", "text": "d", "metrics": [1, 2]}))
    count = count_records(tmp_path)
    assert count.readable == 1 and len(count.unreadable) == 2 and count.total == 3
    lines = count.lines(tmp_path)
    assert lines[0] == f"report: 3 record file(s) in {tmp_path}, 2 unreadable (left out of the table):"
    assert len(lines) == 3 and "'metrics' is" in lines[2]
    assert count_records(tmp_path / "missing").total == 0 and count_records(tmp_path / "missing").lines("x") == []


def test_store_warnings_held_drops_only_the_per_record_note_and_only_inside(caplog):
    store = logging.getLogger(STORE_LOGGER)
    with caplog.at_level(logging.WARNING, logger=STORE_LOGGER):
        with store_warnings_held():
            store.warning("left out of the results: %s", "x.json is damaged")
            store.warning("something else")
        store.warning("left out of the results: %s", "after the block")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["something else", "left out of the results: after the block"]


def test_image_files_from_a_file_or_a_directory(tmp_path):
    paths = write_images(tmp_path / "imgs" / "nested", 3)
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    (tmp_path / "imgs" / ".hidden.png").write_bytes(b"")
    assert image_files(tmp_path / "imgs") == sorted(paths)
    assert image_files(paths[0]) == [paths[0]]
    with pytest.raises(DataError, match="neither an image file nor a directory"):
        image_files(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        image_files(tmp_path / "empty")


def test_class_names_from_a_list_or_a_file(tmp_path):
    assert class_names(" cat, dog ,,bird") == ["cat", "dog", "bird"]
    listing = tmp_path / "classes.txt"
    listing.write_text("# animals\ncat\n\ndog\n")
    assert class_names(listing) == ["cat", "dog"]
    with pytest.raises(ValidationError, match="classes is empty"):
        class_names(" , ")
    with pytest.raises(ValidationError, match=r"\['cat'\] more than once"):
        class_names("cat,dog,cat")


def test_top_k_is_between_one_and_the_class_count():
    assert check_top_k(2, 2) == 2
    for bad in (0, 3):
        with pytest.raises(ValidationError, match=f"top_k={bad} but there are 2 classes"):
            check_top_k(bad, 2)
