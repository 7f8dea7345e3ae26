"""The README's examples, run as written: every ``esctl`` command line of its ``sh`` blocks, in
README order, through bash with ``pipefail`` (so ``… | jq`` counts), against a demo store written
as app ``MyService`` and env ``production``. So is the projection guide's (docs/projections.md):
its Python files written as their first line names them, then its commands.

Only the names the README makes up are swapped for the store's (its aggregate ids, commit id,
subscriber names, file paths under /backups and /var; ``--grace 2m`` waits 1 s, and a follower
run under ``timeout … 8h`` is stopped with its SIGTERM after 3 s); options and pipelines stay as
printed.
Lines that need what a test must not touch (a cluster at a private address, ``pip``, a developer's
shell) are left out, each with its reason in ``SKIPPED``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, suppress
from pathlib import Path

import pytest
import redis
import redis_bytes as rb
from helpers import cli_env

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
    with it (an exit other than 0 and 3, a traceback, a field jq found null), or None."""
    # One pass, longest name first: a replacement is never replaced again.
    pattern = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    command = re.sub(pattern, lambda m: names[m.group(0)], written)
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
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
    if not problems:
        return None
    return (
        f"{written}\n  ran: {command}\n  {', '.join(problems)}\n"
        f"  stderr: {result.stderr.strip()[-600:]}\n  stdout: {result.stdout[:300]}"
    )


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
