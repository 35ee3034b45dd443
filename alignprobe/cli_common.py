"""Helpers every `alignprobe` command shares: error printing, logging, tables, the encode flags,
renamed flags with their deprecated spellings, and the flags every encoder-loading command takes.

A module of its own so that `alignprobe.cli` and `alignprobe.cli_train` both
import it at the top (`cli` imports `cli_train` to register its commands, so
neither can import the other's helpers at import time). It imports no torch:
`alignprobe --help` stays fast.
"""
from __future__ import annotations

import functools
import logging
import sys
import traceback
from typing import Sequence

import click
from click.core import ParameterSource

from alignprobe.config import EncodeOptions, override
from alignprobe.console import quiet_third_party
from alignprobe.errors import AlignprobeError, OutputNotWritableError, ValidationError
from alignprobe.io import ensure_writable_dir, ensure_writable_file
from alignprobe.probe.embeddings.encoding import parse_shard
from alignprobe.probe.embeddings.layers import parse_layers


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
            click.echo(f"error: {in_flags(str(err))}", err=True)
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


#: What the library asks an API caller to pass, and the flag a CLI user gives instead, where the current
#: command has that flag (the library names its parameters; the CLI speaks in flags).
PARAMETER_FLAGS = {"trust_remote_code": ("pass trust_remote_code=True", "pass --trust-remote-code")}


def in_flags(message: str) -> str:
    ctx = click.get_current_context(silent=True)
    names = {p.name for p in ctx.command.params} if ctx is not None else set()
    for name, (api, flag) in PARAMETER_FLAGS.items():
        if name in names:
            message = message.replace(api, flag)
    return message


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


def check_writable(path, what: str):
    """Fail now, before any work, if `path` (a directory) cannot be written."""
    return ensure_writable_dir(path, what)


def check_writable_file(path, what: str):
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


# ----------------------------------------------------------------------------- renamed flags
_PENDING_ALIASES = "alignprobe.deprecated_aliases"  # ctx.meta key: {dest: (old spelling, value)}
_GIVEN = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


def given(ctx: click.Context, name: str) -> bool:
    """Whether the user set parameter `name` (on the command line or through its environment variable)."""
    return ctx.get_parameter_source(name) in _GIVEN


def deprecation_note(old: str, new: str, why: str = "") -> None:
    click.echo(f"note: {old} is deprecated and will be removed in the next release; use {new}{why}", err=True)


def renamed_option(*decls: str, old: Sequence[str], **attrs):
    """`click.option(*decls, **attrs)` that also takes its `old` spellings for one release.

    The old spellings are a hidden option of the same type; using one prints a deprecation note on
    stderr and sets this option's value (its callback, if any, runs on it). Giving both spellings is
    a usage error. The hidden option is processed before this one when it is given (click processes
    the given parameters first), so its value waits in ``ctx.meta`` until this one's callback.
    """
    user_callback = attrs.pop("callback", None)
    required = attrs.pop("required", False)  # checked after the old spelling had its say
    new_flag = max((d for d in decls if d.startswith("--")), key=len)
    dest = next((d for d in decls if d.isidentifier()), new_flag.lstrip("-").replace("-", "_"))
    old_name = f"deprecated_{dest}"
    old_label = "/".join(old)

    def take_old(ctx, param, value):
        pending = ctx.meta.get(_PENDING_ALIASES, {}).pop(param.name, None)
        if pending is not None:
            if given(ctx, param.name):
                raise click.UsageError(f"{old_label} is the old spelling of {new_flag}; give only {new_flag}")
            value = pending
        if required and value is None:
            raise click.MissingParameter(ctx=ctx, param=param)
        return user_callback(ctx, param, value) if user_callback else value

    def hold_old(ctx, param, value):
        if not given(ctx, param.name):
            return None
        deprecation_note(old_label, new_flag)
        if dest in ctx.params and given(ctx, dest):  # the new spelling came first on the command line
            raise click.UsageError(f"{old_label} is the old spelling of {new_flag}; give only {new_flag}")
        ctx.meta.setdefault(_PENDING_ALIASES, {})[dest] = value
        return None

    alias_attrs = {k: v for k, v in attrs.items() if k in ("type", "is_flag", "multiple", "count")}
    new = click.option(*decls, callback=take_old, **attrs)
    alias = click.option(*old, old_name, hidden=True, expose_value=False, default=None, callback=hold_old,
                         **alias_attrs)

    def decorate(func):
        return new(alias(func))

    return decorate


# ----------------------------------------------------------------------------- shared flags
def quiet_verbose_options(func):
    """``-q/--quiet`` and ``-v/--verbose``, the logging flags of every command that works."""
    func = click.option("--verbose", "-v", count=True, help="More logging (-vv for debug).")(func)
    return click.option("--quiet", "-q", is_flag=True, help="No progress bars or info logs.")(func)


def trust_remote_code_option(func):
    """``--trust-remote-code``: the library's opt-in to run an encoder's model code from the hub."""
    return click.option(
        "--trust-remote-code", is_flag=True, default=False,
        help="Run model code shipped with an encoder (hub auto_map) that the registry does not pin to a "
             "commit. Off: such an encoder is refused. Only for code you trust.")(func)


def vision_layer_option(*, several: str | None, help: str):
    """``--vision-layer N`` or ``N1,N2,...``, one syntax in every command. `several`: None where only one
    block is allowed (the command's value is then an int), else the value is a list of ints."""

    def parse(ctx, param, value):
        try:
            layers = parse_layers(value)
        except ValidationError as err:
            raise click.BadParameter(str(err)) from None
        if layers is None or several is not None:
            return layers
        if len(layers) > 1:
            raise click.BadParameter(
                f"`{ctx.info_name}` takes one block; for several ({value}) use `alignprobe sweep` (probes) or "
                f"`alignprobe encode` (embeddings), which encode them in one pass")
        return layers[0]

    return click.option("--vision-layer", default=None, metavar="N" if several is None else "N[,N...]",
                        callback=parse, help=help)


def device_option(help: str):
    return click.option("--device", default=None, help=f"auto | cpu | cuda | cuda:N | mps [auto]: {help}.")


def dtype_option(func):
    return click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default=None,
                        help="Encoder compute dtype [fp32 on CPU, fp16 on GPU].")(func)


#: `train`'s --batch-size was its training batch before this release; the note says it changed meaning.
TRAIN_BATCH_MEANING = ("; in `train` --batch-size now means the encoding batch, as in every command "
                       "(the training batch is --train-batch-size)")


def _note_train_batch_size(ctx, param, value):
    if given(ctx, param.name) and ctx.info_name == "train":
        click.echo(f"note: --batch-size {value}{TRAIN_BATCH_MEANING}", err=True)
    return value


def encode_options(func=None, *, device_help: str = "the encoders", old_batch_flags: Sequence[str] = ()):
    """The flags of every command that encodes into the embedding cache, as a decorator.
    `device_help` says what runs on the device in this command; `old_batch_flags` are deprecated
    spellings of ``--batch-size`` (train's ``--encode-batch-size``)."""
    if func is None:
        return functools.partial(encode_options, device_help=device_help, old_batch_flags=old_batch_flags)
    batch = dict(type=POSITIVE_INT, default=None,
                 help="Encoding batch: images or captions per encoder call [64; captions at least 256 on the "
                      "CPU, longest first].")
    batch_option = (renamed_option("--batch-size", "encode_batch_size", old=old_batch_flags,
                                   callback=_note_train_batch_size, **batch) if old_batch_flags
                    else click.option("--batch-size", "encode_batch_size", **batch))
    decorators = [
        batch_option,
        device_option(device_help),
        dtype_option,
        click.option("--storage-dtype", type=click.Choice(["fp16", "fp32"]), default=None,
                     help="Dtype of cached embeddings [fp16]."),
        click.option("--num-workers", type=NON_NEGATIVE_INT, default=None,
                     help="Image decoding workers, 0 = in the main process [one per spare core; none for "
                          "a CPU model on a machine of at most 2 cores]."),
        click.option("--shard-rows", type=POSITIVE_INT, default=None,
                     help="Rows per cache shard: an interrupted encode resumes at the last finished shard "
                          "[4096; smaller for very slow encoders]."),
        click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
                     envvar="ALIGNPROBE_CACHE_DIR", help="Embedding cache root [~/.cache/alignprobe]."),
        click.option("--no-recompute", is_flag=True, help="Fail instead of encoding on a cache miss."),
        click.option("--strict", is_flag=True, help="A missing or corrupt image is an error, not skipped."),
        trust_remote_code_option,
        quiet_verbose_options,
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def options_from(kwargs) -> EncodeOptions:
    """The EncodeOptions of the encode flags (popped from `kwargs`); the cache must be writable
    unless ``--no-recompute`` (reading a shared, read-only cache is fine then)."""
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
        trust_remote_code=kwargs.pop("trust_remote_code"),
        quiet=kwargs["quiet"],
    )
    if options.recompute:
        try:
            check_writable(options.cache_root(), "embedding cache (--cache-dir)")
        except OutputNotWritableError as err:
            raise OutputNotWritableError(f"{err} (or pass --no-recompute to only read a shared cache)") from None
    return options
