"""The Redis group: its per-server checks in report order (:data:`REDIS_CHECKS`), each run
on every server read (a cluster's primaries) and combined into one check (:func:`combine`)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import redis.cluster

from esctl import redisio
from esctl.doctor.redis_facts import ServerFacts
from esctl.doctor.redis_memory_checks import (
    DataPresence,
    check_aof_rewrite,
    check_appendfsync,
    check_fragmentation,
    check_maxmemory,
    check_maxmemory_policy,
    check_persistence,
)
from esctl.doctor.redis_server_checks import (
    REACHABLE,
    check_cluster,
    check_latency,
    check_latency_monitor,
    check_reachable,
    check_role,
    check_slowlog,
    check_version,
)
from esctl.doctor.report import SEVERITY, SPECS, Check, Status, guarded, unavailable
from esctl.metrics import Metric

REDIS_CHECKS: tuple[tuple[str, Callable[..., Check]], ...] = (
    ("redis.reachable", check_reachable),
    ("redis.version", check_version),
    ("redis.role", check_role),
    ("redis.maxmemory_policy", check_maxmemory_policy),
    ("redis.maxmemory", check_maxmemory),
    ("redis.persistence", check_persistence),
    ("redis.appendfsync", check_appendfsync),
    ("redis.aof_rewrite", check_aof_rewrite),
    ("redis.latency_monitor", check_latency_monitor),
    ("redis.latency", check_latency),
    ("redis.slowlog", check_slowlog),
    ("redis.fragmentation", check_fragmentation),
)
"""The Redis group's per-server checks, in report order (``redis.cluster`` follows them on a
cluster node). ``redis.maxmemory_policy`` also gets the :class:`DataPresence`."""


def combine(check_id: str, results: Sequence[tuple[str, Check]]) -> Check:
    """One check over several servers (a cluster's primaries): the worst status; the servers'
    observations worst first, servers that saw the same thing named together; the worst
    finding's action naming the servers it is about (``on every primary`` when it is all of
    them); every server's status in ``servers`` and its metrics (labelled ``server``)."""
    for name, check in results:
        for metric in check.metrics:
            metric.labels.setdefault("server", name)
    if len(results) == 1:
        return results[0][1]
    ordered = sorted(results, key=lambda r: -SEVERITY[r[1].status])  # stable: worst first
    worst = ordered[0][1]
    seen: dict[tuple[Status, str], list[str]] = {}
    for name, check in ordered:
        seen.setdefault((check.status, check.observed), []).append(name)
    observed = "; ".join(f"{', '.join(names)}: {text}" for (_, text), names in seen.items())
    action = worst.action
    if action is not None and worst.status != "ok":
        concerned = [name for name, c in results if c.status == worst.status]
        where = "every primary" if len(concerned) == len(results) else ", ".join(concerned)
        action = f"on {where}: {action}"
    spec = SPECS[check_id]
    return Check(
        check_id,
        spec.title,
        worst.status,
        observed,
        spec.why,
        action,
        {name: c.values for name, c in results},
        [f"{name}: {d}" for name, c in ordered for d in c.details],
        [m for _, c in results for m in c.metrics],
        {name: c.status for name, c in results},
    )


def redis_unavailable(reason: str) -> list[Check]:
    """Every Redis check but ``redis.reachable``, unavailable for ``reason``."""
    return [unavailable(check_id, reason) for check_id, _ in REDIS_CHECKS[1:]]


def run_redis_checks(
    client: redisio.RedisClient, facts: dict[str, ServerFacts | str], presence: DataPresence
) -> list[Check]:
    """Each of :data:`REDIS_CHECKS` on every server in ``facts`` (what was read from it, or why
    it could not be read), combined over the servers; ``redis.cluster`` too when a server is a
    cluster node."""
    checks: list[Check] = []
    for check_id, evaluate in REDIS_CHECKS:
        results: list[tuple[str, Check]] = []
        for name, f in facts.items():
            if isinstance(f, str):
                results.append(
                    (name, _unreachable_node(check_id, name, f, one_of_many=len(facts) > 1))
                )
                continue
            args = (f, presence) if evaluate is check_maxmemory_policy else (f,)
            results.append((name, guarded(check_id, functools.partial(evaluate, *args))))
        checks.append(combine(check_id, results))
    if any(isinstance(f, ServerFacts) and f.in_cluster for f in facts.values()):
        through_cluster = isinstance(client, redis.cluster.RedisCluster)
        evaluate_cluster = functools.partial(check_cluster, through_cluster_client=through_cluster)
        checks.append(
            combine(
                "redis.cluster",
                [
                    (name, _unreachable_node("redis.cluster", name, f, one_of_many=True))
                    if isinstance(f, str)
                    else (name, guarded("redis.cluster", functools.partial(evaluate_cluster, f)))
                    for name, f in facts.items()
                ],
            )
        )
    return checks


def _unreachable_node(check_id: str, name: str, error: str, *, one_of_many: bool) -> Check:
    """A server that could not be read. Among a cluster's primaries :func:`combine` puts the
    node's name in front; a single server is named here."""
    if check_id != "redis.reachable":
        return unavailable(check_id, "Redis unreachable")
    return REACHABLE.result(
        "fail",
        error if one_of_many else f"{name}: {error}",
        action="check that the server runs and answers (a cluster primary that stays down "
        "is failed over to its replica, if it has one)",
        metrics=[Metric("esctl_doctor_redis_up", 0)],
    )
