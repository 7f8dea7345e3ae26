"""esctl.backupfile: the writer of queue drain and prune backups (a new 0600 file of fsynced
zstd frames of JSON lines). What the files hold is tested with drain/restore and prune."""

from __future__ import annotations

import os
import random
import stat
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import zstandard

from esctl import backupfile
from esctl.backupfile import BackupWriter
from esctl.errors import EsctlError, NotFound, Refused, UsageError


def frames(data: bytes) -> Iterator[bytes]:
    """Each complete zstd frame's content, in order."""
    while data:
        obj = zstandard.ZstdDecompressor().decompressobj()
        yield obj.decompress(data)
        assert obj.eof
        data = obj.unused_data


def writer(path: Path) -> BackupWriter:
    return BackupWriter(path, option="--to-file", nothing_done="nothing was drained")


def test_one_frame_per_write_of_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "b.jsonl.zst"
    w = writer(path)
    w.write_frame([{"format": "x", "n": 1}, {"value": "é\n"}])
    w.write_frame([])  # nothing: no empty frame
    w.write_frame([{"outcome": {"removed": [0]}}])
    w.close()
    data = path.read_bytes()
    assert list(frames(data)) == [
        b'{"format":"x","n":1}\n{"value":"\xc3\xa9\\n"}\n',
        b'{"outcome":{"removed":[0]}}\n',
    ]
    # the same bytes as one-shot level-3 frames: files written before stay byte-compatible
    expected = b"".join(
        zstandard.ZstdCompressor(level=3).compress(b"".join(orjson.dumps(x) + b"\n" for x in lines))
        for lines in ([{"format": "x", "n": 1}, {"value": "é\n"}], [{"outcome": {"removed": [0]}}])
    )
    assert data == expected


def test_mode_0600_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "b.jsonl.zst"
    old = os.umask(0o277)  # would leave 0400
    try:
        w = writer(path)
    finally:
        os.umask(old)
    w.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_an_existing_file_is_refused_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "taken.jsonl.zst"
    path.write_bytes(b"an earlier backup")
    with pytest.raises(Refused, match="never overwrites") as caught:
        BackupWriter(path, option="--backup-file", nothing_done="nothing was deleted")
    assert str(path) in caught.value.message
    assert caught.value.hint == "choose a new --backup-file name (nothing was deleted)"
    assert path.read_bytes() == b"an earlier backup"


def test_a_missing_folder_names_the_path_and_what_was_not_done(tmp_path: Path) -> None:
    path = tmp_path / "no" / "b.jsonl.zst"
    with pytest.raises(EsctlError) as caught:
        writer(path)
    assert not isinstance(caught.value, Refused)
    assert caught.value.message.startswith(f"cannot create the backup file {path}: ")
    assert caught.value.message.endswith("; nothing was drained")


def test_read_lines_streams_whole_frames_and_stops_at_a_cut_short_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lines come as they are decompressed, a frame's number after its last line; a value
    longer than a read, and a frame streamed in parts, come back whole; a cut-short last
    frame ends the reading with None (its lines are the reader's to drop)."""
    monkeypatch.setattr(backupfile, "READ_BYTES", 7)  # many reads per line and per frame
    path = tmp_path / "b.jsonl.zst"
    w = writer(path)
    w.write_frame([{"n": 1, "v": "x" * 300}, {"n": 2}])
    w.write_frame({"n": n} for n in range(3, 2600))  # streamed: more than one write's lines
    w.close()
    items = list(backupfile.read_lines(path, kind="a test backup", written_by="the test"))
    assert [orjson.loads(i)["n"] for i in items if isinstance(i, bytes)] == list(range(1, 2600))
    assert [i for i in items if not isinstance(i, bytes)] == [1, 2]
    assert items[2] == 1 and items[-1] == 2
    whole = path.read_bytes()
    path.write_bytes(whole[:-5])  # the last frame cut short
    cut = list(backupfile.read_lines(path, kind="a test backup", written_by="the test"))
    assert 1 in cut and 2 not in cut and cut[-1] is None
    path.write_bytes(b"not zstd at all")
    with pytest.raises(UsageError, match=r"is not a test backup \(zstd: .*"):
        list(backupfile.read_lines(path, kind="a test backup", written_by="the test"))
    with pytest.raises(NotFound, match="cannot read the backup file") as missing:
        list(backupfile.read_lines(tmp_path / "missing", kind="a", written_by="b"))
    assert missing.value.hint == f"check the path (a relative one is read from {Path.cwd()})"


def line(n: int) -> dict[str, object]:
    """A line much like the others, but for its random id."""
    return {"n": n, "Id": random.Random(n).randbytes(16).hex(), "Comment": "Révisé " + "x" * 300}


def test_reading_turns_out_a_little_at_a_time_however_well_the_file_compresses(
    tmp_path: Path,
) -> None:
    """Lines much alike (20 MB compressing about 20x, like many similar messages) come a few
    hundred kilobytes at a time, never a whole read's worth at once (one 1 MiB read used to
    turn out 30 MB of lines, a reader's peak memory), whole and in order, also across frames
    and from a file opened already."""
    path = tmp_path / "b.jsonl.zst"
    w = writer(path)
    w.write_frame(line(n) for n in range(30_000))
    w.write_frame(line(n) for n in range(30_000, 60_000))
    w.close()
    assert backupfile.READ_BYTES <= path.stat().st_size < 2 * backupfile.READ_BYTES
    with path.open("rb") as handle:
        for _ in range(2):  # read again from the same handle
            chunks = list(backupfile.read_chunks(path, kind="a", written_by="b", handle=handle))
            lines = [line for c in chunks if isinstance(c, list) for line in c]
            assert [orjson.loads(line)["n"] for line in lines] == list(range(60_000))
            assert [c for c in chunks if not isinstance(c, list)] == [1, 2]
            assert max(sum(map(len, c)) for c in chunks if isinstance(c, list)) < 1 << 20
