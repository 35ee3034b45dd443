"""What `alignprobe report` says about a results directory besides the table: its damaged records
and the finished pairs that failed when rerun, as printable lines.

The store (`reports.store.load_results`) warns once per unreadable record while it loads; a report
names those records itself, in one block with a count, so `store_warnings_held` holds the store's
per-record warnings back while the report is written.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from alignprobe.reports.records import iter_records
from alignprobe.reports.store import failed_reruns

#: the store's logger and the start of its per-record warning (reports/store.py, `load_results`)
STORE_LOGGER = "alignprobe.reports.store"
LEFT_OUT_PREFIX = "left out of the results"


@dataclass
class RecordCount:
    """The record files of a results directory: ``readable`` count and ``unreadable`` (path, reason) pairs."""

    readable: int = 0
    unreadable: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.readable + len(self.unreadable)

    def lines(self, results_dir: str | Path) -> list[str]:
        """A header and one line per unreadable record; none when every record was read."""
        if not self.unreadable:
            return []
        head = (f"report: {self.total} record file(s) in {results_dir}, {len(self.unreadable)} unreadable "
                f"(left out of the table):")
        return [head, *(f"  {reason}" for _, reason in self.unreadable)]


def count_records(results_dir: str | Path) -> RecordCount:
    """Count the record files under `results_dir` (a missing directory has none)."""
    count = RecordCount()
    if Path(results_dir).is_dir():
        count.readable = sum(1 for _ in iter_records(results_dir, count.unreadable))
    return count


@contextmanager
def store_warnings_held() -> Iterator[None]:
    """Within the block, drop the store's per-record "left out of the results" warnings (the caller names
    those records itself, once); other store messages pass. The filter is removed on exit."""
    store_log = logging.getLogger(STORE_LOGGER)

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(LEFT_OUT_PREFIX)

    store_log.addFilter(keep)
    try:
        yield
    finally:
        store_log.removeFilter(keep)


def failed_rerun_lines(df) -> list[str]:
    """For a `load_results` frame: a header and one line per finished record whose pair failed when rerun
    later (the table shows its finished metrics; the failure is kept beside it as ``*.failed.json``)."""
    reruns = failed_reruns(df)
    if not len(reruns):
        return []
    head = (f"report: {len(reruns)} finished record(s) failed when rerun later; the table shows their finished "
            f"metrics, the failures are kept beside them (*.failed.json):")
    return [head, *(f"  {r.vision} x {r.text} (seed {r.seed}): {r.last_failure}"
                    for r in reruns.itertuples(index=False))]
