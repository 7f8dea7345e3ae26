"""compress's round-trip check: a compressed value that would not decode back to the identical
text through the library's reading rule is never written.

No correct gzip encoder gives such a value, so the test runs esctl with a faulty one, the fault
injected into ``esctl.codec.gzip_base64`` by a wrapper script (everything else, Redis included,
is real): for texts marked ``CORRUPT`` it flips a byte of the deflate data (the CRC no longer
matches: the library would fall back to the base64 text itself), for texts marked ``ALTER`` it
compresses a slightly different text (valid gzip, wrong text)."""

from __future__ import annotations

import json
import subprocess
import sys

import independent_writer as iw
import redis
import redis_bytes as rb
from helpers import cli_env

FAULTY_ENCODER = """
import base64, sys
import esctl.codec as codec

real = codec.gzip_base64

def faulty(text, *args, **kwargs):
    if "CORRUPT" in text:
        raw = bytearray(base64.b64decode(real(text, *args, **kwargs)))
        raw[len(raw) // 2] ^= 0x55
        return base64.b64encode(bytes(raw))
    if "ALTER" in text:
        return real(text.replace("ALTER", "ALTEr"), *args, **kwargs)
    return real(text, *args, **kwargs)

codec.gzip_base64 = faulty
sys.argv[0] = "esctl"
from esctl.cli.app import main
main()
"""


def compress_with_faulty_encoder(url: str, app: str) -> tuple[int, dict, str]:
    result = subprocess.run(
        [sys.executable, "-c", FAULTY_ENCODER, "compress", "--redis-url", url, "--app", app,
         "--yes", "--json"],
        capture_output=True, env=cli_env(), timeout=120, check=False, text=True,
    )  # fmt: skip
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout), result.stderr


def snapshot_text(aggregate_id: str, marker: str) -> str:
    return json.dumps({"$type": "Ns.Snap, Asm", "Id": aggregate_id, "Note": marker * 300})


def test_a_value_that_would_not_round_trip_is_left_as_it_was_and_reported(
    redis_client: redis.Redis, redis_test_url: str, app_name: str
) -> None:
    truth = iw.write_store(redis_client, app=app_name, aggregates=30, threshold=None, seed=71)
    big = [e for e in truth.events() if len(e.payload.encode("utf-8")) > 1000]
    assert big
    marked = {}
    for aggregate, marker in zip(truth.aggregates, ["CORRUPT", "CORRUPT", "ALTER", "fine "],
                                 strict=False):  # fmt: skip
        key = iw.snapshot_hash_key(app_name, aggregate.aggregate_id)
        text = snapshot_text(aggregate.aggregate_id, marker)
        redis_client.hset(key, aggregate.aggregate_id, text)
        marked[(key, aggregate.aggregate_id)] = (marker, text)
    refused = {k for k, (m, _) in marked.items() if m != "fine "}

    for attempt in (1, 2):  # a rerun refuses them again: nothing was written
        code, document, stderr = compress_with_faulty_encoder(redis_test_url, app_name)
        assert code == 3, (document, stderr)
        mismatches = [p for p in document["problems"] if p["kind"] == "roundtrip_mismatch"]
        assert {p["key"] for p in mismatches} == {key for key, _ in refused}, mismatches
        assert len(mismatches) == document["problems_total"] == len(refused)
        assert all("left as it is" in p["detail"] for p in mismatches)
        if attempt == 1:
            assert document["compressed"] == len(big) + 1  # the events and the fine snapshot
        else:
            assert document["compressed"] == 0

    for (key, field), (marker, text) in marked.items():
        stored = rb.hget(redis_client, key, field)
        if marker == "fine ":
            assert stored is not None and iw.gunzip_base64(stored) == text
        else:
            assert stored == text.encode("utf-8"), (marker, key)  # as it was, byte for byte
    for event in big:
        stored = rb.hget(redis_client, event.hash_key, event.commit_id)
        assert stored is not None and iw.gunzip_base64(stored) == event.payload
