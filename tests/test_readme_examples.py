"""The README's examples, run as written: every ``esctl`` command line of its ``sh`` blocks, in
README order, through bash with ``pipefail`` (so ``… | jq`` counts), against a demo store written
as app ``MyService`` and env ``production``. So is the projection guide's (docs/projections.md):
its Python files written as their first line names them, then its commands.

Only the names the README makes up are swapped for the store's (its aggregate ids, commit id,
subscriber names, file paths under /backups and /var; ``--grace 2m`` waits 1 s, and a follower
run under ``timeout … 8h`` is stopped with its SIGTERM after 3 s); options and pipelines stay as
printed.
The keys the README names for a command's ``--json`` output, in its jq programs and in its
lists of keys, are looked up in that command's output on the same store.
Lines that need what a test must not touch (a cluster at a private address, ``pip``, a developer's
shell) are left out, each with its reason in ``SKIPPED``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import redis_bytes as rb
from helpers import cli_env, run_cli, run_cli_together, start_cli

from esctl import codec, demo

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PROJECTION_GUIDE = ROOT / "docs" / "projections.md"

SKIPPED = {
    "redis+cluster://10.0.0.5": "an address of the reader's network; clusters are tested in test_cluster_*",
    "pytest": "the test command itself",
    "pip install": "installs",
    "source completions": "a shell's setup (test_completions covers the scripts)",
    "python bench/": "benchmarks run on demand",
    "--follow": "runs until stopped; tests/test_migrate_follow.py runs it",
}
TIMEOUT = 120.0


def readme_commands(document: Path = README) -> list[tuple[str, dict[str, str]]]:
    """The shell commands of the ``sh`` blocks of the README (or ``document``) that run esctl
    (a command spanning several lines, a pipeline into a ``while`` loop say, is one), each
    with the ``ESCTL_APP`` / ``ESCTL_ENV`` its block exported before it. Crontab lines and
    variable assignments are not shell commands and are left out."""
    commands: list[tuple[str, dict[str, str]]] = []
    in_block = False
    pending: list[str] = []
    exports: dict[str, str] = {}
    for line in document.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_block = line.strip() == "```sh" and not in_block
            pending, exports = [], {}
            continue
        if not in_block:
            continue
        pending.append(line)
        text = "\n".join(pending)
        if (
            line.endswith("\\")
            or subprocess.run(["bash", "-n", "-c", text], capture_output=True).returncode != 0
        ):
            continue  # not a whole command yet
        pending = []
        command = text.strip()
        if command.startswith("export "):
            for word in shlex.split(command)[1:]:
                key, _, value = word.partition("=")
                if key in ("ESCTL_APP", "ESCTL_ENV"):
                    exports[key] = value
        elif re.match(r"^(esctl |redis-cli .*\| esctl |timeout [^|]* esctl )", command):
            commands.append((command, dict(exports)))
    return commands


def _skip_reason(command: str) -> str | None:
    # A follower under ``timeout`` is stopped by its SIGTERM: that one runs.
    bounded = command.startswith("timeout ")
    return next(
        (
            why
            for marker, why in SKIPPED.items()
            if marker in command and not (bounded and marker == "--follow")
        ),
        None,
    )


@pytest.fixture(scope="module")
def readme_env(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, pg_admin_dsn: str
) -> Iterator[tuple[dict[str, str], dict[str, str], Path]]:
    """(environment, README name -> store name, working directory) for the README's commands:
    a demo store of app MyService / env production in a Redis database of its own, and a
    PostgreSQL database of its own."""
    import psycopg
    from conftest import claimed_redis_db, with_redis_db
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    workdir = tmp_path_factory.mktemp("readme")
    # A database of the module's own, claimed as the session claims its own.
    claim = ExitStack()
    url = with_redis_db(redis_url, claim.enter_context(claimed_redis_db(redis_url)))
    store = redis.Redis.from_url(url)
    summary = demo.write_demo_store(store, app="MyService", env="production")
    name = f"esctl_readme_{os.getpid()}"
    with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    samples = summary.samples
    compressed = rb.hget(store, samples["compressed_hash"], samples["compressed_commit"])
    assert compressed is not None and compressed.startswith(codec.GZIP_BASE64_PREFIX)
    order_ids = sorted(
        int(k.decode().rsplit(":", 1)[1])
        for k in store.scan_iter(match="{EventStore:MyService}:*")
        if k.decode().rsplit(":", 1)[1].isdigit()
    )
    names = {
        # README name -> the demo store's
        "3f0c2a9e-0d1b-4c5e-9f8a-1b2c3d4e5f60": samples["aggregate"],
        "9b1e7c2d-5a40-4f8e-b3d6-7e0f1a2b3c4d": samples["compressed_commit"],
        "EventStore:MyService:123456 3f0c…-commit-id": (
            f"{samples['compressed_hash']} {samples['compressed_commit']}"
        ),
        "'H4sIAAAAAAAACq…'": shlex.quote(compressed.decode()),
        "inspect aggregate 1017": f"inspect aggregate {order_ids[0]}",
        "Learning.ReportingService.Worker-v2": demo.SEARCH,  # another subscriber of the type
        "Learning.ReportingService.Worker": demo.REPORTING,
        "Learning.SearchIndexer.Worker": demo.SEARCH,
        "--grace 2m": "--grace 1s",  # the same look twice, without the two-minute wait
        "--signal TERM 8h": "--signal TERM 3s",  # a follower, stopped as a service is
        "/backups/": f"{workdir}/",
        "/var/log/esctl/": f"{workdir}/",
        "/var/lib/node_exporter/textfile/": f"{workdir}/",
    }
    env = cli_env(
        {
            "ESCTL_REDIS_URL": url,
            "ESCTL_PG_DSN": make_conninfo(pg_admin_dsn, dbname=name),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
    )
    try:
        yield env, names, workdir
    finally:
        store.flushdb()
        store.close()
        claim.close()
        with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def test_the_readme_has_examples_to_run() -> None:
    commands = readme_commands()
    assert len([c for c, _ in commands if _skip_reason(c) is None]) >= 40, commands


@pytest.mark.skipif(
    not (shutil.which("jq") and shutil.which("redis-cli")),
    reason="the README's examples pipe into jq and start from redis-cli: install jq and redis-tools",
)
def test_every_readme_example_runs_as_documented(
    readme_env: tuple[dict[str, str], dict[str, str], Path],
) -> None:
    env, names, workdir = readme_env
    (workdir / "esctl.toml").write_text(
        '[default]\napp = "MyService"\n\n[staging]\napp = "MyService-Staging"\n'
    )
    # The rules file the README's transforms examples name (the demo tour's own two rules).
    (workdir / "rules.toml").write_text(
        '[[leave_out]]\nevent_type = "Envelope*"\n\n[[rename_assembly]]\n'
        'from = "Learning.ScoringService.Domain"\nto = "Learning.Scoring.Domain"\n'
    )
    # The schema first: the README shows querying PostgreSQL before it shows the migration.
    assert _migrated_schema(env, workdir) == 3  # the demo's planted defects are quarantined
    failures: list[str] = []
    ran = 0
    for written, exports in readme_commands():
        if _skip_reason(written):
            continue
        ran += 1
        failure = _run_as_documented(written, exports, env, names, workdir)
        if failure:
            failures.append(failure)
    assert ran >= 40
    assert not failures, "\n\n".join(failures)


def _run_as_documented(
    written: str, exports: dict[str, str], env: dict[str, str], names: dict[str, str], cwd: Path
) -> str | None:
    """Run one documented command (its made-up names swapped for the store's); what was wrong
    with it (an exit other than 0 and 3, a traceback, a field jq found null, a key its jq
    program reads that esctl's output lacks), or None."""
    # One pass, longest name first: a replacement is never replaced again.
    pattern = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    command = re.sub(pattern, lambda m: names[m.group(0)], written)
    # What esctl gives jq is kept, to look up the keys the jq program reads in it.
    given_to_jq = cwd / "given-to-jq.json"
    given_to_jq.unlink(missing_ok=True)
    program = jq_program(command)
    result = subprocess.run(
        [
            "bash",
            "-o",
            "pipefail",
            "-c",
            command.replace(" | jq ", f" | tee {given_to_jq} | jq ", 1),
        ],
        env={**env, **exports},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    problems = []
    if result.returncode not in (0, 3):
        problems.append(f"exit {result.returncode}")
    if "Traceback" in result.stderr or "unexpected" in result.stderr:
        problems.append("a traceback or an unexpected error")
    if "| jq" in command and re.search(r"^null$", result.stdout, re.M):
        problems.append("jq found null: the documented field is missing")
    if program is not None and given_to_jq.exists():
        documents = json_documents(given_to_jq.read_text(encoding="utf-8"))
        lacking = [m for path in jq_paths(program) if (m := missing(documents, path))]
        if lacking:
            problems.append(f"jq reads what the output lacks: {'; '.join(lacking)}")
    if not problems:
        return None
    return (
        f"{written}\n  ran: {command}\n  {', '.join(problems)}\n"
        f"  stderr: {result.stderr.strip()[-600:]}\n  stdout: {result.stdout[:300]}"
    )


# --- the JSON keys the README names ---------------------------------------------------------
#
# A path is where keys sit in a command's --json output: "" the document (each line, for JSON
# lines), "shards[]" each element of its list "shards", "checks[id=pg.migration].values" the
# "values" of the element of "checks" whose "id" is "pg.migration". Every list on the way must
# have elements, and every object reached must hold the key: a README example the store cannot
# show is no check.


def json_documents(text: str) -> list[Any]:
    """The one JSON document of ``text``, or each of its JSON lines."""
    try:
        return [json.loads(text)]
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def reached(documents: list[Any], path: str) -> tuple[list[Any], str | None]:
    """The values at ``path`` in ``documents``, or what stops the walk there."""
    values = documents
    for step in filter(None, re.split(r"\.(?![^\[]*\])", path)):
        name, _, within = step.partition("[")
        found = []
        for value in values:
            if not isinstance(value, dict) or name not in value:
                return [], f"no {name!r} in {json.dumps(value)[:120]}"
            found.append(value[name])
        if within:
            field, _, wanted = within.rstrip("]").partition("=")
            items = [i for v in found if isinstance(v, list) for i in v]
            if field:
                items = [i for i in items if isinstance(i, dict) and i.get(field) == wanted]
            if not items:
                return [], f"{path}: {step} has no elements to look in"
            found = items
        values = found
    return values, None


def missing(documents: list[Any], path: str) -> str | None:
    """What of ``path`` (``shards[].lag.seconds``: its last step is a key) ``documents``
    lack, or None."""
    parent, _, key = path.rpartition(".")
    values, stop = reached(documents, parent)
    if stop:
        return f"{path}: {stop}"
    lacking = [v for v in values if not isinstance(v, dict) or key not in v]
    return f"{path}: not in {json.dumps(lacking[0])[:120]}" if lacking else None


def jq_program(command: str) -> str | None:
    """The program of the jq a command pipes esctl's output into, or None."""
    _, piped, rest = command.partition(" | jq ")
    if not piped:
        return None
    words = shlex.shlex(rest, posix=True, punctuation_chars="|")
    words.whitespace_split = True
    return next((w for w in words if not w.startswith("-")), None)


def jq_paths(program: str) -> list[str]:
    """The key paths a README jq program reads (``.shards[] | {shard, lag: .lag.seconds}``:
    ``shards[].shard``, ``shards[].lag.seconds``). Enough jq for the README's programs: a
    pipeline of paths (``.a.b``, ``.a[]``, ``.a[:5]``), object constructions (shorthand keys and
    ``key: .path``), ``select(...)`` and strings interpolating ``\\(.path)``."""
    paths: list[str] = []
    base = ""
    for stage in (s.strip() for s in re.split(r"\|(?![^(]*\))", program)):
        if re.fullmatch(r"\.[\w.]*(?:\[[\d:]*\][\w.]*)*", stage):
            path = base + re.sub(r"\[[\d:]*\]", "[]", stage)
            if path.rstrip("[]") != base.rstrip("."):
                paths.append(path.removesuffix("[]").lstrip("."))
            base = path + ("" if path.endswith(".") else ".") if stage.endswith("]") else path
            continue
        references = re.findall(r"(?<![\w\])])\.([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)", stage)
        if stage.startswith("{"):
            entries = stage.strip("{}").split(",")
            references += [e.strip() for e in entries if re.fullmatch(r"\s*\w+\s*", e)]
        paths += [(base + r).lstrip(".") for r in references]
    return paths


def guide_files() -> dict[str, str]:
    """The projection guide's Python blocks that name their file in their first line
    (``# myprojections.py  --  esctl replay ...``): file name -> text."""
    blocks = re.findall(
        r"^```python\n(.*?)^```", PROJECTION_GUIDE.read_text(encoding="utf-8"), re.M | re.S
    )
    named = (re.match(r"# ([\w./-]+\.py)\b", block) for block in blocks)
    return {m.group(1): m.string for m in named if m}


def test_the_projection_guides_example_runs_as_documented(
    readme_env: tuple[dict[str, str], dict[str, str], Path],
) -> None:
    """The guide's minimal projection, copied into the file its first line names and run with
    the guide's commands, fills its table from every ItemScoreUpdated event exactly once, and
    the same command run again resumes with nothing to do."""
    import psycopg

    env, names, workdir = readme_env
    env = {**env, "ESCTL_APP": "MyService"}  # the guide's commands take the app as configured
    guide = workdir / "guide"
    guide.mkdir(exist_ok=True)
    files = guide_files()
    assert "myprojections.py" in files, "the guide's minimal projection names no file"
    for name, text in files.items():
        (guide / name).write_text(text)
    _migrated_schema(env, guide)
    commands = readme_commands(PROJECTION_GUIDE)
    using = [c for c in commands if "myprojections.py" in c[0]]
    assert using, "the guide shows no command that runs its minimal projection"
    failures = [f for c in commands if (f := _run_as_documented(*c, env, names, guide))]
    assert not failures, "\n\n".join(failures)

    again = subprocess.run(
        ["bash", "-c", f"{using[0][0]} --json"],
        env=env,
        cwd=guide,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["events"] == 0 and summary["checkpoint"]["resumed"]
    with psycopg.connect(env["ESCTL_PG_DSN"]) as conn:
        table = {
            item: (updates, float(score))
            for item, updates, score in conn.execute("SELECT * FROM score_totals")
        }
        updated: dict[str, tuple[int, float]] = {}
        for item, data in conn.execute(
            "SELECT a.aggregate_id, e.event_data FROM event e JOIN aggregate a USING"
            " (aggregate_key) WHERE e.event_type = 'ItemScoreUpdated' ORDER BY a.aggregate_id,"
            " e.version"
        ):
            updated[item] = (updated.get(item, (0, 0.0))[0] + 1, float(data["Score"]))
    assert updated and table == updated


def readme_scripts() -> list[str]:
    """The README's whole shell scripts: ``sh`` blocks that start with ``#!/bin/sh`` (the cron
    jobs an operator installs as they are)."""
    blocks = re.findall(r"^```sh\n(.*?)^```", README.read_text(encoding="utf-8"), re.M | re.S)
    return [b for b in blocks if b.startswith("#!/bin/sh\n")]


def _migrated_schema(env: dict[str, str], workdir: Path) -> int:
    """The event tables, as the README's first run creates them (a nightly job does not);
    the run's exit code."""
    setup = subprocess.run(
        ["esctl", "migrate", "redis-to-pg", "--app", "MyService", "--init-schema", "--json"],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert setup.returncode in (0, 3), setup.stderr  # 3: the demo's defects are quarantined
    return setup.returncode


@pytest.mark.skipif(not shutil.which("jq"), reason="the README's scripts pipe into jq")
def test_every_readme_script_runs_whole_and_ends_with_its_runs(
    readme_env: tuple[dict[str, str], dict[str, str], Path],
) -> None:
    """Each cron script run whole by ``sh``, with a stuck processing message to requeue: it
    exits 0, says nothing failed, and leaves no esctl run behind when it returns (a ``wait``
    that waits for nothing lets cron see a job end while its runs still go on)."""
    import signal
    import time

    env, names, workdir = readme_env
    names = {**names, "postgresql://esctl@db.internal/events": shlex.quote(env["ESCTL_PG_DSN"])}
    _migrated_schema(env, workdir)
    store = redis.Redis.from_url(env["ESCTL_REDIS_URL"])
    published = sorted(store.scan_iter(match="*:{production:*}:PublishedEvents"))
    assert published
    # A consumer took a message and died: stuck in ProcessingEvents.
    store.rpoplpush(published[0], published[0].replace(b":PublishedEvents", b":ProcessingEvents"))
    store.close()
    scripts = readme_scripts()
    assert len(scripts) >= 2, scripts
    pattern = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    for written in scripts:
        script = re.sub(pattern, lambda m: names[m.group(0)], written)
        process = subprocess.Popen(
            ["sh", "-c", script],
            env=env,
            cwd=workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            process.wait(timeout=TIMEOUT)
            time.sleep(0.2)
            try:
                os.killpg(process.pid, 0)
                left_behind = True
            except ProcessLookupError:
                left_behind = False
        finally:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        assert process.stdout is not None
        output = process.stdout.read().decode("utf-8", "replace")
        process.stdout.close()
        head = written.splitlines()[1]
        assert process.returncode == 0, f"{head}\n{output}"
        assert "failed (exit" not in output and "Traceback" not in output, f"{head}\n{output}"
        assert not left_behind, f"{head}\nreturned while its esctl runs were still going"


@dataclass(frozen=True)
class KeyList:
    """A list of JSON keys the README gives for a command's ``--json`` output: in the README
    section headed ``section`` (None: anywhere), the passage ``passage`` matches (a regex over
    the text with its whitespace collapsed; its groups named ``keys…`` hold the list), naming
    keys of the output of ``run`` (a name of ``json_runs``) at the path ``at``.

    The keys of a passage are its backticked spans that are keys: ``a, b, c`` (snake_case
    names; a dotted one is a path), or JSON (``{"a", "b"}``, ``"shard": "2/4"``); those of
    ``not_keys`` are values the passage shows, not keys."""

    section: str | None
    passage: str
    run: str
    at: str = ""
    not_keys: frozenset[str] = frozenset()


BOUNDED = r"summaries carry the same five keys, whatever the number of problems: (?P<keys>.*?)\. Exit code 3"
KEY_LISTS = [
    KeyList("esctl events decode", r"into JSON lines (?P<keys>`\{[^`]*\}`)", "events decode"),
    KeyList("esctl events query", r"Each result: (?P<keys>`[^`]*`)", "events query"),
    # replay --to stdout: "JSON lines of the `events query` shape"
    KeyList("esctl events query", r"Each result: (?P<keys>`[^`]*`)", "replay to stdout"),
    KeyList(
        "esctl inspect aggregate",
        r"each event's exact payload (?P<keys>`text` and decoded `data`)",
        "inspect aggregate",
        "events[]",
    ),
    KeyList(
        "esctl inspect integrity",
        r"each naming its (?P<keys>.*?); exit code 3",
        "inspect integrity",
        "problems[]",
    ),
    KeyList(
        "esctl inspect integrity",
        r"the bounded problem keys \((?P<keys>.*?); see",
        "inspect integrity",
    ),
    KeyList("esctl inspect integrity", r"(?P<keys>`counts`) stays as it was", "inspect integrity"),
    KeyList(
        "esctl inspect integrity",
        r"which shard it covered \((?P<keys>`[^`]*`)\)",
        "inspect integrity",
    ),
    KeyList("esctl migrate redis-to-pg", r"Summary \(`--json`\): (?P<keys>`[^`]*`)", "migrate"),
    KeyList(
        "esctl migrate redis-to-pg",
        r"prints one JSON object per line: (?P<keys>.*?)\. `--metrics-file",
        "migrate --follow",
        not_keys=frozenset(
            {"batch", "sweep", "lag", "notice", "stopped", "notifications", "polling"}
        ),
    ),
    KeyList("esctl migrate verify", r"Reports (?P<keys>.*?); exits 3", "migrate verify"),
    KeyList(
        "esctl migrate verify", r"names the file\. `--json`: (?P<keys>.*?)\. ```", "migrate verify"
    ),
    KeyList(
        "esctl migrate verify",
        r"as JSON lines \((?P<keys>`[^`]*`)\) as they are found",
        "migrate verify --problems-file",
    ),
    KeyList(
        "esctl migrate plan",
        r"gives per rule (?P<keys>.*?) \(counted in",
        "migrate plan --transforms",
        "transforms.rules[]",
    ),
    KeyList(
        "esctl migrate plan",
        r"counted in (?P<keys>`problems_in_sample`)|(?P<keys2>`transforms\.events_after_estimate`)"
        r"|(?P<keys3>`pg_bytes_estimate`) is the size",
        "migrate plan --transforms",
    ),
    # "`transforms.events_after_estimate` and `aggregates_after_estimate`": both in transforms
    KeyList(
        "esctl migrate plan",
        r"and (?P<keys>`aggregates_after_estimate`) extrapolate",
        "migrate plan --transforms",
        "transforms",
    ),
    KeyList(
        "esctl migrate restore-pruned",
        r"The `--json` summary: (?P<keys>`[^`]*`)",
        "migrate restore-pruned",
    ),
    KeyList(
        "esctl migrate status", r"`--json`: (?P<keys>`app, [^`]*`); each shard", "migrate status"
    ),
    KeyList(
        "esctl migrate status",
        r"each shard has (?P<keys>`[^`]*`) \(`[^`]*`\), (?P<keys2>`[^`]*`); a lag",
        "migrate status",
        "shards[]",
    ),
    KeyList(
        "esctl migrate status",
        r"lock_holder` \((?P<keys>`[^`]*`)\)",
        "migrate status",
        "shards[].lock_holder",
    ),
    KeyList("esctl migrate status", r"a lag is (?P<keys>`[^`]*`)", "migrate status", "lag"),
    KeyList(
        "esctl migrate status", r"a lag is (?P<keys>`[^`]*`)", "migrate status", "shards[].lag"
    ),
    KeyList("esctl queue peek", r"\((?P<keys>`retry`): ", "queue peek", "messages[]"),
    KeyList("esctl queue peek", r"\(`retry`: (?P<keys>.*?)\)", "queue peek", "messages[].retry"),
    KeyList("esctl queue requeue", r"Summary \(`--json`\): (?P<keys>`[^`]*`)", "queue requeue"),
    KeyList(
        "esctl replay",
        r"Summary \(`--json`\): (?P<keys>`[^`]*`) \(subscriber → type → messages\), (?P<keys2>`[^`]*`)",
        "replay",
    ),
    KeyList(
        "esctl doctor",
        r"Its `--json` values: (?P<keys>.*?); its metrics",
        "doctor",
        "checks[id=pg.migration].values",
    ),
    KeyList("esctl compress", r"reported as (?P<keys>`gzip_header`) with `--json`", "compress"),
    KeyList(
        "Transforms",
        r"says what the rules did in this invocation: (?P<keys>`[^`]*`)",
        "migrate --transforms",
        "transforms",
    ),
    KeyList("Transforms", r"the summary's (?P<keys>`migrated_with_transforms`)", "migrate verify"),
    KeyList(
        "Transforms",
        r"The summary's `transforms` gives (?P<keys>`[^`]*`)",
        "replay --transforms",  # the replay's: it ran with rules
        "transforms",
    ),
    KeyList(
        "Transforms",
        r"counts it \((?P<keys>`aggregates_left_out_kept`)\)|\((?P<keys2>`aggregates_left_out_pruned`)\)",
        "migrate prune",
    ),
    *(
        KeyList("Commands", BOUNDED, run, not_keys=frozenset({"esctl.quarantine"}))
        for run in (
            "migrate",
            "migrate verify",
            "migrate restore-pruned",
            "inspect integrity",
            "replay",
        )
    ),
    *(
        KeyList(
            None,
            r"\(and `doctor`'s and `migrate status`'s\) carries the code as (?P<keys>`exit_code`)",
            run,
        )
        for run in ("doctor", "migrate status")
    ),
]
# "other summaries have no `exit_code`"
WITH_EXIT_CODE = {"doctor", "migrate status"}


def readme_sections() -> dict[str, str]:
    """The README's sections by heading (``esctl migrate status``), whitespace collapsed."""
    parts = re.split(r"^#{2,3} (.+)$", README.read_text(encoding="utf-8"), flags=re.M)
    return {
        heading: " ".join(body.split())
        for heading, body in zip(parts[1::2], parts[2::2], strict=True)
    }


def listed_keys(listed: KeyList, sections: dict[str, str]) -> list[str]:
    """The keys the README names in ``listed``'s passage (empty when it is not there)."""
    text = sections[listed.section] if listed.section else " ".join(sections.values())
    keys: list[str] = []
    for match in re.finditer(listed.passage, text):
        for group, found in match.groupdict().items():
            for span in re.findall(r"`([^`]*)`", found or "") if group.startswith("keys") else []:
                if '"' in span:
                    keys += re.findall(r'"([a-z_]\w*)"\s*[:,}]', span)
                elif re.fullmatch(r"[a-z_][\w.]*(?:, [a-z_][\w.]*)*", span):
                    keys += span.split(", ")
    return [k for k in dict.fromkeys(keys) if k not in listed.not_keys]


def json_runs(env: dict[str, str], names: dict[str, str], workdir: Path) -> dict[str, list[Any]]:
    """What each command whose JSON the README describes prints, run on the README's store:
    run name -> its documents (one, or each JSON line). Read-only or dry runs, but for a
    migration (as the README's first run) and a follower stopped after its first lines."""
    cwd = workdir / "json-keys"
    cwd.mkdir(exist_ok=True)
    (cwd / "rules.toml").write_text(
        '[[leave_out]]\nevent_type = "Envelope*"\n\n[[rename_assembly]]\n'
        'from = "Learning.ScoringService.Domain"\nto = "Learning.Scoring.Domain"\n'
    )
    app = ("--app", "MyService")
    aggregate = names["3f0c2a9e-0d1b-4c5e-9f8a-1b2c3d4e5f60"]
    stored = shlex.split(names["'H4sIAAAAAAAACq…'"])[0]
    store = redis.Redis.from_url(env["ESCTL_REDIS_URL"])
    dead = next(k for k in sorted(store.scan_iter(match="*:DeadLetters")) if store.llen(k))
    store.close()
    subscriber, _, rest = dead.decode().partition(":{production:")
    queue = [subscriber, rest.removesuffix("}:DeadLetters")]
    backup = cwd / "pruned.jsonl.zst"
    backup.unlink(missing_ok=True)
    _write_prune_backup(backup, "MyService")

    def documents(result: subprocess.CompletedProcess[str]) -> list[Any]:
        assert result.returncode in (0, 3), f"{shlex.join(result.args)}: {result.stderr[-600:]}"
        return json_documents(result.stdout)

    # The README's first run (the tables, and runs to report), then the others all at once.
    outputs = {
        "migrate": documents(
            run_cli("migrate", "redis-to-pg", "--init-schema", *app, "--json", env=env, cwd=cwd)
        )
    }
    lines = {
        "events decode": "events decode {stored}",
        "events query": "events query {app} --limit 3",
        "replay to stdout": "replay --from redis --all --to stdout {app}",
        "inspect aggregate": "inspect aggregate {aggregate} {app} --json",
        "inspect integrity": "inspect integrity {app} --json",
        # Into a schema of its own: the README store's was migrated without rules.
        "migrate --transforms": "migrate redis-to-pg --init-schema {app} --pg-schema readme_keys"
        " --transforms rules.toml --dry-run --json",
        "migrate verify": "migrate verify {app} --problems-file problems.jsonl --json",
        "migrate plan --transforms": "migrate plan {app} --transforms rules.toml --json",
        "migrate restore-pruned": "migrate restore-pruned {backup} {app} --dry-run --json",
        "migrate prune": "migrate prune {app} --dry-run --json",
        "queue peek": "queue peek {queue} {env} --list dead --json",
        "queue requeue": "queue requeue {queue} {env} --from dead --dry-run --json",
        "replay": "replay --from redis --all --to queue {app} {env} --dry-run"
        " --transforms rules.toml --json",
        "doctor": "doctor {app} {env} --json",
        "compress": "compress {app} --dry-run --json",
    }
    values = {
        "app": "--app MyService",
        "env": "--env production",
        "queue": shlex.join(queue),
        "stored": shlex.quote(stored),
        "aggregate": shlex.quote(aggregate),
        "backup": shlex.quote(str(backup)),
    }
    commands = {name: shlex.split(line.format(**values)) for name, line in lines.items()}
    # A follower meanwhile, stopped as a service is; migrate status while it runs shows its
    # lock holder.
    follower = start_cli("migrate", "redis-to-pg", *app, "--follow", "--json", env=env, cwd=cwd)
    with ThreadPoolExecutor(max_workers=1) as pool:
        together = pool.submit(run_cli_together, list(commands.values()), env=env, cwd=cwd)
        try:
            assert follower.stdout is not None
            first = follower.stdout.readline()
            outputs["migrate status"] = documents(
                run_cli("migrate", "status", *app, "--lag", "--json", env=env, cwd=cwd)
            )
        finally:
            follower.send_signal(signal.SIGTERM)
            rest_out, _ = follower.communicate(timeout=TIMEOUT)
        outputs["migrate --follow"] = json_documents((first + rest_out).decode())
        outputs |= dict(zip(commands, map(documents, together.result()), strict=True))
    outputs["replay --transforms"] = outputs["replay"]
    outputs["migrate verify --problems-file"] = json_documents(
        (cwd / "problems.jsonl").read_text(encoding="utf-8")
    )
    return outputs


def _write_prune_backup(path: Path, app: str) -> None:
    """A prune backup of one aggregate the store does not hold (two events), as prune writes it."""
    from esctl import layout
    from esctl.backupfile import BackupWriter

    writer = BackupWriter(path, option="--backup-file", nothing_done="")
    aggregate_id = "00000000-0000-4000-8000-0000000000aa"
    lines = []
    for index in range(2):
        commit_id = f"00000000-{index:04d}-4000-8000-0000000000aa"
        lines.append(
            {
                "app": app,
                "aggregate_id": aggregate_id,
                "list_key": layout.commit_list_prefix(app) + aggregate_id,
                "index": index,
                "list_length": 2,
                "commit_id": commit_id,
                "hash_key": layout.event_hash_key_for_partition(app, layout.partition(commit_id)),
                "version": index + 1,
                "value": f'{{"Id":"{aggregate_id}","Version":{index + 1}}}',
            }
        )
    writer.write_frame(lines)
    writer.close()


def test_every_json_key_the_readme_lists_is_in_the_commands_output(
    readme_env: tuple[dict[str, str], dict[str, str], Path],
) -> None:
    """Each key the README names for a command's --json output (its lists of keys, in prose)
    is there, where the README says, in that command's output on the README's store; and only
    the documents the README says carry ``exit_code`` do."""
    env, names, workdir = readme_env
    sections = readme_sections()
    outputs = json_runs(env, names, workdir)
    wrong = []
    for listed in KEY_LISTS:
        keys = listed_keys(listed, sections)
        if not keys:
            wrong.append(f"README, {listed.section}: no list of keys matches {listed.passage!r}")
        for key in keys:
            if why := missing(outputs[listed.run], f"{listed.at}.{key}".lstrip(".")):
                wrong.append(f"README, {listed.section}: {listed.run}: {why}")
    for run, documents in outputs.items():
        has = any(isinstance(d, dict) and "exit_code" in d for d in documents)
        if has != (run in WITH_EXIT_CODE):
            wrong.append(f"{run}: exit_code {'present' if has else 'absent'}, unlike the README")
    assert not wrong, "\n".join(wrong)
