"""``--order time`` from Redis: an external merge sort of the selection by effective time,
in sorted runs spilled zstd-compressed to anonymous temporary files (how and why:
docs/design/replay.md, "The external sort")."""

from __future__ import annotations

import heapq
import pickle
import tempfile
from collections.abc import Iterable, Iterator
from typing import IO, Any

import zstandard

from esctl.errors import EsctlError
from esctl.projections import Event
from esctl.replay.positions import epoch_us
from esctl.scratch import scratch_error

SORT_RUN_BYTES = 64 << 20
"""Payload bytes per sorted run of a Redis ``--order time`` replay."""
_RECORDS_PER_FRAME = 2000

Record = tuple[Any, ...]
"""(effective µs, aggregate id, version, commit id, aggregate type, event type, TimeStamp,
payload): the position first, so records sort by it."""


class TimeSort:
    """Sorts events by their Redis time-order position: (effective time in µs, aggregate id,
    version, commit id). Memory: one run of about ``run_bytes`` of payloads plus one record
    per run; ``runs`` says how many runs went to disk (none when the selection fits one)."""

    def __init__(self, run_bytes: int = SORT_RUN_BYTES, directory: str | None = None) -> None:
        self.run_bytes = run_bytes
        self.directory = directory
        self.runs = 0

    def sorted(
        self,
        groups: Iterable[list[Event]],
        *,
        after: tuple[Any, ...] | None = None,
        limit: int | None = None,
    ) -> Iterator[Event]:
        """The events of ``groups`` (each one aggregate's, in version order) in time order,
        strictly after ``after``, at most ``limit``. Reads every group before the first event
        comes; the temporary files are closed (so gone) when the iterator ends or is closed."""
        spills: list[IO[bytes]] = []
        try:
            run = self._collect(groups, after, spills)
            records: Iterator[Record]
            if spills:
                if run:
                    spills.append(self._spill(run))
                    run = []
                records = heapq.merge(*(_unspill(f) for f in spills))
            else:
                records = iter(run)
            self.runs = len(spills)
            for count, r in enumerate(records, start=1):
                yield Event(r[1], r[4], r[2], r[5], r[6], r[3] or None, r[:4], r[7])
                if limit is not None and count >= limit:
                    return
        finally:
            for spill in spills:
                spill.close()

    def _collect(
        self, groups: Iterable[list[Event]], after: tuple[Any, ...] | None, spills: list[IO[bytes]]
    ) -> list[Record]:
        """Read every group into records, spilling each full run (sorted) onto ``spills``;
        the last run, sorted, stays in memory."""
        run: list[Record] = []
        run_bytes = 0
        for group in groups:
            effective = None
            for event in group:
                moment = epoch_us(event.timestamp)
                if effective is None or moment > effective:
                    effective = moment
                key = (effective, event.aggregate_id, event.version, event.commit_id or "")
                if after is not None and key <= after:
                    continue
                payload = event.payload
                run.append((*key, event.aggregate_type, event.event_type, event.timestamp, payload))
                run_bytes += len(payload) + 200
            if run_bytes >= self.run_bytes:
                run.sort()
                spills.append(self._spill(run))
                run, run_bytes = [], 0
        run.sort()
        return run

    def _spill(self, run: list[Record]) -> IO[bytes]:
        """Write a sorted run to an anonymous temporary file (gone when closed or on a crash):
        frames of a length and a zstd-compressed pickle of up to 2,000 records."""
        try:
            spill = tempfile.TemporaryFile(prefix="esctl-replay-sort-", dir=self.directory)  # noqa: SIM115
        except OSError as exc:
            raise self._failed(exc) from None
        try:
            compressor = zstandard.ZstdCompressor(level=1)
            for start in range(0, len(run), _RECORDS_PER_FRAME):
                frame = compressor.compress(
                    pickle.dumps(run[start : start + _RECORDS_PER_FRAME], protocol=5)
                )
                spill.write(len(frame).to_bytes(8, "little"))
                spill.write(frame)
            spill.flush()
        except OSError as exc:
            spill.close()
            raise self._failed(exc) from None
        return spill

    def _failed(self, exc: OSError) -> EsctlError:
        """Sorting before anything is replayed: a full disk stops the run with nothing done."""
        return scratch_error(
            "the events sorted by time", exc, folder=self.directory, done="nothing was replayed"
        )


def _unspill(spill: IO[bytes]) -> Iterator[Record]:
    spill.seek(0)
    decompressor = zstandard.ZstdDecompressor()
    while True:
        head = spill.read(8)
        if not head:
            return
        frame = spill.read(int.from_bytes(head, "little"))
        # Our own file, written above by this process: unpickling it is safe.
        yield from pickle.loads(decompressor.decompress(frame))
