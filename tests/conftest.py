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
