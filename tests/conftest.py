"""Test-wide settings: no network, a private cache, quiet progress bars."""
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
