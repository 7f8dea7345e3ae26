"""esctl.metrics: the Prometheus text exposition renderer and the atomic textfile writer."""

from __future__ import annotations

import stat
from pathlib import Path

import promtext
import pytest

from esctl.errors import EsctlError
from esctl.metrics import Metric, format_value, render, write_textfile

HELP = {"a_total": "Things counted.", "b_seconds": "How long."}


def test_help_and_type_once_per_name_in_order_of_first_sample() -> None:
    text = render(
        [
            Metric("b_seconds", 1.25, {"job": "x"}),
            Metric("a_total", 3),
            Metric("b_seconds", 2, {"job": "y"}),
        ],
        HELP,
    )
    assert text == (
        "# HELP b_seconds How long.\n"
        "# TYPE b_seconds gauge\n"
        'b_seconds{job="x"} 1.25\n'
        'b_seconds{job="y"} 2\n'
        "# HELP a_total Things counted.\n"
        "# TYPE a_total gauge\n"
        "a_total 3\n"
    )


def test_labels_are_sorted_escaped_and_one_sample_per_label_set() -> None:
    weird = 'A "quoted" \\ name\nnext'
    text = render(
        [
            Metric("a_total", 1, {"sub": weird, "env": "e"}),
            Metric("a_total", 2, {"env": "e", "sub": weird}),  # the same series again: left out
            Metric("a_total", 3, {"env": "f", "sub": weird}),
        ],
        HELP,
    )
    samples = [line for line in text.splitlines() if not line.startswith("#")]
    assert samples == [
        'a_total{env="e",sub="A \\"quoted\\" \\\\ name\\nnext"} 1',
        'a_total{env="f",sub="A \\"quoted\\" \\\\ name\\nnext"} 3',
    ]


def test_a_name_without_help_is_a_programming_error() -> None:
    with pytest.raises(KeyError):
        render([Metric("c_unknown", 1)], HELP)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (3, "3"),
        (True, "1"),
        (False, "0"),
        (12.0, "12"),
        (12.5, "12.5"),
        (600.000, "600"),
        (0.0001, "0.0001"),
        (-2, "-2"),
        (float("nan"), "NaN"),
        (float("inf"), "+Inf"),
        (float("-inf"), "-Inf"),
        (1767225600.123, "1767225600.123"),
    ],
)
def test_values(value: float, text: str) -> None:
    assert format_value(value) == text


def test_textfile_replaces_the_old_one_world_readable(tmp_path: Path) -> None:
    target = tmp_path / "esctl.prom"
    target.write_text("old")
    target.chmod(0o600)
    write_textfile(target, "a_total 1\n")
    assert target.read_text() == "a_total 1\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["esctl.prom"]


def test_textfile_in_a_missing_folder_names_the_file(tmp_path: Path) -> None:
    target = tmp_path / "missing" / "esctl.prom"
    with pytest.raises(EsctlError, match=r"cannot write the metrics file .*esctl\.prom"):
        write_textfile(target, "a_total 1\n")


# --- the strict reader the textfile tests check with (tests/promtext.py) ---------------------


def test_the_reader_takes_what_render_writes() -> None:
    weird = 'A "quoted" \\ name\nnext'
    text = render(
        [Metric("b_seconds", 1.25, {"job": weird}), Metric("a_total", float("nan"))], HELP
    )
    families = promtext.parse(text)
    assert list(families) == ["b_seconds", "a_total"]
    assert families["b_seconds"].help == "How long." and families["b_seconds"].type == "gauge"
    assert families["b_seconds"].samples == {(("job", weird),): 1.25}


@pytest.mark.parametrize(
    ("text", "refusal"),
    [
        ("# HELP a_total x\n# HELP a_total y\na_total 1\n", "second HELP"),
        ("# TYPE a_total gauge\n# TYPE a_total gauge\na_total 1\n", "second TYPE"),
        ("a_total 1\n# TYPE a_total gauge\n", "after its samples"),
        ('a_total{x="1"} 1\nb_total 1\na_total{x="2"} 1\n', "not together"),
        ('a_total{x="1"} 1\na_total{x="1"} 2\n', "a second time"),
        ('a_total{x="1",x="2"} 1\n', "label x twice"),
        ('a_total{x="\\t"} 1\n', "bad escape"),
        ("a_total{x=1} 1\n", "not quoted"),
        ('a_total{x="1"', "no newline"),
        ('a_total{x="1" 1\n', "expected ','"),
        ("a_total one\n", "bad value"),
        ("a-total 1\n", "no blank before the value"),
    ],
)
def test_the_reader_refuses_what_the_format_does(text: str, refusal: str) -> None:
    with pytest.raises(promtext.FormatError, match=refusal):
        promtext.parse(text)


def test_merged_textfiles_may_not_share_a_series() -> None:
    """node_exporter's collector refuses a series that two files of its folder hold, with the
    labels a series lacks counted as empty; other label values, or more labels, are apart."""
    a = '# HELP a_total x\n# TYPE a_total gauge\na_total{app="A",check="c"} 1\n'
    b = '# HELP a_total x\n# TYPE a_total gauge\na_total{app="B",check="c"} 1\na_total{check="c"} 0\n'
    assert len(promtext.merge([("a", a), ("b", b)])["a_total"].samples) == 3
    with pytest.raises(promtext.FormatError, match=r"is in a and in b: a duplicate series"):
        promtext.merge([("a", a), ("b", a.replace('app="A",', 'app="A", '))])
    with pytest.raises(promtext.FormatError, match="duplicate series"):
        promtext.merge(
            [
                ("b", b),
                ("c", '# HELP a_total x\n# TYPE a_total gauge\na_total{app="",check="c"} 2\n'),
            ]
        )
    with pytest.raises(promtext.FormatError, match="HELP or TYPE differs"):
        promtext.merge(
            [("a", a), ("c", a.replace("HELP a_total x", "HELP a_total y").replace('"A"', '"C"'))]
        )
