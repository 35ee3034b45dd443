"""`--trust-remote-code`: an encoder whose model code the registry does not pin is refused without it, with a
message naming the flag, and loads with it (the library's `trust_remote_code` opt-in)."""
from __future__ import annotations

import pytest
from helpers import invoke, save_hf_text

from alignprobe.backbones import EncoderSpec, register_encoder, unregister_encoder

NAME = "test-unpinned-remote-text"


@pytest.fixture(scope="module")
def remote_entry(tmp_path_factory):
    """A registered text encoder marked as running its own model code, with no pinned commit."""
    folder = save_hf_text(tmp_path_factory.mktemp("remote") / "bert")
    register_encoder(EncoderSpec(name=NAME, modality="text", source="transformers", path=str(folder), dim=32,
                                 pooling="mean", trust_remote_code=True, license="n/a"))
    yield NAME
    unregister_encoder(NAME)


@pytest.mark.parametrize("command", [
    ["encode", "--model", NAME, "--data", "shapes?n=8"],
    ["run", "--vision", "pixels-8", "--text", NAME, "--pairs", "shapes:train?n=8", "--labelled", "shapes:test?n=8",
     "--retrieval", "shapes:test?n=8", "--metrics", "zero_shot"],
    ["train", "--vision", "pixels-8", "--text", NAME, "--pairs", "shapes:train?n=8"],
])
def test_unpinned_remote_code_is_refused_naming_the_flag(remote_entry, tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    result = invoke(*command, "--cache-dir", tmp_path / "cache", "-q", catch_exceptions=True)
    assert result.exit_code == 2, result.output
    assert "runs model code from the hub" in result.output and "pass --trust-remote-code" in result.output
    assert "trust_remote_code=True" not in result.output  # the CLI user is told the flag, not the parameter


def test_with_the_flag_the_encoder_loads_and_encodes(remote_entry, tmp_path):
    result = invoke("encode", "--model", NAME, "--data", "shapes?n=8", "--cache-dir", tmp_path / "cache", "-q",
                    "--num-workers", "0", "--trust-remote-code")
    assert result.exit_code == 0, result.output
    assert "captions" in result.output and "miss" in result.output


def test_the_flag_reaches_every_encoding_command(monkeypatch, tmp_path):
    import alignprobe.probe.pipelines.run as run
    from alignprobe.errors import ValidationError

    seen = {}

    def stub(config, **kwargs):
        seen.update(kwargs)
        raise ValidationError("stub")

    monkeypatch.setattr(run, "run_pair", stub)
    invoke("run", "--vision", "pixels", "--text", "bow", "--cache-dir", tmp_path, "--trust-remote-code",
           catch_exceptions=True)
    assert seen["options"].trust_remote_code is True
    invoke("run", "--vision", "pixels", "--text", "bow", "--cache-dir", tmp_path, catch_exceptions=True)
    assert seen["options"].trust_remote_code is False
    for command in ("encode", "run", "sweep", "train", "eval", "classify", "segment", "export", "layers"):
        assert "--trust-remote-code" in invoke(command, "--help").output, command
