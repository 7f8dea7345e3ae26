"""The queue backup file that ``queue drain --to-file`` writes and ``queue restore`` reads: a
header, one record per drained message, then the outcome of each removal batch (written
through :class:`esctl.backupfile.BackupWriter`). The format is in ``docs/layout.md`` §6; its
frames and fsync order in ``docs/design/queues.md``."""

from __future__ import annotations

import base64
import contextlib
import itertools
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from esctl import __version__, redisio
from esctl.backupfile import BackupWriter, read_lines
from esctl.errors import EsctlError, UsageError
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


@dataclass
class Backup:
    """A backup file as read back. ``outcomes``: record number -> ``removed`` / ``gone``, or
    ``kept`` once :func:`settle_outcomes` found the drain never removed it (records without
    one: the drain stopped before it knew)."""

    path: Path
    header: dict[str, Any]
    records: list[dict[str, Any]]
    outcomes: dict[int, str]
    complete: bool
    truncated: bool

    @property
    def backup_id(self) -> str:
        return str(self.header["backup_id"])


def read_header(path: str | Path) -> dict[str, Any]:
    """The header of a file written by :func:`esctl.queues.drain` (its first line), read
    without the rest; UsageError, as :func:`read_backup` says it, when it is not one."""
    source = Path(path)
    lines = read_lines(
        source, kind="an esctl queue backup", written_by="esctl queue drain --to-file"
    )
    first = next((line for line in lines if isinstance(line, bytes)), None)
    lines.close()
    try:
        header = orjson.loads(first) if first is not None else None
    except orjson.JSONDecodeError:
        header = None
    if not isinstance(header, dict) or header.get("format") != BACKUP_FORMAT:
        read_backup(source)  # says what is wrong with it
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


def read_backup(path: str | Path, *, on_phase: OnPhase | None = None) -> Backup:
    """Read a file written by :func:`esctl.queues.drain`. A truncated last frame (a crash while
    appending an outcome) is ignored; a file whose first frame is incomplete was never used to
    drain. ``on_phase``: the records read, as the phase ``reading backup``
    (:mod:`esctl.queues.progress`)."""
    source = Path(path)
    lines, frames, truncated = _read_frames(source, on_phase)
    if frames == 0 or not lines or lines[0].get("format") != BACKUP_FORMAT:
        raise UsageError(
            f"{source} is not a complete esctl queue backup"
            + (
                " (its first frame is cut short: the drain stopped before removing anything)"
                if truncated
                else ""
            ),
            hint="pass a file written by `esctl queue drain --to-file`",
        )
    header = lines[0]
    _check_version(source, header)
    records = [line for line in lines[1:] if "value" in line]
    outcomes: dict[int, str] = {}
    complete = False
    for line in lines[1:]:
        if "outcome" in line:
            for which in ("removed", "gone"):
                for number in line["outcome"].get(which, []):
                    outcomes[int(number)] = which
        elif "complete" in line:
            complete = True
    return Backup(source, header, records, outcomes, complete, truncated)


def settle_outcomes(client: redisio.RedisClient, backup: Backup) -> bool:
    """Give every record the file does not mark an outcome, from the drain's record in Redis
    (``layout.drain_outcome_key``): the script that removed the last batch wrote its outcome
    there, and every earlier batch's outcome is in the file (each is fsynced before the next
    batch runs), so a record neither accounts for was never removed: ``kept``. False (nothing
    changed) when Redis holds no record of this drain (it expired, or this is another Redis)."""
    unknown = [int(r["n"]) for r in backup.records if int(r["n"]) not in backup.outcomes]
    if not unknown:
        return True
    header = backup.header
    ref = QueueRef(str(header["subscriber"]), str(header["env"]), str(header["event_type"]))
    key = ref.drain_outcome_key(str(header["list"]), backup.backup_id)
    try:
        raw = client.get(key)
    except redisio.REDIS_ERRORS as exc:
        raise redisio.wrap_errors(client, exc) from exc
    if raw is None:
        return False
    try:
        last = orjson.loads(raw)
        settled = {int(n): w for w in ("removed", "gone") for n in last[w]}
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        raise UsageError(
            f"{key} is not an esctl drain outcome record ({redisio.key_str(raw)[:80]!r})",
            hint="delete the key if it is not esctl's; restore then treats those records as "
            "of unknown outcome (--include-unknown)",
        ) from None
    for number in unknown:
        backup.outcomes[number] = settled.get(number, "kept")
    return True


def _read_frames(
    source: Path, on_phase: OnPhase | None = None
) -> tuple[list[dict[str, Any]], int, bool]:
    """The JSON lines of every complete zstd frame, how many frames, and whether a frame was cut
    short (UsageError when the first frame is not zstd at all). Each line is parsed as it is
    read, and kept once its frame is complete; ``on_phase``: the records (lines with a value)
    read so far, of the number the header says were selected."""
    lines: list[dict[str, Any]] = []
    frame: list[dict[str, Any]] = []
    bad: orjson.JSONDecodeError | None = None  # said once its frame is known complete
    frames = 0
    reading: PhaseReporter | None = None
    for item in read_lines(
        source, kind="an esctl queue backup", written_by="esctl queue drain --to-file"
    ):
        if item is None:
            return lines, frames, True
        if isinstance(item, int):
            frames = item
            if bad is not None:
                raise UsageError(f"{source} holds a line that is not JSON: {bad}") from None
            lines.extend(frame)
            frame = []
            continue
        try:
            line = orjson.loads(item)
        except orjson.JSONDecodeError as exc:
            bad = bad or exc
            continue
        frame.append(line)
        if on_phase is None or not isinstance(line, dict):
            continue
        if reading is None:  # the header: how many records follow
            total = line.get("selected") if line.get("format") == BACKUP_FORMAT else None
            reading = PhaseReporter(
                on_phase, "reading backup", total if isinstance(total, int) else None
            )
        elif "value" in line:
            reading.add()
    if reading is not None:
        reading.finish()
    return lines, frames, False
