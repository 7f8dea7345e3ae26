"""The gzip header of what esctl writes matches the store's own writers (docs/layout.md §2).

Whole values are compared, every byte, with two encoders that are not esctl's: Python's gzip
module (mtime 0, the OS byte patched in, as ``independent_writer.gzip_base64`` does for a
service on Windows) and .NET's own ``System.IO.Compression.GZipStream`` under Mono (the class
the library's ``StringExtensions.Compress`` uses; Mono's writes OS byte 3, zlib's Unix code).
The Mono part is skipped, saying what to install, where ``mcs`` or ``mono`` is missing, unless
``ESCTL_TEST_DOTNET=required``.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import shutil
import subprocess
from pathlib import Path

import independent_writer as iw
import pytest
import redis
import redis_bytes as rb
from helpers import run_cli

from esctl import codec
from esctl import compress as core
from esctl.errors import UsageError

WINDOWS, UNIX = 0x0A, 0x03
DOTNET_REQUIRED_ENV = "ESCTL_TEST_DOTNET"

TEXTS = [
    '{"$type":"Ns.E, Asm","Id":"a","Version":1,"Text":"' + "Zoë 日本語 🎉 " * 200 + '"}',
    "x" * 1001,
    "".join(chr(0x20 + (i * 7919) % 0x2F00) for i in range(40_000)),  # hardly compressible
    '{"k":"' + "0123456789abcdef" * 20_000 + '"}',  # 320 kB: many deflate blocks
]


def python_gzip_base64(text: str, os_byte: int) -> bytes:
    """Python's gzip module, mtime 0, OS byte patched in."""
    gz = bytearray(gzip.compress(text.encode("utf-8"), compresslevel=6, mtime=0))
    gz[9] = os_byte
    return base64.b64encode(bytes(gz))


@pytest.mark.parametrize("os_byte", [UNIX, WINDOWS, 0])
def test_whole_values_equal_pythons_gzip_with_the_same_header(os_byte: int) -> None:
    for text in TEXTS:
        ours = codec.gzip_base64(text, codec.GzipHeader(0, os_byte))
        assert ours == python_gzip_base64(text, os_byte)
        assert codec.gzip_header_of(ours) == codec.GzipHeader(0, os_byte)
        assert codec.decode_value(ours).text == text


# --- .NET's GZipStream under Mono ----------------------------------------------------------

GZIP_WRITER_CS = """
using System; using System.IO; using System.IO.Compression; using System.Text;
// One line in: base64 of a UTF-8 text. One line out: what the library stores for it
// (StringExtensions.Compress: GZipStream(CompressionMode.Compress) + Convert.ToBase64String).
class GzipWriter {
  static void Main() {
    string line;
    while ((line = Console.In.ReadLine()) != null) {
      var bytes = Encoding.UTF8.GetBytes(Encoding.UTF8.GetString(Convert.FromBase64String(line)));
      using (var msi = new MemoryStream(bytes)) using (var mso = new MemoryStream()) {
        using (var gs = new GZipStream(mso, CompressionMode.Compress)) { msi.CopyTo(gs); }
        Console.Out.WriteLine(Convert.ToBase64String(mso.ToArray()));
      }
    }
  }
}
"""


@pytest.fixture(scope="module")
def mono_gzip(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """What .NET's GZipStream (Mono) stores for each of TEXTS."""
    mcs, mono = shutil.which("mcs"), shutil.which("mono")
    if mcs is None or mono is None:
        reason = "needs mcs and mono (Debian: apt-get install mono-mcs mono-runtime)"
        if os.environ.get(DOTNET_REQUIRED_ENV) == "required":
            pytest.fail(f"{DOTNET_REQUIRED_ENV}=required, but this test {reason}")
        pytest.skip(reason)
    folder: Path = tmp_path_factory.mktemp("gzip-writer")
    source, exe = folder / "GzipWriter.cs", folder / "GzipWriter.exe"
    source.write_text(GZIP_WRITER_CS, encoding="utf-8")
    compiled = subprocess.run(
        [mcs, f"-out:{exe}", str(source)], capture_output=True, timeout=120, check=False
    )
    assert compiled.returncode == 0, compiled.stdout.decode()
    stdin = b"".join(base64.b64encode(t.encode("utf-8")) + b"\n" for t in TEXTS)
    ran = subprocess.run([mono, str(exe)], input=stdin, capture_output=True, timeout=120)
    assert ran.returncode == 0, ran.stderr.decode()
    values = ran.stdout.split()
    assert len(values) == len(TEXTS)
    return values


def test_dotnet_gzipstream_writes_the_header_esctl_describes(mono_gzip: list[bytes]) -> None:
    for value in mono_gzip:
        assert base64.b64decode(value)[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03"


@pytest.mark.parametrize("os_byte", [UNIX, WINDOWS])
def test_whole_values_equal_dotnet_gzipstream(mono_gzip: list[bytes], os_byte: int) -> None:
    """Byte for byte what a service stores: as Mono writes it on Linux, and with the OS byte a
    service on Windows writes (its only header difference)."""
    for text, dotnet in zip(TEXTS, mono_gzip, strict=True):
        raw = bytearray(base64.b64decode(dotnet))
        raw[9] = os_byte
        assert codec.gzip_base64(text, codec.GzipHeader(0, os_byte)) == base64.b64encode(raw)


# --- compress copies the store's header ----------------------------------------------------


def compress_cli(url: str, app: str, *args: str) -> tuple[int, dict, str]:
    result = run_cli("compress", "--redis-url", url, "--app", app, "--yes", "--json", *args)
    assert "Traceback" not in result.stderr
    return result.returncode, json.loads(result.stdout), result.stderr


def plain_store(client: redis.Redis, app: str, seed: int) -> list[iw.TruthEvent]:
    """A store left plain by services without compression; its events over 1,000 bytes."""
    truth = iw.write_store(client, app=app, aggregates=40, threshold=None, seed=seed)
    big = [e for e in truth.events() if len(e.payload.encode("utf-8")) > 1000]
    assert len(big) >= 12
    return big


def write_compressed(client: redis.Redis, events: list[iw.TruthEvent], os_byte: int) -> None:
    """What a service with compression on would have stored for ``events``."""
    for event in events:
        client.hset(event.hash_key, event.commit_id, python_gzip_base64(event.payload, os_byte))


def assert_written_as(client: redis.Redis, events: list[iw.TruthEvent], os_byte: int) -> None:
    for event in events:
        stored = rb.hget(client, event.hash_key, event.commit_id)
        assert stored == python_gzip_base64(event.payload, os_byte), event.commit_id


def test_compress_copies_the_windows_header_of_the_stores_values(
    redis_client: redis.Redis, redis_test_url: str, app_name: str
) -> None:
    big = plain_store(redis_client, app_name, seed=41)
    by_services, plain = big[:5], big[5:]
    write_compressed(redis_client, by_services, WINDOWS)
    code, document, stderr = compress_cli(redis_test_url, app_name)
    assert code == 0, stderr
    assert document["compressed"] == len(plain)
    header = document["gzip_header"]
    assert header["source"] == "store" and header["os"] == WINDOWS and header["xfl"] == 0
    assert header["os_name"] == "windows"
    assert header["sampled"] == [{"os": WINDOWS, "os_name": "windows", "xfl": 0, "values": 5}]
    assert_written_as(redis_client, plain, WINDOWS)
    assert_written_as(redis_client, by_services, WINDOWS)  # untouched


def test_a_store_without_compressed_values_gets_unix_or_the_chosen_os_byte(
    redis_client: redis.Redis, redis_test_url: str, app_name: str
) -> None:
    big = plain_store(redis_client, app_name, seed=42)
    code, document, stderr = compress_cli(redis_test_url, app_name, "--dry-run")
    assert code == 0, stderr
    assert document["gzip_header"]["source"] == "default"
    assert document["gzip_header"]["os"] == UNIX and document["gzip_header"]["sampled"] == []
    assert document["compressed"] == 0 and document["bytes_after"] > 0

    code, document, stderr = compress_cli(redis_test_url, app_name, "--gzip-os", "windows")
    assert code == 0, stderr
    assert document["gzip_header"]["source"] == "option"
    assert document["gzip_header"]["os"] == WINDOWS
    assert_written_as(redis_client, big, WINDOWS)


def test_gzip_os_overrides_the_store_and_takes_numbers(
    redis_client: redis.Redis, redis_test_url: str, app_name: str
) -> None:
    big = plain_store(redis_client, app_name, seed=43)
    write_compressed(redis_client, big[:3], WINDOWS)
    code, document, stderr = compress_cli(redis_test_url, app_name, "--gzip-os", "3")
    assert code == 0, stderr
    assert document["gzip_header"]["source"] == "option" and document["gzip_header"]["os"] == 3
    assert document["gzip_header"]["sampled"][0]["values"] == 3  # what the store holds
    assert_written_as(redis_client, big[3:], UNIX)


def test_when_the_stores_values_disagree_the_majority_is_written_and_said(
    redis_client: redis.Redis, redis_test_url: str, app_name: str
) -> None:
    big = plain_store(redis_client, app_name, seed=44)
    write_compressed(redis_client, big[:2], UNIX)  # services on Linux and on Windows
    write_compressed(redis_client, big[2:7], WINDOWS)
    result = run_cli("compress", "--redis-url", redis_test_url, "--app", app_name, "--yes")
    assert result.returncode == 0, result.stderr
    assert "different gzip headers" in result.stderr
    assert "2 with OS byte 3 (unix)" in result.stderr
    assert "5 with OS byte 10 (windows)" in result.stderr
    assert "OS byte 10 (windows)" in result.stdout
    assert_written_as(redis_client, big[7:], WINDOWS)
    assert_written_as(redis_client, big[:2], UNIX)  # what services wrote stays as it is


def test_values_that_only_look_compressed_do_not_decide_the_header(
    redis_client: redis.Redis, app_name: str
) -> None:
    big = plain_store(redis_client, app_name, seed=45)
    write_compressed(redis_client, big[:1], WINDOWS)
    for event in big[1:4]:  # H4sI, a gzip header with OS byte 3, then garbage
        bad = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + b"\xff" * 40
        redis_client.hset(event.hash_key, event.commit_id, base64.b64encode(bad))
    choice = core.choose_gzip_header(redis_client, app_name)
    assert choice.source == "store" and choice.header == codec.GzipHeader(0, WINDOWS)
    assert dict(choice.seen) == {codec.GzipHeader(0, WINDOWS): 1}


def test_gzip_os_takes_names_and_numbers_and_refuses_anything_else() -> None:
    assert [core.parse_gzip_os(t) for t in ("unix", "Windows", "0", "10", "0x0a", "255")] == [
        3, 10, 0, 10, 10, 255,
    ]  # fmt: skip
    for bad in ("linux", "256", "-1", "", "3.0"):
        with pytest.raises(UsageError, match="--gzip-os"):
            core.parse_gzip_os(bad)


def test_a_bad_gzip_os_is_a_usage_error(redis_test_url: str, app_name: str) -> None:
    result = run_cli(
        "compress", "--redis-url", redis_test_url, "--app", app_name, "--yes", "--json",
        "--gzip-os", "linux",
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    document = json.loads(result.stdout)
    assert document["exit_code"] == 2 and "--gzip-os" in document["error"]["message"]
