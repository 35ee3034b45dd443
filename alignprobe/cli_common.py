"""Helpers every `alignprobe` command shares: error printing, logging, tables, encode flags.

A module of its own so that `alignprobe.cli` and `alignprobe.cli_train` both
import it at the top (`cli` imports `cli_train` to register its commands, so
neither can import the other's helpers at import time).
"""
from __future__ import annotations

import functools
import logging
import sys
from typing import TYPE_CHECKING

import click

from alignprobe.errors import AlignprobeError

if TYPE_CHECKING:
    from alignprobe.config import EncodeOptions


def friendly_errors(func):
    """Print an AlignprobeError as one clear message (no traceback) and exit 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except AlignprobeError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted: finished shards and results are kept; rerun to resume.", err=True)
            sys.exit(130)

    return wrapper


def setup_logging(quiet: bool, verbose: int) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # The hub clients are chatty at INFO; their messages are ours to translate.
    for noisy in ("httpx", "huggingface_hub", "urllib3", "filelock", "sentence_transformers", "timm"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


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
        click.option(batch_flag, "encode_batch_size", type=int, default=None, help="Encoding batch size [64]."),
        click.option("--device", default=None, help="auto | cpu | cuda | cuda:N | mps [auto]; encoders and training."),
        click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default=None,
                     help="Model compute dtype [fp32 on CPU, fp16 on GPU]."),
        click.option("--storage-dtype", type=click.Choice(["fp16", "fp32"]), default=None,
                     help="Dtype of cached embeddings [fp16]."),
        click.option("--num-workers", type=int, default=None,
                     help="Image decoding workers [one per spare core]."),
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
    from alignprobe.config import EncodeOptions, override

    return override(
        EncodeOptions(),
        batch_size=kwargs.pop("encode_batch_size"),
        device=kwargs.pop("device"),
        dtype=kwargs.pop("dtype"),
        storage_dtype=kwargs.pop("storage_dtype"),
        num_workers=kwargs.pop("num_workers"),
        cache_dir=kwargs.pop("cache_dir"),
        recompute=not kwargs.pop("no_recompute"),
        strict=kwargs.pop("strict"),
        quiet=kwargs["quiet"],
    )
