"""The integrity scan's spill index: the commit ids the commit lists name, the keys already
scanned, and the hash-side findings, in an SQLite file of a temporary directory, so that
``inspect integrity``'s memory does not grow with the store (docs/design/integrity.md)."""

from __future__ import annotations

import os
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from esctl.scratch import scratch_error

_SQL_CHUNK = 500
"""Host parameters per SQLite statement (well under every SQLite build's limit)."""


def _db(text: str) -> str:
    """A name read from Redis as SQLite can store it. Names that are not valid UTF-8 are kept
    as surrogate escapes (``redisio.key_str``), which SQLite refuses: those are stored with
    their raw bytes as Latin-1 (and :func:`_py` undoes it), so every name maps to one stored
    text and back. ASCII, nearly every name, is stored as it is."""
    return text if text.isascii() else text.encode("utf-8", "surrogateescape").decode("latin-1")


def _py(text: str) -> str:
    return text if text.isascii() else text.encode("latin-1").decode("utf-8", "surrogateescape")


def _rows(rows: list[Any]) -> list[tuple[int, str, str]]:
    return [(rowid, _py(key), _py(commit_id)) for rowid, key, commit_id in rows]


class CommitIndex:
    """The commit ids seen in commit lists, the keys already scanned, and hash-side findings,
    in an SQLite file of a temporary directory; memory is SQLite's page cache (8 MiB). Text goes
    in through :func:`_db` and comes out through :func:`_py`, so names that are not UTF-8 work."""

    def __init__(self) -> None:
        try:
            self._dir = tempfile.TemporaryDirectory(prefix="esctl-integrity-")
        except OSError as exc:
            raise scratch_error(
                "the check's index of commit ids", exc, done="the check did not start"
            ) from None
        self.db = sqlite3.connect(
            os.path.join(self._dir.name, "index.sqlite"), isolation_level=None
        )
        for pragma in (
            "journal_mode = OFF",
            "synchronous = OFF",
            "cache_size = -8192",
            "temp_store = FILE",
            "locking_mode = EXCLUSIVE",
        ):
            self.db.execute(f"PRAGMA {pragma}")
        self.db.executescript(
            """
            CREATE TABLE seen_key (key TEXT PRIMARY KEY) WITHOUT ROWID;
            CREATE TABLE committed (commit_id TEXT PRIMARY KEY, aggregate_id TEXT NOT NULL)
                WITHOUT ROWID;
            CREATE TABLE finding (kind TEXT NOT NULL, key TEXT NOT NULL, commit_id TEXT NOT NULL,
                detail TEXT NOT NULL, UNIQUE (key, commit_id));
            CREATE INDEX finding_commit ON finding (commit_id);
            """
        )

    def close(self) -> None:
        self.db.close()
        self._dir.cleanup()

    def __enter__(self) -> CommitIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _chunks(self, items: Sequence[str]) -> Iterator[Sequence[str]]:
        for start in range(0, len(items), _SQL_CHUNK):
            yield items[start : start + _SQL_CHUNK]

    def new_keys(self, keys: Sequence[str]) -> list[str]:
        """The keys not seen before (SCAN may return a key twice), now marked as seen."""
        stored = [_db(k) for k in keys]
        seen: set[str] = set()
        for chunk in self._chunks(stored):
            marks = ",".join("?" * len(chunk))
            seen.update(
                r[0]
                for r in self.db.execute(f"SELECT key FROM seen_key WHERE key IN ({marks})", chunk)
            )
        fresh = {d: k for d, k in zip(stored, keys, strict=True) if d not in seen}
        self.db.executemany("INSERT INTO seen_key VALUES (?)", ((d,) for d in fresh))
        return list(fresh.values())

    def add_commits(self, pairs: Iterable[tuple[str, str]]) -> None:
        self.db.execute("BEGIN")
        self.db.executemany(
            "INSERT OR IGNORE INTO committed VALUES (?, ?)", ((_db(c), _db(a)) for c, a in pairs)
        )
        self.db.execute("COMMIT")

    def committed(self, commit_ids: Sequence[str]) -> dict[str, str]:
        """commit id -> aggregate id, for the given ids some commit list names."""
        out: dict[str, str] = {}
        for chunk in self._chunks([_db(c) for c in commit_ids]):
            marks = ",".join("?" * len(chunk))
            out.update(
                (_py(commit_id), _py(aggregate_id))
                for commit_id, aggregate_id in self.db.execute(
                    f"SELECT commit_id, aggregate_id FROM committed WHERE commit_id IN ({marks})",
                    chunk,
                )
            )
        return out

    def add_finding(self, kind: str, key: str, commit_id: str, detail: str) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO finding (kind, key, commit_id, detail) VALUES (?, ?, ?, ?)",
            (kind, _db(key), _db(commit_id), _db(detail)),
        )

    def findings(self, kind: str, batch: int = 1000) -> Iterator[list[tuple[int, str, str]]]:
        """(rowid, key, commit id) of the findings of ``kind``, in batches, oldest first."""
        for rows in self._finding_batches("key, commit_id", kind, batch):
            yield _rows(rows)

    def _finding_batches(self, columns: str, kind: str, batch: int) -> Iterator[list[Any]]:
        """(rowid, ``columns``…) rows of the findings of ``kind``, in batches in rowid order;
        the next batch starts after the last rowid given (rows dropped meanwhile are fine)."""
        last = 0
        while True:
            rows = self.db.execute(
                f"SELECT rowid, {columns} FROM finding WHERE kind = ? AND rowid > ?"
                " ORDER BY rowid LIMIT ?",
                (kind, last, batch),
            ).fetchall()
            if not rows:
                return
            yield rows
            last = rows[-1][0]

    def drop_finding(self, rowid: int) -> None:
        self.db.execute("DELETE FROM finding WHERE rowid = ?", (rowid,))

    def describe_finding(self, rowid: int, detail: str) -> None:
        self.db.execute("UPDATE finding SET detail = ? WHERE rowid = ?", (_db(detail), rowid))

    def undescribed(self, kind: str, commit_ids: Sequence[str]) -> list[tuple[int, str, str]]:
        """(rowid, key, commit id) of the findings of ``kind`` about ``commit_ids`` that have no
        detail yet."""
        out: list[tuple[int, str, str]] = []
        for chunk in self._chunks([_db(c) for c in commit_ids]):
            marks = ",".join("?" * len(chunk))
            out.extend(
                _rows(
                    self.db.execute(
                        "SELECT rowid, key, commit_id FROM finding WHERE kind = ? AND detail = ''"
                        f" AND commit_id IN ({marks})",
                        (kind, *chunk),
                    ).fetchall()
                )
            )
        return out

    def undescribed_batch(self, kind: str, batch: int = 1000) -> list[tuple[int, str, str]]:
        """Up to ``batch`` findings of ``kind`` with no detail yet (describe them to move on)."""
        return _rows(
            self.db.execute(
                "SELECT rowid, key, commit_id FROM finding WHERE kind = ? AND detail = '' LIMIT ?",
                (kind, batch),
            ).fetchall()
        )

    def count_undescribed(self, kind: str) -> int:
        row = self.db.execute(
            "SELECT count(*) FROM finding WHERE kind = ? AND detail = ''", (kind,)
        ).fetchone()
        return int(row[0])

    def finding_counts(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT kind, count(*) FROM finding GROUP BY kind").fetchall())

    def finding_examples(self, kind: str, limit: int) -> list[tuple[str, str, str]]:
        return [
            (_py(key), _py(commit_id), _py(detail))
            for key, commit_id, detail in self.db.execute(
                "SELECT key, commit_id, detail FROM finding WHERE kind = ? ORDER BY rowid LIMIT ?",
                (kind, limit),
            )
        ]

    def finding_pages(self, kind: str, batch: int = 1000) -> Iterator[list[tuple[str, str, str]]]:
        """Every (key, commit id, detail) finding of ``kind``, in batches, oldest first."""
        for rows in self._finding_batches("key, commit_id, detail", kind, batch):
            yield [(_py(key), _py(commit_id), _py(detail)) for _, key, commit_id, detail in rows]
