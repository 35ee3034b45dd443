"""Helpers every `alignprobe` command shares: error printing, logging, tables, encode flags.

A module of its own so that `alignprobe.cli` and `alignprobe.cli_train` both
import it at the top (`cli` imports `cli_train` to register its commands, so
neither can import the other's helpers at import time).
"""
from __future__ import annotations

import functools
import logging
import sys
import traceback
from typing import TYPE_CHECKING

import click

from alignprobe.console import quiet_third_party
from alignprobe.errors import AlignprobeError

if TYPE_CHECKING:
    from alignprobe.config import EncodeOptions


def friendly_errors(func):
    """Print an AlignprobeError (or an OS error: disk full, permission denied) as one clear
    message and exit 2 (1 for OS errors); with ``-vv`` the traceback is printed too."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        debug = (kwargs.get("verbose") or 0) > 1
        try:
            return func(*args, **kwargs)
        except AlignprobeError as err:
            if debug:
                traceback.print_exc()
            click.echo(f"error: {err}", err=True)
            sys.exit(2)
        except OSError as err:
            # Files and disks fail in ways no check beforehand can rule out (full disk, lost mount).
            if debug:
                traceback.print_exc()
            where = f" ({err.filename})" if getattr(err, "filename", None) else ""
            click.echo(f"error: {err.strerror or err}{where}; finished shards and records are kept, "
                       f"fix the cause and rerun to resume (-vv shows the traceback).", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted: finished shards and results are kept; rerun to resume.", err=True)
            sys.exit(130)

    return wrapper


# ----------------------------------------------------------------------------- option checks
# Numbers are checked by click at parse time, so a bad value fails before any model loads or
# any row is encoded (and names the flag), not inside a DataLoader after the work.
POSITIVE_INT = click.IntRange(min=1)
NON_NEGATIVE_INT = click.IntRange(min=0)
#: numpy's seeds are 32-bit unsigned; a negative one fails deep inside numpy otherwise.
SEED = click.IntRange(min=0, max=2**32 - 1)
POSITIVE_FLOAT = click.FloatRange(min=0, min_open=True)


def shard_option_callback(ctx, param, value):
    """``--shard I/N``: checked when parsed (0 <= I < N) and kept as the string the API takes."""
    if value is None:
        return None
    from alignprobe.errors import ValidationError
    from alignprobe.probe.embeddings.encoding import parse_shard

    try:
        parse_shard(value)
    except ValidationError as err:
        raise click.BadParameter(str(err)) from None
    return value


def seed_list_callback(ctx, param, value):
    """``--seeds 0,1,2`` -> [0, 1, 2]; anything but comma-separated seeds in [0, 2**32) is a usage error."""
    if value is None:
        return None
    seeds = []
    for part in (p.strip() for p in str(value).split(",")):
        if not part:
            continue
        try:
            seeds.append(SEED.convert(part, param, ctx))
        except click.BadParameter:
            raise click.BadParameter(f"{part!r} is not a seed: give comma-separated integers in "
                                     f"[0, {2**32 - 1}], e.g. 0,1,2") from None
    if not seeds:
        raise click.BadParameter("no seeds given; e.g. --seeds 0,1,2")
    return seeds


def omit_unreadable_notes() -> None:
    """While the current command runs, drop the store's per-record "left out" warnings: the
    command names those records itself, once (and the filter must not outlive the command)."""
    store_log = logging.getLogger("alignprobe.reports.store")

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("left out of the results")

    store_log.addFilter(keep)
    click.get_current_context().call_on_close(lambda: store_log.removeFilter(keep))


def check_writable(path, what: str):
    """Fail now, before any work, if `path` (a directory) cannot be written."""
    from alignprobe.io import ensure_writable_dir

    return ensure_writable_dir(path, what)


def check_writable_file(path, what: str):
    from alignprobe.io import ensure_writable_file

    return ensure_writable_file(path, what)


def setup_logging(quiet: bool, verbose: int) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # The hub clients, faiss's loader, timm and transformers are chatty at INFO; their
    # messages are ours to translate.
    quiet_third_party(logging.ERROR)


def print_table(rows: list[dict], columns: list[str] | None = None) -> None:
    if not rows:
        click.echo("(nothing)")
        return
    columns = columns or list(rows[0])
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    click.echo("  ".join("-" * w for w in widths))
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def encode_options(func=None, *, batch_flag: str = "--batch-size"):
    """The flags of every command that encodes, as a decorator. ``train`` renames
    ``--batch-size`` (its own is the training batch) with ``batch_flag``."""
    if func is None:
        return functools.partial(encode_options, batch_flag=batch_flag)
    decorators = [
        click.option(batch_flag, "encode_batch_size", type=POSITIVE_INT, default=None,
                     help="Encoding batch size [64]."),
        click.option("--device", default=None, help="auto | cpu | cuda | cuda:N | mps [auto]; encoders and training."),
        click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default=None,
                     help="Model compute dtype [fp32 on CPU, fp16 on GPU]."),
        click.option("--storage-dtype", type=click.Choice(["fp16", "fp32"]), default=None,
                     help="Dtype of cached embeddings [fp16]."),
        click.option("--num-workers", type=NON_NEGATIVE_INT, default=None,
                     help="Image decoding workers, 0 = in the main process [one per spare core]."),
        click.option("--shard-rows", type=POSITIVE_INT, default=None,
                     help="Rows per cache shard: an interrupted encode resumes at the last finished shard "
                          "[4096; smaller for very slow encoders]."),
        click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
                     envvar="ALIGNPROBE_CACHE_DIR", help="Embedding cache root [~/.cache/alignprobe]."),
        click.option("--no-recompute", is_flag=True, help="Fail instead of encoding on a cache miss."),
        click.option("--strict", is_flag=True, help="A missing or corrupt image is an error, not skipped."),
        click.option("--quiet", "-q", is_flag=True, help="No progress bars or info logs."),
        click.option("--verbose", "-v", count=True, help="More logging (-vv for debug)."),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def options_from(kwargs) -> "EncodeOptions":
    """The EncodeOptions of the encode flags (popped from `kwargs`); the cache must be writable
    unless ``--no-recompute`` (reading a shared, read-only cache is fine then)."""
    from alignprobe.config import EncodeOptions, override

    options = override(
        EncodeOptions(),
        batch_size=kwargs.pop("encode_batch_size"),
        device=kwargs.pop("device"),
        dtype=kwargs.pop("dtype"),
        storage_dtype=kwargs.pop("storage_dtype"),
        num_workers=kwargs.pop("num_workers"),
        cache_dir=kwargs.pop("cache_dir"),
        recompute=not kwargs.pop("no_recompute"),
        strict=kwargs.pop("strict"),
        shard_rows=kwargs.pop("shard_rows"),
        quiet=kwargs["quiet"],
    )
    if options.recompute:
        from alignprobe.errors import OutputNotWritableError

        try:
            check_writable(options.cache_root(), "embedding cache (--cache-dir)")
        except OutputNotWritableError as err:
            raise OutputNotWritableError(f"{err} (or pass --no-recompute to only read a shared cache)") from None
    return options
