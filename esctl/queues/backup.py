"""The queue backup file that ``queue drain --to-file`` writes and ``queue restore`` reads: a
header, one record per drained message, then the outcome of each removal batch (written
through :class:`esctl.backupfile.BackupWriter`). The format is in ``docs/layout.md`` §6; its
frames and fsync order in ``docs/design/queues.md``."""

from __future__ import annotations

import array
import base64
import contextlib
import itertools
import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from esctl import __version__, redisio
from esctl.backupfile import (
    FIELD_ERRORS,
    BackupWriter,
    lacking,
    open_backup,
    read_chunks,
    read_lines,
)
from esctl.errors import EsctlError, NotFound, UsageError
from esctl.queues.progress import OnPhase, PhaseReporter
from esctl.queues.refs import QueueRef

BACKUP_FORMAT = "esctl-queue-backup"
BACKUP_FORMAT_VERSION = 1

OUTCOME_TTL_MS = 30 * 24 * 3600 * 1000
"""How long Redis keeps a drain's last removal outcome (``layout.drain_outcome_key``), which
settles the records its backup file does not mark when the drain was killed."""
EMPTY_OUTCOME = '{"removed":[],"gone":[]}'
"""The outcome record a drain writes before its first removal."""


# --- writing -----------------------------------------------------------------------------------


def create_backup(
    path: Path,
    ref: QueueRef,
    which: str,
    length: int,
    selected: int,
    messages: Iterable[tuple[int, bytes]],
    selection: dict[str, Any],
    moment: datetime,
) -> tuple[BackupWriter, str]:
    """The backup file with its first frame on disk (the header and a record per message of
    ``messages``: position from the tail and value, in consumption order), and its backup id.
    ``length`` is the list's length when it was selected from, ``selected`` how many messages
    ``messages`` yields (read as the frame is written, never all in memory)."""
    writer = BackupWriter(path, option="--to-file", nothing_done="nothing was drained")
    backup_id = uuid.uuid4().hex
    key = ref.key(which)
    try:
        header = {
            "format": BACKUP_FORMAT,
            "version": BACKUP_FORMAT_VERSION,
            "backup_id": backup_id,
            "created_at": moment.isoformat(),
            "esctl_version": __version__,
            "subscriber": ref.subscriber,
            "env": ref.env,
            "event_type": ref.event_type,
            "list": which,
            "key": key,
            "length": length,
            "selected": selected,
            "selection": selection,
        }
        records = (
            {
                "n": number,
                "key": key,
                "subscriber": ref.subscriber,
                "env": ref.env,
                "event_type": ref.event_type,
                "list": which,
                "position": position,
                **_value_fields(value),
            }
            for number, (position, value) in enumerate(messages)
        )
        writer.write_frame(itertools.chain([header], records))
    except OSError as exc:
        with contextlib.suppress(OSError):
            writer.close()
        with contextlib.suppress(OSError):
            path.unlink()
        raise EsctlError(
            f"cannot write the backup file {path}: {exc.strerror}; nothing was drained",
            hint="free some space or choose another folder, then rerun",
        ) from None
    return writer, backup_id


def record_outcome(writer: BackupWriter, removed: list[int], gone: list[int]) -> None:
    """Append one removal batch's outcome (record numbers), fsynced before the next batch."""
    _append(writer, {"outcome": {"removed": removed, "gone": gone}})


def record_complete(writer: BackupWriter, drained: int, gone: int) -> None:
    """Append the last frame: the drain finished, every outcome is in the file."""
    finished = {"drained": drained, "gone": gone}
    _append(writer, {"complete": {**finished, "at": datetime.now(UTC).isoformat()}})


def _append(writer: BackupWriter, line: dict[str, Any]) -> None:
    try:
        writer.write_frame([line])
    except OSError as exc:
        raise EsctlError(
            f"stopped: cannot append to the backup file {writer.path}: {exc.strerror}. It holds "
            "every selected message; the last batch's removals are not marked in it",
            hint="free some space; `esctl queue restore --include-unknown` puts back the unmarked "
            "messages too (check the list first: some of them may still be there)",
        ) from None


def _value_fields(value: bytes) -> dict[str, str]:
    try:
        return {"value": value.decode("utf-8"), "encoding": "utf-8"}
    except UnicodeDecodeError:
        return {"value": base64.b64encode(value).decode("ascii"), "encoding": "base64"}


# --- reading -----------------------------------------------------------------------------------


def value_bytes(record: dict[str, Any]) -> bytes:
    """A record's message, byte for byte (ValueError or TypeError when it is unreadable)."""
    if record.get("encoding") == "base64":
        return base64.b64decode(record["value"], validate=True)
    return str(record["value"]).encode("utf-8")


def read_header(path: str | Path) -> dict[str, Any]:
    """The header of a file written by :func:`esctl.queues.drain` (its first line), read
    without the rest; UsageError, as :func:`survey_backup` says it, when it is not one."""
    source = Path(path)
    lines = read_lines(source, kind=_KIND, written_by=_WRITTEN_BY)
    first = next((line for line in lines if isinstance(line, bytes)), None)
    lines.close()
    try:
        header = orjson.loads(first) if first is not None else None
    except orjson.JSONDecodeError:
        header = None
    if not isinstance(header, dict) or header.get("format") != BACKUP_FORMAT:
        with open_backup(source) as handle:  # says what is wrong with it, holding none of it
            survey_backup(source, handle)
        raise UsageError(f"{source} is not a complete esctl queue backup")  # (it did)
    _check_version(source, header)
    return header


def _check_version(source: Path, header: dict[str, Any]) -> None:
    if int(header.get("version", 0)) > BACKUP_FORMAT_VERSION:
        raise UsageError(
            f"{source} was written by a newer esctl (backup format {header.get('version')})",
            hint="restore it with that esctl version or newer",
        )


def backup_ref(source: Path, header: dict[str, Any]) -> QueueRef:
    """The queue a backup file's messages were drained from, as its header names it."""
    names = [header.get(field) for field in ("subscriber", "env", "event_type")]
    if not all(isinstance(name, str) for name in names):
        raise UsageError(
            f"{source}: its header does not name the queue it was drained from",
            hint="pass a file written by `esctl queue drain --to-file`",
        )
    return QueueRef(*(str(name) for name in names))


def _drain_outcome(client: redisio.RedisClient, header: dict[str, Any]) -> dict[int, str] | None:
    """The drain's outcome record in Redis (``layout.drain_outcome_key``) of the file with
    ``header``: record number -> ``removed`` / ``gone`` of its last batch; None when Redis holds
    none (UsageError when the key holds something else)."""
    ref = QueueRef(str(header["subscriber"]), str(header["env"]), str(header["event_type"]))
    key = ref.drain_outcome_key(str(header["list"]), str(header["backup_id"]))
    try:
        raw = client.get(key)
    except redisio.REDIS_ERRORS as exc:
        raise redisio.wrap_errors(client, exc) from exc
    if raw is None:
        return None
    try:
        last = orjson.loads(raw)
        return {int(n): w for w in ("removed", "gone") for n in last[w]}
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        raise UsageError(
            f"{key} is not an esctl drain outcome record ({redisio.key_str(raw)[:80]!r})",
            hint="delete the key if it is not esctl's; restore then treats those records as "
            "of unknown outcome (--include-unknown)",
        ) from None


# --- reading in two passes (queue restore) ------------------------------------------------------
#
# A restore reads the file twice, never holding its records (held, a million ~400-byte messages
# took 2.7 GiB): :func:`survey_backup` keeps only what deciding needs (a byte of outcome per
# record number; per list key, a few facts; a record's number and key only when they are not
# what a drain writes), and :meth:`BackupSurvey.records_again` reads the records once more, in
# the file's order, as the restore sends them. Design: docs/design/queues.md.

UNMARKED, REMOVED, GONE, KEPT = 0, 1, 2, 3
"""A record's outcome, as :class:`OutcomeCodes` keeps it: ``unknown``, ``removed``, ``gone``,
``kept``."""
_CODES = {"removed": REMOVED, "gone": GONE, "kept": KEPT}
_GROW = 1 << 16
""":class:`OutcomeCodes` keeps a byte for every number up to twice the largest so far plus
this; farther numbers (not as a drain numbers its records) go in a dict."""
_KIND = "an esctl queue backup"
_WRITTEN_BY = "esctl queue drain --to-file"


class OutcomeCodes:
    """Record number -> outcome code (:data:`UNMARKED` when none is known): a byte per number
    from 0 up (a drain numbers its records 0, 1, 2, ...), a dict for numbers far from those."""

    def __init__(self) -> None:
        self.dense = bytearray()
        self.sparse: dict[int, int] = {}

    def get(self, number: int) -> int:
        if 0 <= number < len(self.dense):
            return self.dense[number]
        return self.sparse.get(number, UNMARKED)

    def set(self, number: int, code: int) -> None:
        dense = self.dense
        if len(dense) <= number < 2 * len(dense) + _GROW:
            self.reserve(max(number + 1, 2 * len(dense)))
        if 0 <= number < len(dense):
            dense[number] = code
        else:
            self.sparse[number] = code

    def reserve(self, size: int) -> None:
        """A byte for each number below ``size`` (the records counted so far: a drain's
        outcomes come in any order, the last records first as often as not)."""
        dense = self.dense
        if len(dense) < size:
            dense.extend(bytes(size - len(dense)))
            for moved in [n for n in self.sparse if 0 <= n < size]:
                dense[moved] = self.sparse.pop(moved)


class _Column:
    """An integer per record that is almost always implied by the record's index (the index
    itself, ``step`` 1, or 0, ``step`` 0): kept in an array only from the first that is not
    (``values`` stays None while none is)."""

    __slots__ = ("count", "step", "values")

    def __init__(self, step: int) -> None:
        self.step = step
        self.count = 0
        self.values: array.array[int] | None = None

    def append(self, value: int) -> None:
        if self.values is None:
            if value == self.count * self.step:
                self.count += 1
                return
            self.values = array.array("q", (i * self.step for i in range(self.count)))
        self.values.append(value)  # OverflowError beyond 64 bits
        self.count += 1

    def __getitem__(self, index: int) -> int:
        return index * self.step if self.values is None else self.values[index]

    def __iter__(self) -> Iterator[int]:
        if self.values is not None:
            return iter(self.values)
        return iter(range(self.count)) if self.step else itertools.repeat(0, self.count)

    def truncate(self, count: int) -> None:
        if self.values is not None:
            del self.values[count:]
        self.count = count


@dataclass(slots=True)
class BackupKey:
    """What :func:`survey_backup` keeps of the records of one list key (``name``)."""

    name: str
    first: int
    """The index (among the file's records, from 0) of its first record."""
    last: int
    """Of its last record."""
    lowest: dict[str, Any]
    """Its record with the lowest position (the first of those), without the value: the
    fields that name the list it came from."""
    position: int
    """That lowest position."""
    last_position: int
    in_order: bool = True
    """Its records' positions never go down in the file's order (as a drain writes them)."""


@dataclass(slots=True)
class UnreadableValue:
    """A record whose value is not valid base64 (said if it is to be restored)."""

    index: int
    key_id: int
    position: int
    number: int
    shown: Any
    """Its ``n`` as the file has it."""
    error: str


class BackupChanged(UsageError):
    """The second reading of a backup file did not find the records the first one did."""


@dataclass
class BackupSurvey:
    """What the first reading of a backup file keeps: its header, how many records (the lines
    with a value after the header, in complete frames), each record's number and list key
    (``numbers[i]``, ``key_ids[i]``: an index into ``keys``; both implied for a file as drain
    writes it), each number's outcome (the file's, then :meth:`settle`'s), and the records
    whose value cannot be read."""

    path: Path
    handle: BinaryIO
    """The file, open: read again from it, whatever happens to its name meanwhile."""
    header: dict[str, Any] = field(default_factory=dict)
    records: int = 0
    numbers: _Column = field(default_factory=lambda: _Column(1))
    key_ids: _Column = field(default_factory=lambda: _Column(0))
    keys: list[BackupKey] = field(default_factory=list)
    outcomes: OutcomeCodes = field(default_factory=OutcomeCodes)
    unreadable: list[UnreadableValue] = field(default_factory=list)
    frames: int = 0
    complete: bool = False
    truncated: bool = False
    stat: tuple[int, int] = (0, 0)
    """The file's size and modification time once read (:func:`_stat`): a file rewritten or
    appended to since is not read again."""
    _key_ids: dict[str, int] = field(default_factory=dict)

    @property
    def backup_id(self) -> str:
        return str(self.header["backup_id"])

    def settle(self, client: redisio.RedisClient) -> bool:
        """Give every record the file does not mark an outcome, from the drain's record in
        Redis (``layout.drain_outcome_key``): the script that removed the last batch wrote its
        outcome there, and every earlier batch's outcome is in the file (each is fsynced before
        the next batch runs), so a record neither accounts for was never removed: ``kept``.
        False (nothing changed) when Redis holds no record of this drain (it expired, or this
        is another Redis)."""
        outcomes, numbers = self.outcomes, self.numbers
        outcomes.reserve(self.records)
        dense = outcomes.dense
        if numbers.values is None:  # as a drain numbers them
            if dense.find(UNMARKED, 0, self.records) < 0:
                return True
        elif all(outcomes.get(n) != UNMARKED for n in numbers):
            return True
        settled = _drain_outcome(client, self.header)
        if settled is None:
            return False
        for number in numbers:
            if outcomes.get(number) == UNMARKED:
                outcomes.set(number, _CODES[settled.get(number, "kept")])
        return True

    def changed(self) -> BackupChanged:
        return BackupChanged(
            f"{self.path} changed while it was read (it was written to, or its records are "
            "not those the restore read first)",
            hint="restore the file as `esctl queue drain --to-file` wrote it: rerun the same "
            "restore with it (progress is kept in Redis, nothing is restored twice)",
        )

    def records_again(self) -> Iterator[tuple[int, int, int, dict[str, Any]]]:
        """The second reading: ``(index, number, key id, record)`` of each record the first
        counted, in the file's order, parsed again one at a time; BackupChanged when the file
        was written to since the first reading, or they are not the same records (the header,
        their numbers and keys)."""
        if not self.records:
            return
        numbers, key_ids = self.numbers.values, self.key_ids.values
        names = [k.name for k in self.keys]
        index = 0
        for line in self._lines_again():
            if type(line) is not dict or "value" not in line:
                continue
            number = index if numbers is None else numbers[index]
            key_id = 0 if key_ids is None else key_ids[index]
            try:
                same = int(line["n"]) == number and str(line["key"]) == names[key_id]
            except (KeyError, TypeError, ValueError):
                same = False
            if not same:
                raise self.changed()
            yield index, number, key_id, line
            index += 1
            if index == self.records:
                return
        raise self.changed()

    def _lines_again(self) -> Iterator[Any]:
        """The lines after the header, parsed, up to a frame cut short; BackupChanged when the
        file was written to since the first reading or its header is not the same, UsageError
        when it cannot be read again."""
        try:
            yield from self._parsed_again()
        except BackupChanged:
            raise
        except (UsageError, NotFound) as exc:  # it read whole the first time
            if _stat(self.handle) != self.stat:
                raise self.changed() from None
            raise UsageError(f"{self.path} could not be read again: {exc}") from None

    def _parsed_again(self) -> Iterator[Any]:
        loads = orjson.loads
        header = True
        for chunk in read_chunks(self.path, kind=_KIND, written_by=_WRITTEN_BY, handle=self.handle):
            if _stat(self.handle) != self.stat:
                raise self.changed()
            if chunk is None:
                return
            if isinstance(chunk, int):
                continue
            for item in chunk:
                try:
                    line = loads(item)
                except orjson.JSONDecodeError:
                    raise self.changed() from None
                if header:
                    if line != self.header:
                        raise self.changed()
                    header = False
                    continue
                yield line

    def _add(self, line: dict[str, Any], undo: dict[int, BackupKey | None]) -> None:
        """Count one record (``undo``: the facts of the keys this frame changed, as they were
        before it, None for a key it added)."""
        index = self.records
        try:
            number = int(line["n"])
            name = str(line["key"])
            position = int(line["position"])
        except FIELD_ERRORS:
            where = f"record {index + 1}"
            raise lacking(self.path, where, "n, key or position", written_by=_WRITTEN_BY) from None
        key_id = self._key_ids.get(name)
        if key_id is None:
            key_id = self._key_ids[name] = len(self.keys)
            undo[key_id] = None
            lowest = {k: v for k, v in line.items() if k != "value"}
            self.keys.append(BackupKey(name, index, index, lowest, position, position))
        else:
            facts = self.keys[key_id]
            if key_id not in undo:
                undo[key_id] = replace(facts)
            facts.last = index
            if position < facts.last_position:
                facts.in_order = False
                if position < facts.position:
                    facts.position = position
                    facts.lowest = {k: v for k, v in line.items() if k != "value"}
            facts.last_position = position
        numbers, key_ids = self.numbers, self.key_ids
        if key_ids.values is None and key_id == 0:  # one key, as a drain writes
            key_ids.count += 1
        else:
            key_ids.append(key_id)
        if numbers.values is None and number == index:  # as a drain numbers them
            numbers.count += 1
        else:
            try:
                numbers.append(number)
            except OverflowError:
                raise UsageError(
                    f"{self.path}: record {index + 1} has a number out of range ({number})",
                    hint="pass a file written by `esctl queue drain --to-file`",
                ) from None
        self.records += 1
        if line.get("encoding") == "base64":  # text values always encode
            try:
                value_bytes(line)
            except (ValueError, TypeError) as exc:
                self.unreadable.append(
                    UnreadableValue(index, key_id, position, number, line.get("n"), str(exc))
                )

    def _forget(self, mark: int, undo: dict[int, BackupKey | None]) -> None:
        """Forget the records from index ``mark`` on (those of a frame cut short)."""
        added = [key_id for key_id, before in undo.items() if before is None]
        for key_id, before in undo.items():
            if before is not None:
                self.keys[key_id] = before
        if added:
            for facts in self.keys[min(added) :]:
                del self._key_ids[facts.name]
            del self.keys[min(added) :]
        self.numbers.truncate(mark)
        self.key_ids.truncate(mark)
        self.records = mark
        self.unreadable = [u for u in self.unreadable if u.index < mark]

    def _apply(self, line: dict[str, Any]) -> None:
        """An outcome or the completion line, once its frame is known complete."""
        if "outcome" in line:
            self.outcomes.reserve(self.records)
            for which in ("removed", "gone"):
                for number in line["outcome"].get(which, []):
                    self.outcomes.set(int(number), _CODES[which])
        elif "complete" in line:
            self.complete = True


def survey_backup(
    path: str | Path, handle: BinaryIO, *, on_phase: OnPhase | None = None
) -> BackupSurvey:
    """The first reading of a file written by :func:`esctl.queues.drain` (open as ``handle``),
    keeping what :class:`BackupSurvey` says, not the records. A truncated last frame (a crash
    while appending an outcome) is ignored; a file whose first frame is incomplete was never
    used to drain. UsageError when the file is not a complete queue backup (and why: not zstd,
    its first frame cut short, a line that is not JSON), is of a newer format, or has a record
    without a number, key or position. ``on_phase``: the records read, as the phase
    ``reading backup`` (:mod:`esctl.queues.progress`)."""
    source = Path(path)
    reader = _Surveying(BackupSurvey(source, handle), on_phase)
    for chunk in read_chunks(source, kind=_KIND, written_by=_WRITTEN_BY, handle=handle):
        if chunk is None:
            reader.cut_short()
            break
        if isinstance(chunk, int):
            reader.frame_complete(chunk)
        else:
            reader.lines(chunk)
    survey = reader.survey
    if reader.reading is not None:
        reader.reading.finish()
    if survey.frames == 0 or survey.header.get("format") != BACKUP_FORMAT:
        raise UsageError(
            f"{source} is not a complete esctl queue backup"
            + (
                " (its first frame is cut short: the drain stopped before removing anything)"
                if survey.truncated and survey.frames == 0
                else ""
            ),
            hint="pass a file written by `esctl queue drain --to-file`",
        )
    _check_version(source, survey.header)
    survey.stat = _stat(handle)
    return survey


def _stat(handle: BinaryIO) -> tuple[int, int]:
    """What changes when a file is written to: its size and modification time (not a rename
    or an unlink: the file stays readable through ``handle``)."""
    stat = os.fstat(handle.fileno())
    return stat.st_size, stat.st_mtime_ns


class _Surveying:
    """:func:`survey_backup`'s reading: a frame's lines count once the frame is known complete
    (its records are forgotten and its outcomes never applied when it is cut short), and so do
    its errors."""

    def __init__(self, survey: BackupSurvey, on_phase: OnPhase | None) -> None:
        self.survey = survey
        self.on_phase = on_phase
        self.reading: PhaseReporter | None = None
        self.frame: list[dict[str, Any]] = []  # this frame's outcome and completion lines
        self.undo: dict[int, BackupKey | None] = {}
        self.mark = 0  # the records of the frames known complete
        self.bad: orjson.JSONDecodeError | None = None
        self.wrong: UsageError | None = None
        self.first = True
        self.readable = False  # the first line is a header of a format this esctl reads

    def lines(self, items: list[bytes]) -> None:
        loads, add, undo, frame = orjson.loads, self.survey._add, self.undo, self.frame
        reading = self.reading
        for item in items:
            try:
                line = loads(item)
            except orjson.JSONDecodeError as exc:
                self.bad = self.bad or exc
                continue
            if self.first:
                self._header(line)
                reading = self.reading
                continue
            if not self.readable or type(line) is not dict:
                continue  # the header's fault is said once the file is read
            if "value" in line:
                if reading is not None:
                    reading.add()
                if self.wrong is None:
                    try:
                        add(line, undo)
                    except UsageError as exc:
                        self.wrong = exc
            if "outcome" in line or "complete" in line:
                frame.append(line)

    def _header(self, line: Any) -> None:
        self.first = False
        if not isinstance(line, dict):
            return
        self.survey.header = line
        self.readable = line.get("format") == BACKUP_FORMAT and _readable_version(line)
        if self.on_phase is not None:  # how many records follow
            total = line.get("selected") if line.get("format") == BACKUP_FORMAT else None
            self.reading = PhaseReporter(
                self.on_phase, "reading backup", total if isinstance(total, int) else None
            )

    def frame_complete(self, frames: int) -> None:
        if self.bad is not None:
            raise UsageError(
                f"{self.survey.path} holds a line that is not JSON: {self.bad}"
            ) from None
        if self.wrong is not None:
            raise self.wrong
        self.survey.frames = frames
        for line in self.frame:
            self.survey._apply(line)
        self.frame.clear()
        self.undo.clear()
        self.mark = self.survey.records

    def cut_short(self) -> None:
        self.survey.truncated = True
        self.survey._forget(self.mark, self.undo)


def _readable_version(header: dict[str, Any]) -> bool:
    try:
        return int(header.get("version", 0)) <= BACKUP_FORMAT_VERSION
    except (TypeError, ValueError):
        return False
