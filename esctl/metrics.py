"""Prometheus samples, their text exposition format and the atomic write of a textfile for
node_exporter's textfile collector (``queue list --metrics-file``, ``doctor --metrics-file``)."""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from esctl.errors import EsctlError


@dataclass
class Metric:
    """One sample of a gauge: ``name{labels} value``."""

    name: str
    value: float
    labels: dict[str, str] = field(default_factory=dict)


def render(samples: Iterable[Metric], help_texts: Mapping[str, str]) -> str:
    """The samples in the text exposition format: per metric name (in the order names first
    appear) one HELP line (from ``help_texts``, which must know every name) and one TYPE line
    (``gauge``), then its samples, labels sorted by name. A sample repeating the name and
    label set of an earlier one is left out (the format allows one per series)."""
    by_name: dict[str, list[Metric]] = {}
    for sample in samples:
        by_name.setdefault(sample.name, []).append(sample)
    lines: list[str] = []
    for name, group in by_name.items():
        lines.append(f"# HELP {name} {help_texts[name]}")
        lines.append(f"# TYPE {name} gauge")
        seen: set[tuple[tuple[str, str], ...]] = set()
        for sample in group:
            labels = tuple(sorted(sample.labels.items()))
            if labels in seen:
                continue
            seen.add(labels)
            text = ",".join(f'{k}="{escape_label(v)}"' for k, v in labels)
            series = f"{name}{{{text}}}" if text else name
            lines.append(f"{series} {format_value(sample.value)}")
    return "\n".join(lines) + "\n"


def escape_label(value: str) -> str:
    """A label value as the format quotes it: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_value(value: float) -> str:
    """Whole numbers without a decimal point (``3``, not ``3.0``), others as Python's shortest
    exact form (``12.5``), and the format's own spelling of NaN and the infinities."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    number = float(value)
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "+Inf" if number > 0 else "-Inf"
    if number.is_integer():
        return str(int(number))
    return repr(number)


def write_textfile(path: str | Path, text: str) -> None:
    """Replace ``path`` atomically (temporary file in the same folder, fsync, rename), so the
    textfile collector never reads half a file. The file is world-readable (0644)."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise EsctlError(
            f"cannot write the metrics file {target}: {exc.strerror}",
            hint="check that the folder exists and is writable",
        ) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
