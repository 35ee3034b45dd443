"""Test-wide settings (no network, a private cache, quiet progress bars) and shared fixtures: tiny
models built once per session (`tiny_model`), their registry entries (`tiny_registry`), one torch
thread, a training step that dies on cue. Plain helpers (CLI runner, images, features) are in helpers.py."""
import os

import pytest

# Set before any hub client is imported: tests must never reach the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own embedding cache so no test sees another's entries."""
    monkeypatch.setenv("ALIGNPROBE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: with several threads on a busy shared machine the OpenMP
    spin-waits cost 10x the arithmetic, so these modules run torch on one thread."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Killed(BaseException):
    """Raised by `kill_at_step`: a BaseException, as a kill is not an error any handler should catch."""


@pytest.fixture
def kill_at_step(monkeypatch):
    """``kill_at_step(n)`` makes the engine's n-th training step die (as kill -9 would, minus the process);
    ``kill_at_step(None)`` restores the real step. Returns the call counter."""
    from alignprobe.probe.training import engine

    real_step = engine.Trainer._train_step
    calls = {"n": 0}

    def arm(n):
        if n is None:
            monkeypatch.setattr(engine.Trainer, "_train_step", real_step)
            return calls

        def dying_step(self, batch):
            calls["n"] += 1
            if calls["n"] == n:
                raise Killed
            return real_step(self, batch)

        monkeypatch.setattr(engine.Trainer, "_train_step", dying_step)
        return calls

    return arm


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """``tiny_model(family)`` -> the folder of a tiny random model of that family, built once per
    session from a config (see `helpers`): "dinov2", "dinov2_reg", "vit", "vit_mae" (transformers
    vision), "bert" (transformers text), "sentence_transformers", "timm". Read-only: a test that
    changes a folder builds its own with the `helpers.save_*` functions."""
    import helpers

    root = tmp_path_factory.mktemp("tiny_models")
    built: dict[str, object] = {}
    builders = {
        **{family: (lambda d, f=family: helpers.save_hf_vision(d, f)) for family in helpers.HF_VISION},
        "bert": helpers.save_hf_text,
        "sentence_transformers": helpers.save_sentence_transformer,
        "timm": helpers.save_timm,
    }

    def build(family: str):
        if family not in builders:
            raise KeyError(f"no tiny model family {family!r}; choose from {sorted(builders)}")
        if family not in built:
            built[family] = builders[family](root / family)
        return built[family]

    return build


@pytest.fixture(scope="module")
def tiny_registry(tiny_model):
    """Registers every `helpers.TINY_ENCODERS` entry for the module's tests, then removes them all."""
    import helpers
    from alignprobe.backbones import register_encoder, unregister_encoder

    names = []
    try:
        for name, (_, family, _) in helpers.TINY_ENCODERS.items():
            register_encoder(helpers.tiny_spec(name, tiny_model(family)))
            names.append(name)
        yield names
    finally:
        for name in names:
            unregister_encoder(name)
