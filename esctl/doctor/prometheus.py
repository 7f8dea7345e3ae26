"""The report as Prometheus samples, in the textfile that ``doctor --metrics-file`` writes
(rendered by :mod:`esctl.metrics`); each metric's HELP comes from the spec of the check that
emits it."""

from __future__ import annotations

from datetime import datetime

from esctl.doctor.report import SPECS, STATUS_VALUE, STATUSES, DoctorReport
from esctl.metrics import Metric, render, write_textfile

REPORT_METRIC_HELP = {
    "esctl_doctor_check_status": "Status of a doctor check: 0 ok, 1 warn, 2 fail, -1 unavailable.",
    "esctl_doctor_checks": "Doctor checks per status.",
    "esctl_doctor_timestamp_seconds": "When esctl doctor ran.",
    "esctl_doctor_duration_seconds": "How long esctl doctor took.",
}
"""HELP of the report's own metrics; each check's come from its spec."""


def metric_help() -> dict[str, str]:
    """The HELP text of every metric doctor emits: the report's own and each check's."""
    help_texts = dict(REPORT_METRIC_HELP)
    for spec in SPECS.values():
        help_texts.update(spec.metrics)
    return help_texts


def report_scope(report: DoctorReport) -> dict[str, str]:
    """The labels every sample of the report carries: ``app`` and ``env``, those the run was
    given (a label left out, never empty). Two doctor jobs of other apps or environments (an
    --env job every minute, an --app job hourly) then write textfiles that one node_exporter
    collects side by side: no series in both (the collector refuses a duplicate), and an alert
    says which app and environment it is about."""
    return {k: v for k, v in (("app", report.app), ("env", report.env)) if v}


def report_metrics(report: DoctorReport) -> list[Metric]:
    """Every figure of the report as Prometheus samples, each labelled with the report's
    scope (:func:`report_scope`): each check's status, the counts per status, when and how
    long, and each check's own figures."""
    scope = report_scope(report)
    out = [
        Metric(
            "esctl_doctor_check_status",
            STATUS_VALUE[c.status],
            scope | {"check": c.id, "group": c.group},
        )
        for c in report.checks
    ]
    counts = report.counts()
    out += [Metric("esctl_doctor_checks", counts[s], scope | {"status": s}) for s in STATUSES]
    generated = datetime.fromisoformat(report.generated_at).timestamp()
    out.append(Metric("esctl_doctor_timestamp_seconds", round(generated, 3), dict(scope)))
    out.append(Metric("esctl_doctor_duration_seconds", round(report.elapsed_s, 3), dict(scope)))
    for check in report.checks:
        # A check's own app or env label (the store's, the queues') is the report's.
        out += [Metric(m.name, m.value, scope | m.labels) for m in check.metrics]
    return out


def render_prometheus(report: DoctorReport) -> str:
    """The Prometheus text exposition format (node_exporter's textfile collector): one HELP and
    TYPE line per metric name, then its samples."""
    return render(report_metrics(report), metric_help())


def write_metrics_file(path: str, report: DoctorReport) -> None:
    """Write the report's metrics to ``path`` atomically (temporary file, fsync, rename)."""
    write_textfile(path, render_prometheus(report))
