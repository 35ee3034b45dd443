"""Output a person can read: progress bars on a terminal, a few summary lines in a log,
and no third-party chatter.

- `progress(...)` is `tqdm(...)` for our loops: a live bar when the stream is a
  terminal; otherwise (CI logs, `> file`) a `LogProgress` that prints one plain
  line at each quarter of the work (or once a minute when the total is unknown)
  and one at the end, instead of thousands of carriage-return redraws.
  `TQDM_DISABLE=1` (tqdm's own switch) turns every bar off.
- `quiet_third_party()` keeps the INFO messages of faiss's loader, the hub
  clients, timm and transformers out of the default output.
- `quiet_loading()` hides transformers' "Loading weights" / "Writing model
  shards" bars and its advisory warnings around a model load (our loaders check
  for missing weights themselves and fail with one clear error).
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from typing import Any, Iterator

from tqdm import tqdm as _tqdm

NOISY_LOGGERS = ("faiss", "httpx", "huggingface_hub", "urllib3", "filelock",
                 "sentence_transformers", "timm", "transformers", "onnx")
_TRUE = {"1", "true", "yes", "on"}


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def bars_disabled() -> bool:
    return os.environ.get("TQDM_DISABLE", "").strip().lower() in _TRUE


class _Discard:
    """Where a LogProgress sends tqdm's own redraws."""

    def write(self, s: str) -> None:
        pass

    def flush(self) -> None:
        pass


class LogProgress(_tqdm):
    """A tqdm that prints plain summary lines for a non-terminal: at 25/50/75 % of `total`, at
    most once per `every` seconds in between (or without a total), and at the end."""

    LINE = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
    OPEN_LINE = "{desc}: {n_fmt} [{elapsed}, {rate_fmt}{postfix}]"

    def __init__(self, *args: Any, stream=None, every: float = 60.0, **kwargs: Any):
        self._stream = stream if stream is not None else sys.stderr
        self._every = float(every)
        self._quarter = 1
        self._logged_n = 0
        kwargs["file"] = _Discard()
        kwargs.pop("dynamic_ncols", None)
        super().__init__(*args, **kwargs)
        self._logged_t = self.start_t if hasattr(self, "start_t") else time.time()

    def _line(self) -> str:
        d = dict(self.format_dict)
        d["bar_format"] = self.LINE if d.get("total") else self.OPEN_LINE
        d["ncols"] = None
        if not d.get("prefix"):
            d["prefix"] = "progress"
        return self.format_meter(**d)

    def _log(self) -> None:
        self._stream.write(self._line() + "\n")
        self._stream.flush()
        self._logged_n, self._logged_t = self.n, time.time()

    def update(self, n: float = 1):
        shown = super().update(n)
        if self.disable:
            return shown
        due = False
        if self.total:
            while self._quarter < 4 and self.n >= self.total * self._quarter / 4:
                self._quarter += 1
                due = True
        if time.time() - self._logged_t >= self._every:
            due = True
        if due and self.n < (self.total or float("inf")):
            self._log()
        return shown

    def close(self) -> None:
        if not self.disable and self.n > 0 and self.n != self._logged_n:
            self._log()
        super().close()


def progress(iterable=None, *, total=None, desc: str | None = None, disable: bool | None = False,
             stream=None, **kwargs: Any):
    """`tqdm(iterable, total=..., desc=..., disable=...)` that suits where it writes (see the
    module docstring). `disable=None` means: a bar on a terminal, nothing elsewhere."""
    stream = stream if stream is not None else sys.stderr
    tty = _isatty(stream)
    off = bool(disable) or bars_disabled() or (disable is None and not tty)
    if off:
        return _tqdm(iterable, total=total, desc=desc, disable=True, **kwargs)
    # disable=False explicitly: tqdm bakes TQDM_DISABLE into its defaults at import time,
    # and bars_disabled() above has read it now
    if tty:
        return _tqdm(iterable, total=total, desc=desc, file=stream, disable=False, **kwargs)
    return LogProgress(iterable, total=total, desc=desc, stream=stream, disable=False, **kwargs)


def quiet_third_party(level: int = logging.WARNING) -> None:
    """Raise the level of chatty third-party loggers to `level` (WARNING: problems only)."""
    for name in NOISY_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level < level:
            logger.setLevel(level)


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """No transformers / hub progress bars or advisories inside the block; restored after."""
    restore = []
    if "transformers" in sys.modules:  # never import it just to silence it
        from transformers.utils import logging as tf_logging

        if tf_logging.is_progress_bar_enabled():
            tf_logging.disable_progress_bar()
            restore.append(tf_logging.enable_progress_bar)
        verbosity = tf_logging.get_verbosity()
        tf_logging.set_verbosity_error()
        restore.append(lambda: tf_logging.set_verbosity(verbosity))
    try:
        yield
    finally:
        for undo in reversed(restore):
            undo()
