"""Image-caption pairs in webdataset / img2dataset tar shards, read by offset.

A shard is an uncompressed tar whose members are grouped into samples by key
(the member name up to the first dot of its base name, the webdataset rule):
``000123.jpg`` + ``000123.txt`` + ``000123.json`` is sample ``000123``.

- image: the first of ``.jpg``, ``.jpeg``, ``.png``, ``.webp`` members.
  A sample without one (caption-only samples, keys that do not match, an image
  stored as a tar link) stays a sample whose image cannot be loaded: encoding
  skips it like a corrupt image, so it is counted, named in the log and in the
  cache manifest's ``skipped`` list, and refused under ``strict`` (already when
  the dataset opens). ``describe()`` counts them (``n_skipped``) and names them
  (``skipped_samples``);
- caption: the ``.txt`` member, else ``"caption"`` of the ``.json`` member;
  extra positives: ``"extra_captions"`` (a list) of the ``.json`` member.
  A key with two members of one kind (two ``.txt``, two ``.jpg``: a tar may
  hold one name twice) is an error naming them, never a silent replacement;
- label (optional): a ``.cls`` member (a non-negative integer) or ``"label"`` of
  the ``.json``; either every sample has one or none does. The distinct values
  present become label ids 0..k-1 (their values are the class keys).

A shard that ends without the tar end-of-archive marker was cut short (at a
member boundary tarfile itself reads on silently); so is one holding fewer
samples than its img2dataset ``<shard>_stats.json`` counts.  Short shards are
logged and listed in ``describe()["short_shards"]``; ``strict`` opening fails
on them.

Why tarfile with recorded offsets instead of the ``webdataset`` package: the
probe needs random access (``load_image(i)``) for resumable, skippable,
re-orderable encoding, while webdataset only streams.  Headers are parsed once
when the dataset opens; afterwards an image is one ``os.pread`` of its byte
range, with no extraction.  ``os.pread`` does not move a shared file offset, so
even a handle inherited through ``fork`` is safe; handles are still opened
lazily per process (and dropped when pickled) so spawn-started DataLoader
workers work too.
"""
from __future__ import annotations

import glob
import io
import json
import logging
import os
import posixpath
import re
import tarfile
from pathlib import Path

import numpy as np

from alignprobe.errors import DataError, ImageLoadError
from alignprobe.io import DEFAULT_ENCODING, check_encoding, decode_bytes, utf16_without_bom
from alignprobe.probe.data.datasets import Dataset, decode_image, index_labels
from alignprobe.console import progress as tqdm

log = logging.getLogger("alignprobe.data")

WDS_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
_TEXT_EXTS = ("txt", "json", "cls")
_TAR_BLOCK = 512
_GLOB_CHARS = re.compile(r"[*?\[]")
_BRACE = re.compile(r"\{([^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    """Expand ``{a,b}`` alternatives and ``{00000..00009}`` ranges (zero padding kept)."""
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    body = m.group(1)
    rng = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", body)
    if rng:
        a, b = rng.group(1), rng.group(2)
        width = len(a) if a.startswith("0") or b.startswith("0") else 0
        lo, hi = int(a), int(b)
        step = 1 if hi >= lo else -1
        choices = [str(v).zfill(width) for v in range(lo, hi + step, step)]
    elif "," in body:
        choices = body.split(",")
    else:
        choices = ["{" + body + "}"]  # a literal brace pair, not an expansion
    head, tail = pattern[:m.start()], pattern[m.end():]
    return [r for c in choices for r in expand_braces(head + c + tail)]


def resolve_shards(path: str, split: str | None = None) -> list[str]:
    """Shard files named by a directory, one .tar, or a brace/glob pattern."""
    p = Path(path).expanduser()
    if split is not None:
        if not p.is_dir() or not (p / split).is_dir():
            raise DataError(f"wds:{path}: split {split!r} was requested but {p / split} is not a "
                            f"directory; point wds: at the split's shards directly")
        p = p / split
    if p.is_dir():
        shards = sorted(str(s) for s in p.iterdir() if s.suffix == ".tar" and s.is_file())
        if not shards:
            others = sorted(s.name for s in p.iterdir() if s.name.endswith((".tar.gz", ".tgz")))
            hint = (f"; compressed shards ({others[:3]}) cannot be read by offset, "
                    f"decompress them first") if others else ""
            raise DataError(f"wds:{path}: directory {p} holds no .tar shards{hint}")
        return shards
    shards: list[str] = []
    for pat in expand_braces(str(p)):
        if _GLOB_CHARS.search(pat):
            hits = sorted(glob.glob(pat))
            if not hits:
                raise DataError(f"wds:{path}: pattern {pat!r} matches no files")
            shards.extend(hits)
        elif os.path.isfile(pat):
            shards.append(pat)
        else:
            raise DataError(f"wds:{path}: shard {pat} does not exist")
    for s in shards:
        if s.endswith((".tar.gz", ".tgz")) or not s.endswith(".tar"):
            raise DataError(f"wds:{path}: {s} is not an uncompressed .tar shard; compressed "
                            f"shards cannot be read by offset, decompress them first")
    return [str(Path(s).resolve()) for s in dict.fromkeys(shards)]


class WebDataset(Dataset):
    kind = "wds"

    def __init__(self, name, shards, ids, shard_index, offsets, sizes, members, captions,
                 labels=None, n_skipped=0, short_shards=None, no_image=None, **kwargs):
        self.shards = list(shards)
        self.short_shards = dict(short_shards or {})  # shard path -> why it is short
        self._shard_index = np.asarray(shard_index, dtype=np.int32)
        self._offsets = np.asarray(offsets, dtype=np.int64)
        self._sizes = np.asarray(sizes, dtype=np.int64)
        self._members = list(members)
        self._captions = captions
        # row -> why the sample has no image (it is skipped when encoded; strict refuses it)
        self.no_image: dict[int, str] = dict(no_image or {})
        self.n_skipped = n_skipped + len(self.no_image)
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()
        super().__init__(name, ids, labels=labels, **kwargs)

    def raw_size(self, i: int) -> int | None:
        """The byte size of sample ``i``'s stored image member (None: the sample has no image)."""
        return None if i in self.no_image else int(self._sizes[i])

    def raw_bytes(self, i: int) -> bytes:
        """The stored bytes of sample ``i``'s image member, undecoded (`ImageLoadError` when it has
        none, or its shard is unreadable or cut short)."""
        s = int(self._shard_index[i])
        where = f"{self.shards[s]}:{self._members[i]}"
        if i in self.no_image:
            raise ImageLoadError(self.ids[i], where, self.no_image[i])
        try:
            data = os.pread(self._fd(s), int(self._sizes[i]), int(self._offsets[i]))
        except OSError as exc:
            raise ImageLoadError(self.ids[i], where, f"shard unreadable ({exc})") from None
        if len(data) != self._sizes[i]:
            raise ImageLoadError(self.ids[i], where,
                                 f"shard truncated: read {len(data)} of {self._sizes[i]} bytes")
        return data

    def load_image(self, i: int):
        where = f"{self.shards[int(self._shard_index[i])]}:{self._members[i]}"
        return decode_image(io.BytesIO(self.raw_bytes(i)), self.ids[i], where)

    def captions(self, i: int) -> list[str]:
        return list(self._captions[i])

    @property
    def has_captions(self) -> bool:
        return any(self._captions)

    def describe(self) -> dict:
        d = super().describe()
        d.update(n_shards=len(self.shards), n_skipped=self.n_skipped, short_shards=dict(self.short_shards),
                 skipped_samples=self.skipped_samples(limit=100))
        return d

    def skipped_samples(self, limit: int | None = None) -> dict[str, str]:
        """Sample id -> why it has no image (the first `limit` of them)."""
        rows = sorted(self.no_image)[:limit]
        return {self.ids[i]: self.no_image[i] for i in rows}

    def validate(self) -> None:
        """Check that no shard was cut short and every indexed member lies inside its shard."""
        if self.short_shards:
            lines = "; ".join(f"{s}: {why}" for s, why in self.short_shards.items())
            raise DataError(f"{self.name}: {len(self.short_shards)} shard(s) are short, samples are "
                            f"missing: {lines}. Re-copy or re-create them, or drop strict=True (--strict) to use "
                            f"the samples that remain")
        if self.no_image:
            shown = "; ".join(f"{k!r} ({why})" for k, why in self.skipped_samples(limit=5).items())
            more = f" and {len(self.no_image) - 5} more" if len(self.no_image) > 5 else ""
            raise DataError(f"{self.name}: {len(self.no_image)} sample(s) have no image member: {shown}{more}. "
                            f"Re-create the shards with an image for every key, or drop strict=True (--strict) to skip them")
        ends = np.zeros(len(self.shards), dtype=np.int64)
        np.maximum.at(ends, self._shard_index, self._offsets + self._sizes)
        for s, end in enumerate(ends):
            size = os.path.getsize(self.shards[s])
            if end > size:
                raise DataError(f"{self.name}: shard {self.shards[s]} is truncated ({size} bytes, "
                                f"members reach {end}); re-copy or re-create it")

    def close(self) -> None:
        for fd in self._fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = {}

    def _fd(self, s: int) -> int:
        if self._pid != os.getpid():  # inherited through fork: open our own
            self._fds, self._pid = {}, os.getpid()
        fd = self._fds.get(s)
        if fd is None:
            fd = self._fds[s] = os.open(self.shards[s], os.O_RDONLY)
        return fd

    def _hash_content(self, h) -> None:
        # Shard base names, not absolute paths: moving the shards keeps the cache valid.
        for s in self.shards:
            st = os.stat(s)
            h.update(f"{os.path.basename(s)}:{st.st_size}:{st.st_mtime_ns}\n".encode())

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_fds"] = {}
        return state

    def __del__(self):
        try:
            if getattr(self, "_pid", None) == os.getpid():
                self.close()
        except Exception:  # interpreter shutdown: module globals may be gone
            pass


def read_webdataset(path: str, *, split: str | None = None, name: str | None = None,
                    progress: bool | None = None, encoding: str | None = None) -> WebDataset:
    """Index the shards named by `path` (see module docstring) and return the dataset.

    `encoding`: of the ``.txt`` / ``.json`` members (None: UTF-8).
    """
    shards = resolve_shards(path, split)
    keys, shard_idx, offsets, sizes, members, caps, labels = [], [], [], [], [], [], []
    no_image: dict[int, str] = {}
    short: dict[str, str] = {}
    codec = check_encoding(encoding, f"wds:{path}")
    disable = None if progress is None else not progress
    for s, shard in enumerate(tqdm(shards, desc="indexing shards", unit="shard",
                                   disable=disable or len(shards) < 4)):
        samples, why = _index_shard(shard, codec)
        if why is not None:
            short[shard] = why
        for key, sample in samples:
            img = next((sample[e] for e in WDS_IMAGE_EXTS if e in sample), None)
            if img is None:  # a row that encoding skips (and strict refuses), not one dropped unseen
                no_image[len(keys)] = _why_no_image(sample)
                img = (0, 0, key)
            meta = sample.get("json", {})
            cap_list = []
            if sample.get("txt"):
                cap_list.append(sample["txt"])
            elif isinstance(meta.get("caption"), str) and meta["caption"].strip():
                cap_list.append(meta["caption"].strip())
            extra = meta.get("extra_captions")
            if extra is not None:
                if not isinstance(extra, list) or not all(isinstance(c, str) for c in extra):
                    raise DataError(f"{shard}: sample {key!r}: 'extra_captions' in its .json "
                                    f"must be a list of strings")
                if not cap_list and extra:
                    raise DataError(f"{shard}: sample {key!r} has extra captions but no main "
                                    f"caption (.txt or 'caption' in .json)")
                cap_list += [c.strip() for c in extra if c.strip()]
            lab = sample.get("cls", meta.get("label"))
            if lab is not None and (isinstance(lab, bool) or not isinstance(lab, int) or lab < 0):
                raise DataError(f"{shard}: sample {key!r} has label {lab!r}; labels must be "
                                f"integers 0..k-1 (.cls member or 'label' in .json)")
            keys.append(key)
            shard_idx.append(s)
            offsets.append(img[0])
            sizes.append(img[1])
            members.append(img[2])
            caps.append(cap_list)
            labels.append(lab)
    for shard, why in short.items():
        log.warning("wds: shard %s is short: %s; re-copy it (--strict makes this an error)", shard, why)
    if len(no_image) == len(keys):
        raise DataError(f"wds:{path}: the shards hold no samples with an image "
                        f"({'/'.join(WDS_IMAGE_EXTS)} members)")
    ids = keys
    if len(set(keys)) != len(keys):
        # Keys collide across hand-made shards: qualify every id with its shard
        # name (all of them, so ids do not depend on which ones collide).
        ids = [f"{Path(shards[s]).stem}/{k}" for s, k in zip(shard_idx, keys)]
    with_label = [lab is not None for lab in labels]
    label_arr = class_keys = None
    if any(with_label):
        if not all(with_label):
            first = ids[with_label.index(False)]
            raise DataError(f"wds:{path}: some samples have labels and others not (e.g. "
                            f"{first!r}); give every sample a .cls member or none")
        # the values present, never range(max + 1): one label 10**12 is one class
        label_arr, values = index_labels(labels)
        class_keys = [str(v) for v in values]
    if no_image:
        shown = ", ".join(f"{ids[i]!r} ({why})" for i, why in list(no_image.items())[:5])
        log.warning("wds:%s: %d sample(s) have no image member and will be skipped: %s%s; --strict makes "
                    "this an error", path, len(no_image), shown, " ..." if len(no_image) > 5 else "")
    root = str(Path(shards[0]).parent)
    ds = WebDataset(name or f"wds:{path}", shards, ids, shard_idx, offsets, sizes, members,
                    caps, labels=label_arr, short_shards=short, no_image=no_image,
                    class_keys=class_keys, root=root, split=split)
    ds.integer_class_keys = True
    return ds


def _why_no_image(sample: dict) -> str:
    links = sample.get("links", [])
    if links:
        return (f"its image member {links[0]} is a tar link, which is not followed; store the image "
                f"itself in the shard")
    has = sorted(e for e in sample if e not in ("links", "_names"))
    return (f"no image member ({'/'.join(WDS_IMAGE_EXTS)}); the key has only "
            f"{', '.join('.' + e for e in has) or 'no readable members'}"
            f" -- a caption-only sample, or member names whose keys do not match")


def _index_shard(shard: str, encoding: str = DEFAULT_ENCODING):
    """([(key, {ext: value}) per sample in member order], why the shard is short or None).

    Image members are recorded as (data offset, size, member name); text
    members (.txt, .json, .cls) are small and read now, so captions and labels
    need no further I/O.
    """
    samples: dict[str, dict] = {}
    try:
        tf = tarfile.open(shard, mode="r:")
    except (tarfile.TarError, OSError) as exc:
        raise DataError(f"{shard} is not a readable uncompressed tar ({exc})") from None
    with tf:
        try:
            for m in tf:
                if not (m.isfile() or m.issym() or m.islnk()):
                    continue
                prefix, base = posixpath.split(m.name)
                if base.startswith(".") or "." not in base:
                    continue
                stem, ext = base.split(".", 1)
                key = posixpath.join(prefix, stem) if prefix else stem
                ext = ext.lower()
                if ext not in WDS_IMAGE_EXTS and ext not in _TEXT_EXTS:
                    continue
                sample = samples.setdefault(key, {})
                if not m.isfile():  # a link: its data is not in the member, so the sample has none
                    sample.setdefault("links", []).append(m.name)
                    continue
                if ext in sample:
                    first = sample[ext][2] if ext in WDS_IMAGE_EXTS else sample["_names"][ext]
                    raise DataError(f"{shard}: sample {key!r} has two .{ext} members ({first} and {m.name}); "
                                    f"one would silently replace the other. Keep one (extra captions go "
                                    f"in the .json member's 'extra_captions' list)")
                if ext in WDS_IMAGE_EXTS:
                    sample[ext] = (m.offset_data, m.size, m.name)
                else:
                    raw = tf.extractfile(m).read()
                    sample[ext] = _parse_text_member(shard, m.name, ext, raw, encoding)
                    sample.setdefault("_names", {})[ext] = m.name
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DataError(f"{shard}: corrupt or truncated tar ({exc}); re-create or "
                            f"re-copy the shard") from None
        end = tf.offset  # where tarfile stopped: the end-of-archive marker in a whole shard
    return list(samples.items()), _short_reason(shard, end, samples)


def _short_reason(shard: str, end: int, samples: dict) -> str | None:
    """Why a shard that tarfile read without error is still short, or None.

    tarfile ends quietly when the file stops at a member boundary or a header
    is garbled, so the samples after the cut vanish; a complete tar has a zero
    block (the end-of-archive marker) where the members stop.
    """
    size = os.path.getsize(shard)
    with open(shard, "rb") as fh:
        fh.seek(end)
        marker = fh.read(_TAR_BLOCK)
    if len(marker) < _TAR_BLOCK or marker.count(0) != _TAR_BLOCK:
        what = ("the file ends right after the last member" if end >= size
                else f"unreadable data from byte {end} of {size}")
        return (f"no tar end-of-archive marker ({what}): the shard was cut short, "
                f"{len(samples)} samples read")
    # img2dataset writes <shard>_stats.json beside each shard with the samples it wrote.
    stats = Path(shard).with_name(Path(shard).stem + "_stats.json")
    if stats.is_file():
        try:
            expected = json.loads(stats.read_text()).get("successes")
        except (OSError, ValueError, AttributeError):
            expected = None
        with_image = sum(any(e in smp for e in WDS_IMAGE_EXTS) for smp in samples.values())
        if isinstance(expected, int) and with_image < expected:
            return f"{with_image} samples but {stats.name} counts {expected}"
    return None


def _parse_text_member(shard, member, ext, raw: bytes, encoding: str = DEFAULT_ENCODING):
    try:
        text = decode_bytes(raw, encoding).strip()  # a UTF-16 byte-order mark is honoured
    except UnicodeDecodeError as exc:
        guess = utf16_without_bom(raw[:4096])
        hint = f"'?encoding={guess}' (it looks like {guess.upper()})" if guess else "'?encoding=latin-1'"
        raise DataError(f"{shard}:{member} is not {'UTF-8' if encoding == DEFAULT_ENCODING else encoding} "
                        f"text (byte offset {exc.start} of the member, bytes {raw[exc.start:exc.end]!r}); "
                        f"add its encoding to the data spec, e.g. {hint}, or re-create the "
                        f"shard with UTF-8 text") from None
    if ext == "txt":
        return text
    if ext == "cls":
        try:
            return int(text)
        except ValueError:
            raise DataError(f"{shard}:{member} should hold an integer label, got "
                            f"{text[:40]!r}") from None
    try:
        obj = json.loads(text) if text else {}
    except json.JSONDecodeError as exc:
        raise DataError(f"{shard}:{member} is not valid JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{shard}:{member} must hold a JSON object")
    return obj
