"""Atomic file writes, text decoding with clear errors, and write checks before work starts.

Written by hand because the pattern is four lines and no library of the field
offers it for arbitrary writers (safetensors, JSON, images all need it).
"""
from __future__ import annotations

import codecs
import contextlib
import errno
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator

from alignprobe.errors import DataError, OutputNotWritableError, ValidationError

#: The encoding every reader assumes; "-sig" also drops a UTF-8 byte-order mark (Excel writes one).
DEFAULT_ENCODING = "utf-8-sig"


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    # Elsewhere the only portable way is to set and restore it.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path: str | os.PathLike, directory: bool = False) -> None:
    """Give `path` the mode a plain `open`/`mkdir` would: 0666 (0777 for directories) minus the umask.

    `tempfile.mkstemp` / `mkdtemp` create 0600 / 0700 whatever the umask, which
    would make a group-shared cache or results directory unreadable to colleagues.
    """
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` on success.

    The temp file lives in the same directory so the final `os.replace` is atomic
    on POSIX filesystems, including most shared network filesystems. The file
    ends with the mode the umask gives (not mkstemp's private 0600).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # After the writer ran: some writers recreate the file at their own mode.
        apply_umask(tmp_path)
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


# Rust's io::Error as safetensors prints it: "I/O error: No space left on device (os error 28)",
# or in older releases "IoError(Os { code: 28, kind: StorageFull, ... })".
_OS_CODE = re.compile(r"\(os error (\d+)\)|\bcode:\s*(\d+)")


def disk_error(exc: BaseException, target: str | os.PathLike) -> OSError | None:
    """The OSError that a library's own exception wraps (safetensors reports a full disk as
    ``SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")``),
    or None when `exc` is not an I/O failure."""
    if isinstance(exc, OSError):
        return exc
    text = str(exc)
    m = _OS_CODE.search(text)
    if m is None and "I/O error" not in text and "IoError" not in text:
        return None
    code = int(m.group(1) or m.group(2)) if m else errno.EIO
    return OSError(code, os.strerror(code), os.fspath(target))


@contextlib.contextmanager
def library_write(target: str | os.PathLike) -> Iterator[None]:
    """Re-raise an I/O failure that a writer library reports in its own exception type
    (safetensors' `SafetensorError` on a full disk) as the `OSError` it is, naming `target`.

    Everything else passes through unchanged. The CLI reports an OSError as a disk error
    (exit 1) and says that finished work is kept; `atomic_path` has already removed the
    half-written temp file, so the previous file at `target`, if any, is untouched.
    """
    try:
        yield
    except OSError:
        raise
    except Exception as exc:
        err = disk_error(exc, target)
        if err is None:
            raise
        raise err from exc


def write_json_atomic(target: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON to `target` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_text_atomic(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


# --------------------------------------------------------------------------- reading text
def check_encoding(encoding: str | None, where: str = "data spec") -> str:
    """The codec name to read with (`None` = UTF-8, BOM allowed); an unknown name is a DataError."""
    if encoding is None or encoding == "":
        return DEFAULT_ENCODING
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        raise DataError(f"{where}: unknown text encoding {encoding!r}; use a Python codec name such as "
                        f"utf-8, latin-1 or cp1252") from None
    # Plain "utf-8" would keep a byte-order mark as a character of the first column name.
    return DEFAULT_ENCODING if name == "utf-8" else name


def first_undecodable_byte(path: str | os.PathLike, encoding: str) -> tuple[int, bytes] | None:
    """(offset, the bytes there) of the first byte of `path` that `encoding` cannot decode, or None.

    Streams the file through an incremental decoder, so the offset is exact in a file of any size.
    """
    decoder = codecs.getincrementaldecoder(encoding)()
    offset = 0
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(1 << 20)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as err:
                # err.start counts from the start of what the decoder held: its buffered bytes plus this chunk.
                buffered = len(err.object) - len(chunk)
                return offset - buffered + err.start, bytes(err.object[err.start:err.end])
            if not chunk:
                return None
            offset += len(chunk)


# Byte-order marks that name an encoding outright (UTF-32 first: its LE mark starts with UTF-16's).
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def bom_encoding(head: bytes) -> str | None:
    """"utf-16" / "utf-32" when `head` (a file's first bytes) starts with that byte-order mark, else None."""
    for bom, name in _BOMS:
        if head.startswith(bom):
            return name
    return None


def sniff_encoding(path: str | os.PathLike, encoding: str | None = None) -> str:
    """The codec to read `path` with: `encoding` when given, else UTF-16/32 when the file starts with
    that byte-order mark (Windows tools write UTF-16 with one), else UTF-8 (BOM allowed)."""
    codec = check_encoding(encoding)
    if codec != DEFAULT_ENCODING:
        return codec
    try:
        with open(path, "rb") as fh:
            return bom_encoding(fh.read(4)) or codec
    except OSError:
        return codec


def decode_bytes(data: bytes, encoding: str | None = None) -> str:
    """`data` decoded as `read_text` decodes a file (a UTF-16/32 byte-order mark is honoured)."""
    codec = check_encoding(encoding)
    if codec == DEFAULT_ENCODING:
        codec = bom_encoding(data[:4]) or codec
    return data.decode(codec)


def utf16_without_bom(sample: bytes) -> str | None:
    """"utf-16-le" / "utf-16-be" when `sample` looks like UTF-16 text without a byte-order mark
    (ASCII characters leave every other byte zero), else None."""
    if len(sample) < 4:
        return None
    even, odd = sample[0::2], sample[1::2]
    if odd.count(0) > 0.3 * len(odd) and even.count(0) < 0.05 * len(even):
        return "utf-16-le"
    if even.count(0) > 0.3 * len(even) and odd.count(0) < 0.05 * len(odd):
        return "utf-16-be"
    return None


def decode_error(path: str | os.PathLike, encoding: str | None = None, *, spec_key: bool = True) -> DataError:
    """The error for a text file that does not decode: the file, the byte offset, and the fix.

    The fix names the encoding the bytes suggest: UTF-16 (every other byte zero) is
    told to use utf-16, anything else a single-byte code page such as latin-1.
    """
    encoding = check_encoding(encoding)
    found = first_undecodable_byte(path, encoding)
    where = f" at byte offset {found[0]} (bytes {found[1]!r})" if found else ""
    label = "UTF-8" if encoding == DEFAULT_ENCODING else encoding
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        head = b""
    guess = bom_encoding(head) or utf16_without_bom(head)
    name, stem, suffix = Path(path).name, Path(path).stem, Path(path).suffix
    if guess:
        what = f"; it looks like {guess.upper()} text"
        fix = (f"add '?encoding={guess}' to the data spec, or convert it: " if spec_key
               else "convert it to UTF-8: ")
        return DataError(f"{path} is not valid {label} text{where}{what}; {fix}"
                         f"iconv -f {guess} -t utf-8 {name} > {stem}.utf8{suffix}")
    fix = ("add the file's encoding to the data spec, e.g. '?encoding=latin-1' (or cp1252), or convert it: "
           if spec_key else "convert it to UTF-8 (from its encoding, e.g. latin-1 or cp1252): ")
    return DataError(f"{path} is not valid {label} text{where}; {fix}"
                     f"iconv -f latin1 -t utf-8 {name} > {stem}.utf8{suffix}")


def read_text(path: str | os.PathLike, encoding: str | None = None, *, spec_key: bool = True) -> str:
    """The text of `path` (UTF-8 with or without a BOM unless `encoding` says otherwise; a file
    that starts with a UTF-16 or UTF-32 byte-order mark is read as such).

    A file that does not decode raises DataError naming the file, the byte
    offset and the fix, instead of a bare UnicodeDecodeError.
    """
    codec = check_encoding(encoding)
    data = Path(path).read_bytes()
    if codec == DEFAULT_ENCODING:
        codec = bom_encoding(data[:4]) or codec
    try:
        return data.decode(codec)
    except UnicodeDecodeError:
        raise decode_error(path, codec, spec_key=spec_key) from None


# --------------------------------------------------------------------------- checking outputs
def ensure_writable_dir(path: str | os.PathLike, what: str = "output directory") -> Path:
    """Prove that files can be written in directory `path` (or that it can be created); raise a clear error otherwise.

    Called by the CLI before any work, so a wrong `--out` or `--cache-dir` fails
    in a second instead of after an hour of encoding. Nothing is created: the
    probe is a temp file, removed at once, in `path` or its nearest existing
    parent (a real write, because permission bits alone do not tell about
    read-only mounts, quotas or ACLs).
    """
    path = Path(path).expanduser()
    blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise OutputNotWritableError(
            f"{what} {str(path)!r} cannot be created: {str(blocker)!r} is a file, not a directory; "
            f"choose another location")
    existing = next((p for p in (path, *path.parents) if p.is_dir()), Path("."))
    try:
        fd, probe = tempfile.mkstemp(prefix=".alignprobe-write-check.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OutputNotWritableError(
            f"{what} {str(path)!r} is not writable ({err.strerror or err}); fix its permissions or "
            f"choose another location") from None
    return path


def ensure_writable_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """Check that `path` can be written (its directory is writable and it is not a directory)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputNotWritableError(f"{what} {str(path)!r} is a directory; name a file")
    ensure_writable_dir(path.parent if str(path.parent) else Path("."), f"directory of the {what}")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputNotWritableError(f"{what} {str(path)!r} exists and is read-only; choose another name")
    return path


def positive(value, name: str, *, minimum: float = 1, integer: bool = True):
    """`value` if it is a number >= `minimum` (None passes); otherwise a ValidationError naming `name`."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise ValidationError(f"{name} must be {'an integer' if integer else 'a number'} >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValidationError(f"{name} must be >= {minimum}, got {value!r}")
    return value
