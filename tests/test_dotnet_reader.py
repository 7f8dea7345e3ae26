"""What esctl emits from PostgreSQL, read by a real .NET client as the library reads messages.

The client is ``tests/dotnet/EventReader.cs`` (Mono + Newtonsoft.Json, compiled once per
session): it writes event payloads as the library's event stores do, and reads queue messages
as the library's subscribers do (``JsonConvert.DeserializeObject<T>(eventData)``, default
settings: Newtonsoft takes ``$type``, ``$id``, ``$values`` … as metadata only while they come
first in an object). Skipped, saying what to install, where ``mcs``, ``mono`` or
Newtonsoft.Json.dll is missing (Debian: ``apt-get install mono-mcs mono-runtime
libnewtonsoft-json-cil-dev``), unless ``ESCTL_TEST_DOTNET=required`` (CI) makes that a
failure. ``ESCTL_TEST_NEWTONSOFT_DLL`` names another Newtonsoft.Json.dll.

Reads are compared by what the reader made of the text, re-serialised by Newtonsoft with every
type name, ignoring the order of keys (jsonb does not keep a dictionary's order: esctl cannot
give it back), keeping every number's text (a decimal's scale is part of its value).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import redis_bytes as rb
from helpers import run_cli
from hypothesis import HealthCheck, given, settings
from test_codec import JSONB_METADATA_TREES, Tree, jsonb_text, tree_json

from esctl import codec, layout

SOURCE = Path(__file__).parent / "dotnet" / "EventReader.cs"
NEWTONSOFT_DLL_ENV = "ESCTL_TEST_NEWTONSOFT_DLL"
DOTNET_REQUIRED_ENV = "ESCTL_TEST_DOTNET"
NEWTONSOFT_DLL_GLOBS = (
    "/usr/lib/cli/Newtonsoft.Json*/Newtonsoft.Json.dll",  # Debian's libnewtonsoft-json-cil-dev
    "/usr/lib/mono/gac/Newtonsoft.Json/*/Newtonsoft.Json.dll",
    "/usr/lib/mono/Newtonsoft.Json*/Newtonsoft.Json.dll",
)
INSTALL_HINT = (
    "Debian/Ubuntu: apt-get install mono-mcs mono-runtime libnewtonsoft-json-cil-dev "
    f"(or point {NEWTONSOFT_DLL_ENV} at a Newtonsoft.Json.dll)"
)
SUBSCRIBER = "Learning.EsctlTests.ReadModel"
EVENT_TYPES = ("ScoresRecorded", "DetailsAttached", "LinesAdded")
TIMEOUT = 120.0


# --- the .NET program ----------------------------------------------------------------------


@dataclass(frozen=True)
class Read:
    """What the .NET reader made of one message: ``ok`` and the canonical re-serialisation,
    or not ``ok`` and the exception."""

    ok: bool
    text: str

    def canonical(self) -> Any:
        """The re-serialisation as a value that compares ignoring key order, numbers by text."""
        assert self.ok, self.text
        return canonical_json(self.text)


@dataclass(frozen=True)
class DotnetClient:
    mono: str
    exe: Path

    def _run(self, *args: str, stdin: bytes = b"") -> list[str]:
        result = subprocess.run(
            [self.mono, str(self.exe), *args],
            input=stdin,
            capture_output=True,
            timeout=TIMEOUT,
            check=False,
        )
        assert result.returncode == 0, result.stderr.decode("utf-8", "replace")
        return result.stdout.decode("utf-8").splitlines()

    def samples(self) -> list[str]:
        """Event payloads as the library writes them (one JSON text each)."""
        return self._run("samples")

    def reference_graphs(self, *, backward: bool = False) -> list[str]:
        """Object graphs written with PreserveReferencesHandling.All ($id, $ref, $values);
        ``backward``: only graphs whose references follow what they name in jsonb's order."""
        return self._run("backward-refs" if backward else "refs")

    def read(self, messages: list[tuple[str, str, str]]) -> list[Read]:
        """Read every ``(mode, class name, JSON text)`` in one process; modes: ``subscriber``
        (the library's subscribers), ``store`` (its Redis event store), ``refs``."""
        stdin = "".join(f"{mode}\t{name}\t{text}\n" for mode, name, text in messages)
        lines = self._run("read", stdin=stdin.encode("utf-8"))
        assert len(lines) == len(messages), lines[-3:]
        reads = []
        for line in lines:
            status, _, text = line.partition("\t")
            reads.append(Read(status == "ok", text))
        return reads


def newtonsoft_dll() -> str | None:
    configured = os.environ.get(NEWTONSOFT_DLL_ENV)
    if configured:
        return configured if os.path.isfile(configured) else None
    for pattern in NEWTONSOFT_DLL_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[-1]
    return None


@pytest.fixture(scope="session")
def dotnet(tmp_path_factory: pytest.TempPathFactory) -> DotnetClient:
    """``tests/dotnet/EventReader.cs`` compiled into a temporary folder (next to a copy of
    Newtonsoft.Json.dll, so mono finds it without the GAC)."""
    mcs, mono, dll = shutil.which("mcs"), shutil.which("mono"), newtonsoft_dll()
    missing = [name for name, found in (("mcs", mcs), ("mono", mono), ("Newtonsoft.Json.dll", dll))
               if found is None]  # fmt: skip
    if missing:
        reason = f"a .NET reader needs {', '.join(missing)}: {INSTALL_HINT}"
        if os.environ.get(DOTNET_REQUIRED_ENV) == "required":  # CI: no silent skip
            pytest.fail(f"{DOTNET_REQUIRED_ENV}=required, but {reason}")
        pytest.skip(reason)
    assert mcs is not None and mono is not None and dll is not None
    folder = tmp_path_factory.mktemp("dotnet")
    shutil.copy(dll, folder / "Newtonsoft.Json.dll")
    exe = folder / "EventReader.exe"
    compiled = subprocess.run(
        [mcs, f"-out:{exe}", f"-r:{folder / 'Newtonsoft.Json.dll'}", str(SOURCE)],
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
    )
    if compiled.returncode != 0:
        pytest.fail(f"mcs could not compile {SOURCE}:\n{compiled.stdout.decode()}")
    return DotnetClient(mono, exe)


@pytest.fixture(scope="session")
def library_payloads(dotnet: DotnetClient) -> list[str]:
    return dotnet.samples()


class _Number(str):
    """A JSON number kept as its text."""


def canonical_json(text: str) -> Any:
    """JSON as nested tuples: objects as sorted (key, value) pairs (duplicates kept), numbers
    by their text."""

    def value(item: Any) -> Any:
        if isinstance(item, _Number):
            return ("number", str(item))
        if isinstance(item, list):
            return ("array", tuple(value(x) for x in item))
        if isinstance(item, tuple):  # an object, already converted
            return item
        return ("literal", item)

    def pairs(items: list[tuple[str, Any]]) -> Any:
        return ("object", tuple(sorted(((k, value(v)) for k, v in items), key=repr)))

    return value(json.loads(text, object_pairs_hook=pairs, parse_float=_Number, parse_int=_Number))


def class_name(payload: str) -> str:
    return codec.event_type_from_type_name(json.loads(payload)["$type"])


# --- Newtonsoft's own order ----------------------------------------------------------------


def metadata_orders(text: str) -> list[list[str]]:
    """The metadata keys of every object of ``text``, in text order, each object's list
    checked to be a prefix of its keys."""
    found: list[list[str]] = []

    def check(items: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in items]
        metadata = [k for k in keys if k in codec.NEWTONSOFT_METADATA_KEYS]
        assert keys[: len(metadata)] == metadata, f"metadata not first in {keys}"
        found.append(metadata)
        return dict(items)

    json.loads(text, object_pairs_hook=check)
    return found


def test_newtonsoft_writes_metadata_first_in_the_order_esctl_restores(
    dotnet: DotnetClient, library_payloads: list[str]
) -> None:
    """Serialised by the real Newtonsoft.Json (TypeNameHandling.All, with and without
    PreserveReferencesHandling.All): metadata come first, in NEWTONSOFT_METADATA_KEYS order,
    and $ref alone. The samples hold every kind of metadata, so the check means something."""
    seen: set[str] = set()
    for text in [*library_payloads, *dotnet.reference_graphs()]:
        for metadata in metadata_orders(text):
            assert metadata == sorted(metadata, key=codec.NEWTONSOFT_METADATA_KEYS.index)
            assert "$ref" not in metadata or metadata == ["$ref"]
            seen.update(metadata)
    assert seen == set(codec.NEWTONSOFT_METADATA_KEYS)


def jsonb_texts(pg_dsn: str, texts: list[str]) -> list[str]:
    """Each text as PostgreSQL's jsonb gives it back (``::jsonb::text``)."""
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute(
            "SELECT t::jsonb::text FROM unnest(%s::text[]) WITH ORDINALITY AS u(t, n) ORDER BY n",
            (texts,),
        ).fetchall()
    return [row[0] for row in rows]


def test_jsonb_order_is_what_the_subscribers_misread(
    dotnet: DotnetClient, library_payloads: list[str], pg_dsn: str
) -> None:
    """The defect being guarded against, shown with the real reader: the text jsonb gives
    back (what the SQL provider's get_events_for_aggregate returns, and what replay --from pg
    published before) fails for a dictionary and puts $type into object-typed members; the
    same text with the metadata first reads as the library's own payload."""
    jsonb = jsonb_texts(pg_dsn, library_payloads)
    names = [class_name(p) for p in library_payloads]
    reads = dotnet.read(
        [("subscriber", n, t) for n, t in zip(names, library_payloads, strict=True)]
        + [("subscriber", n, t) for n, t in zip(names, jsonb, strict=True)]
        + [
            ("subscriber", n, codec.newtonsoft_metadata_first(t.encode()).decode())
            for n, t in zip(names, jsonb, strict=True)
        ]
    )
    count = len(names)
    original, as_jsonb, reordered = reads[:count], reads[count : 2 * count], reads[2 * count :]
    assert all(r.ok for r in original), [r.text for r in original if not r.ok]
    for name, before, jsonb_read in zip(names, original, as_jsonb, strict=True):
        if name == "ScoresRecorded":
            assert not jsonb_read.ok
            assert "Could not convert string to decimal" in jsonb_read.text
        if name == "DetailsAttached":  # read, but $type became an entry of a JObject
            assert jsonb_read.ok, jsonb_read.text
            assert jsonb_read.canonical() != before.canonical()
            assert "$type" in json.loads(jsonb_read.text)["Details"]
            assert "$type" not in json.loads(before.text)["Details"]
    assert [r.canonical() for r in reordered] == [r.canonical() for r in original]


def test_reference_graphs_read_the_same_after_jsonb_and_the_reorder(
    dotnet: DotnetClient, pg_dsn: str
) -> None:
    """$id, $type and $values are read again once first. (jsonb also sorts the other members,
    so a graph whose $ref came after the $id it names can get it before, and Newtonsoft then
    reads null: no key order esctl could give back undoes that. The library writes no
    references; these graphs keep their references backward under jsonb's order.)"""
    graphs = dotnet.reference_graphs(backward=True)
    jsonb = jsonb_texts(pg_dsn, graphs)
    reads = dotnet.read(
        [("refs", "object", t) for t in graphs]
        + [("refs", "object", codec.newtonsoft_metadata_first(t.encode()).decode()) for t in jsonb]
    )
    original, reordered = reads[: len(graphs)], reads[len(graphs) :]
    assert [r.canonical() for r in reordered] == [r.canonical() for r in original]


# --- end to end: saved by the library, migrated, replayed -----------------------------------


def write_library_store(client: redis.Redis, app: str, payloads: list[str]) -> None:
    """Save ``payloads`` as the library's Redis event store does: the value (gzip+base64 over
    1000 bytes) in ``EventStore:APP:P`` under a new commit id, the commit id RPUSHed onto the
    aggregate's ``{EventStore:APP}:AGG`` (docs/layout.md)."""
    pipe = client.pipeline(transaction=False)
    for payload in payloads:
        commit_id = str(uuid.uuid4())
        aggregate_id = json.loads(payload)["Id"]
        pipe.hset(layout.event_hash_key(app, commit_id), commit_id, codec.encode_value(payload))
        pipe.rpush(layout.commit_list_key(app, aggregate_id), commit_id)
    pipe.execute()


def queued(client: redis.Redis, env: str, event_type: str) -> list[str]:
    """The messages waiting for SUBSCRIBER, oldest (first published) first."""
    key = layout.queue_key(SUBSCRIBER, env, event_type, "published")
    return [m.decode("utf-8") for m in reversed(rb.lrange(client, key))]


def replayed(
    client: redis.Redis, redis_url: str, pg_dsn: str, app: str, env: str, source: str
) -> list[str]:
    """``esctl replay --from SOURCE --to queue`` to SUBSCRIBER in ``env``: the messages."""
    for event_type in EVENT_TYPES:
        client.sadd(layout.subscribers_key(env, event_type), SUBSCRIBER)
    result = run_cli(
        "replay", "--from", source, "--to", "queue", "--all", "--yes", "--app", app,
        "--env", env, "--redis-url", redis_url, "--pg-dsn", pg_dsn, "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [message for t in EVENT_TYPES for message in queued(client, env, t)]


def printed(pg_dsn: str, app: str) -> list[str]:
    """``esctl replay --from pg --to stdout``: the payloads, as printed (each line's text after
    ``"data":``, no JSON parser in between)."""
    result = run_cli(
        "replay", "--from", "pg", "--to", "stdout", "--all", "--app", app, "--pg-dsn", pg_dsn
    )
    assert result.returncode == 0, result.stderr
    return [line.partition(',"data":')[2][:-1] for line in result.stdout.splitlines()]


def test_replayed_from_pg_reads_as_the_library_payload_and_as_replayed_from_redis(
    dotnet: DotnetClient,
    library_payloads: list[str],
    redis_client: redis.Redis,
    redis_test_url: str,
    pg_dsn: str,
    app_name: str,
    env_name: str,
) -> None:
    """Saved by the library, migrated with ``esctl migrate redis-to-pg``, replayed from
    PostgreSQL to a queue (and to stdout): every message reads, as the subscribers read it,
    exactly as the library's own payload (which is what a replay from Redis publishes), and
    as the library's Redis event store reads it too."""
    write_library_store(redis_client, app_name, library_payloads)
    migrated = run_cli(
        "migrate", "redis-to-pg", "--init-schema", "--app", app_name,
        "--redis-url", redis_test_url, "--pg-dsn", pg_dsn, "--json", "--no-progress",
    )  # fmt: skip
    assert migrated.returncode == 0, migrated.stderr
    assert json.loads(migrated.stdout)["events_migrated"] == len(library_payloads)
    redis_url, pg = redis_test_url, pg_dsn
    sources = {
        "library": library_payloads,
        "queue from redis": replayed(
            redis_client, redis_url, pg, app_name, f"{env_name}-r", "redis"
        ),
        "queue from pg": replayed(redis_client, redis_url, pg, app_name, f"{env_name}-p", "pg"),
        "stdout from pg": printed(pg_dsn, app_name),
    }
    # each message by its event: the sources order aggregates differently (Redis by id,
    # PostgreSQL by the order they were migrated in)
    by_event = {name: {event_key(t): t for t in texts} for name, texts in sources.items()}
    events = sorted(by_event["library"])
    for name, texts in sources.items():
        assert sorted(event_key(t) for t in texts) == events, name  # each event once
    assert by_event["queue from redis"] == by_event["library"]  # byte for byte

    checked = [(name, "subscriber") for name in sources]
    checked += [("library", "store"), ("queue from pg", "store")]
    reads = dotnet.read(
        [(mode, class_name(by_event[name][e]), by_event[name][e]) for name, mode in checked
         for e in events]
    )  # fmt: skip
    results = {
        check: dict(zip(events, reads[i * len(events) : (i + 1) * len(events)], strict=True))
        for i, check in enumerate(checked)
    }
    for (name, mode), got in results.items():
        wanted = results["library", mode]
        for event in events:
            assert got[event].ok, (name, mode, event, got[event].text)
            assert got[event].canonical() == wanted[event].canonical(), (name, mode, event)


def event_key(payload: str) -> tuple[str, int]:
    data = json.loads(payload)
    return data["Id"], data["Version"]


# --- the jsonb round trip on the real server ------------------------------------------------


def metadata_form(text: str) -> Any:
    """``text`` parsed, each object as (its metadata members in order, its other members
    sorted); fails unless every object's metadata come first."""

    def form(items: list[tuple[str, Any]]) -> Any:
        keys = [k for k, _ in items]
        metadata = [(k, v) for k, v in items if k in codec.NEWTONSOFT_METADATA_KEYS]
        assert keys[: len(metadata)] == [k for k, _ in metadata], f"metadata not first: {keys}"
        others = sorted((k, v) for k, v in items if k not in codec.NEWTONSOFT_METADATA_KEYS)
        return ("object", tuple(metadata), tuple(others))

    def freeze(value: Any) -> Any:
        return tuple(freeze(v) for v in value) if isinstance(value, list) else value

    return json.loads(
        text, object_pairs_hook=lambda items: form([(k, freeze(v)) for k, v in items])
    )


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(JSONB_METADATA_TREES)
def test_metadata_come_back_first_after_a_real_jsonb_round_trip(pg_dsn: str, tree: Tree) -> None:
    """For any JSON object tree whose metadata keys came first: PostgreSQL's jsonb gives back
    what tests/test_codec.py's model of it says (so the properties proven there hold for the
    real server), and with the metadata put first again, every object has them first, in
    their order, and the same members."""
    text = tree_json(tree)
    [stored] = jsonb_texts(pg_dsn, [text])
    assert stored == jsonb_text(tree)
    reordered = codec.newtonsoft_metadata_first(stored.encode()).decode()
    assert metadata_form(reordered) == metadata_form(text)
