"""Sweep files: every malformed value is one ValidationError naming the file and the key, or the right result."""
from __future__ import annotations

import pytest

from alignprobe.errors import ValidationError
from alignprobe.probe.pipelines.sweep import SweepConfig


def _file(tmp_path, text: str, suffix: str = ".yaml"):
    path = tmp_path / f"sweep{suffix}"
    path.write_text(text)
    return path


def _refused(path, *fragments):
    with pytest.raises(ValidationError) as err:
        SweepConfig.from_file(path)
    message = str(err.value)
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.mark.parametrize("seeds, want", [('"0,1"', [0, 1]), ('" 3 , 7 "', [3, 7]), ("5", [5]), ("[2, 4]", [2, 4]),
                                         ('["1", "2"]', [1, 2])])
def test_seed_lists_in_several_spellings(tmp_path, seeds, want):
    path = _file(tmp_path, f"vision: [pixels]\ntext: [bow]\nseeds: {seeds}\n")
    assert SweepConfig.from_file(path).seeds == want


@pytest.mark.parametrize("seeds, shown", [("[0, -1]", "-1"), ('"0,-2"', "-2"), ("[1.5]", "1.5"), ("[true]", "True"),
                                          ('"a,b"', "'a'"), ("{a: 1}", "seeds: must be a list"),
                                          (str(2**32), str(2**32))])
def test_bad_seeds_name_the_key_and_the_value(tmp_path, seeds, shown):
    path = _file(tmp_path, f"vision: [pixels]\ntext: [bow]\nseeds: {seeds}\n")
    _refused(path, "seeds:", shown)


def test_negative_seed_from_the_api_is_refused_at_the_boundary():
    with pytest.raises(ValidationError, match=r"seeds: -3 is not a seed; seeds are integers in \[0, 4294967295\]"):
        SweepConfig(vision=["pixels"], text=["bow"], seeds=[0, -3])


@pytest.mark.parametrize("value, shown", [("5", "got 5 (int)"), ("{a: b}", "got {'a': 'b'} (dict)"),
                                          ("[pixels, 7]", "got 7 (int)"), ("[pixels, '']", "got ''"),
                                          ("[]", "at least one vision encoder")])
def test_encoder_names_must_be_strings(tmp_path, value, shown):
    path = _file(tmp_path, f"vision: {value}\ntext: [bow]\n")
    _refused(path, "vision", shown)


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = _file(tmp_path, "vision: [pixels\ntext: [bow]\n")
    _refused(path, "not valid YAML", "line ")


@pytest.mark.parametrize("tag", ["!!python/object:os.system {}", "!!python/object/apply:os.system ['touch x']",
                                 "!!python/name:os.system"])
def test_unsafe_yaml_tags_are_refused_and_build_nothing(tmp_path, tag, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _file(tmp_path, f"vision: [pixels]\ntext: [bow]\nrun: {tag}\n")
    _refused(path, "tag that is not allowed", "python/")
    assert not (tmp_path / "x").exists()


def test_toml_single_string_list_settings_are_one_item(tmp_path):
    path = _file(tmp_path, 'vision = ["pixels"]\ntext = "bow,minilm"\nseeds = "0,1"\n'
                           '[run]\nmetrics = "similarity"\nknn_k = 20\n', ".toml")
    cfg = SweepConfig.from_file(path)
    pair = cfg.pairs()[0]
    assert pair.metrics == ("similarity",) and pair.knn_k == (20,)
    assert cfg.text == ["bow", "minilm"] and cfg.seeds == [0, 1]
    two = _file(tmp_path, 'vision = "pixels"\ntext = "bow"\n[run]\nmetrics = "similarity, zero_shot"\n', ".toml")
    assert SweepConfig.from_file(two).pairs()[0].metrics == ("similarity", "zero_shot")


def test_bad_run_settings_name_the_file(tmp_path):
    _refused(_file(tmp_path, 'vision = "pixels"\ntext = "bow"\n[run]\nmetrics = "zero_shott"\n', ".toml"),
             "unknown metric", "zero_shott")
    _refused(_file(tmp_path, "vision: pixels\ntext: bow\nrun: [metrics]\n"), "run: must be a mapping")
    _refused(_file(tmp_path, "vision: pixels\ntext: bow\nrun: {epochs: 3}\n"), "unknown run setting", "epochs")


def test_toml_syntax_error_and_other_file_problems(tmp_path):
    _refused(_file(tmp_path, 'vision = ["pixels"\n', ".toml"), "not valid TOML")
    _refused(_file(tmp_path, "- pixels\n- bow\n"), "must hold a mapping")
    _refused(_file(tmp_path, "vision: [pixels]\n"), "no text key")
    bad = tmp_path / "latin.yaml"
    bad.write_bytes("vision: [caf\xe9]\ntext: [bow]\n".encode("latin-1"))
    _refused(bad, "not UTF-8")
    _refused(tmp_path / "missing.yaml", "does not exist")


def test_overrides_still_win(tmp_path):
    path = _file(tmp_path, "vision: [pixels]\ntext: [bow]\nseeds: '0,1'\n")
    cfg = SweepConfig.from_file(path, seeds=[4], vision="hog-16,pixels-8")
    assert cfg.seeds == [4] and cfg.vision == ["hog-16", "pixels-8"]
