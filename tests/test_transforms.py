"""esctl.transforms: the rules file and the engine, pure (no server). One rule of each kind,
``$type`` renames that touch nothing but ``$type`` values, renumbering after leave-out and
split, failures that quarantine the whole aggregate, malformed rules files."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esctl import codec
from esctl.errors import UsageError
from esctl.transforms import (
    Numbering,
    SourceEvent,
    load_rules,
    transform_stream,
    typenames,
)
from esctl.transforms.typenames import name_spans, rename_names

ASM = "Learning.ScoringService.Domain"
NS = f"{ASM}.Events"
LIST = "System.Collections.Generic.List`1"


def payload(cls: str, version: int, aggregate_id: str = "agg-1", **fields: Any) -> str:
    document = {
        "$type": f"{NS}.{cls}, {ASM}",
        "Id": aggregate_id,
        "TimeStamp": f"2024-03-0{1 + version % 9}T10:00:00.1234567+00:00",
        "Version": version,
        "AggregateType": "ItemScore",
        **fields,
    }
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"))


def stream(*classes: str, **fields: Any) -> list[SourceEvent]:
    return [SourceEvent(f"c{v}", v, payload(cls, v, **fields)) for v, cls in enumerate(classes, 1)]


def rules_file(tmp_path: Path, text: str, name: str = "rules.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def run(tmp_path: Path, text: str, events: list[SourceEvent], **kw: Any) -> Any:
    rules = load_rules(rules_file(tmp_path, text))
    return transform_stream(rules.rules, "agg-1", events, **kw)


def checked_texts(outcome: Any) -> list[tuple[int, str]]:
    """(version, text) of each event of a transform_checked outcome, whichever path."""
    if outcome.plain is not None:
        return [(version, raw.decode()) for _, version, _, raw in zip(*outcome.plain, strict=True)]
    return [(e.version, e.text) for e in outcome.events]


def assert_loadable(outcome: Any, first: int = 1) -> None:
    """Versions consecutive from ``first``, each payload's Version the same."""
    versions = [e.version for e in outcome.events]
    assert versions == list(range(first, first + len(versions)))
    assert [json.loads(e.text)["Version"] for e in outcome.events] == versions


# --- one rule of each kind ------------------------------------------------------------------


def test_leave_out_by_event_type_renumbers_and_keeps_the_rest_exact(tmp_path: Path) -> None:
    events = stream("Created", "Viewed", "Updated", "ViewedTwice", "Updated", Note='é "q"')
    outcome = run(tmp_path, '[[leave_out]]\nevent_type = "Viewed*"\n', events)
    assert outcome.failure is None
    assert [e.event_type for e in outcome.events] == ["Created", "Updated", "Updated"]
    assert_loadable(outcome)
    assert [e.source_version for e in outcome.events] == [1, 3, 5]
    assert outcome.mapping == [(1, (1,)), (2, ()), (3, (2,)), (4, ()), (5, (3,))]
    assert outcome.left_out == 2
    assert outcome.events[0].text == events[0].text  # version unchanged: the exact text
    assert outcome.events[1].text == events[2].text.replace('"Version":3', '"Version":2')
    assert outcome.numbering == Numbering(5, 3)


def test_leave_out_by_aggregate_type_drops_the_whole_aggregate(tmp_path: Path) -> None:
    outcome = run(tmp_path, '[[leave_out]]\naggregate_type = "Item*"\n', stream("A", "B"))
    assert outcome.failure is None and outcome.events == []
    assert outcome.numbering == Numbering(2, 0) and outcome.left_out == 2


def test_leave_out_with_both_keys_takes_events_of_that_type_in_that_aggregate_type(
    tmp_path: Path,
) -> None:
    text = '[[leave_out]]\nevent_type = "Viewed"\naggregate_type = "{}"\n'
    events = stream("Created", "Viewed")
    kept = run(tmp_path, text.format("Item*"), events).events
    assert [e.event_type for e in kept] == ["Created"]
    assert [e.event_type for e in run(tmp_path, text.format("Order"), events).events] == [
        "Created",
        "Viewed",
    ]


def test_rename_type_changes_the_event_type_and_only_the_top_level_type(tmp_path: Path) -> None:
    nested = {"$type": f"{NS}.ItemScoreCreated, {ASM}", "X": 1}
    events = stream("ItemScoreCreated", Inner=nested)
    rules = (
        f'[[rename_type]]\nfrom = "{NS}.ItemScoreCreated"\nto = "Learning.Scoring.ScoreCreated"\n'
    )
    outcome = run(tmp_path, rules, events)
    (event,) = outcome.events
    assert event.event_type == "ScoreCreated"
    data = json.loads(event.text)
    assert data["$type"] == f"Learning.Scoring.ScoreCreated, {ASM}"
    assert data["Inner"] == nested
    assert event.text == events[0].text.replace(
        f"{NS}.ItemScoreCreated, {ASM}", f"Learning.Scoring.ScoreCreated, {ASM}", 1
    )


NESTED: dict[str, Any] = {
    "Rubric": {
        "$type": f"{ASM}.Models.Rubric, {ASM}",
        "Criteria": {
            "$type": f"{LIST}[[{NS}.Criterion, {ASM}]], mscorlib",
            "$values": [{"$type": f"{NS}.Criterion, {ASM}", "Name": f"{NS}.Criterion, {ASM}"}],
        },
        "Map": {
            "$type": "System.Collections.Generic.Dictionary`2[[System.String, mscorlib],"
            f"[{NS}.Sub.Level[], {ASM}, Version=1.0.0.0, Culture=neutral, PublicKeyToken=null]]"
            ", mscorlib",
        },
        "Other": {"$type": f"{NS}X.NotThis, {ASM}Y"},
    },
    "Note": f'"$type":"{NS}.Fake, {ASM}" and {ASM} in text',
}


def test_rename_namespace_reaches_nested_values_and_generic_arguments(tmp_path: Path) -> None:
    events = stream("Created", **NESTED)
    rules = f'[[rename_namespace]]\nfrom = "{NS}"\nto = "Learning.Scoring.Events"\n'
    (event,) = run(tmp_path, rules, events).events
    expected = events[0].text.replace(f"{NS}.", "Learning.Scoring.Events.")
    # ... but not the text that merely looks like a $type
    expected = expected.replace(
        '"Name":"Learning.Scoring.Events.Criterion', f'"Name":"{NS}.Criterion'
    )
    expected = expected.replace(
        '\\"$type\\":\\"Learning.Scoring.Events.Fake', f'\\"$type\\":\\"{NS}.Fake'
    )
    assert event.text == expected
    data = json.loads(event.text)
    assert data["Rubric"]["Other"] == NESTED["Rubric"]["Other"]  # a prefix, not a namespace
    assert data["Note"] == NESTED["Note"]
    assert event.event_type == "Created"


def test_rename_assembly_everywhere_but_in_other_text(tmp_path: Path) -> None:
    events = stream("Created", **NESTED)
    rules = f'[[rename_assembly]]\nfrom = "{ASM}"\nto = "Learning.Scoring.Domain"\n'
    (event,) = run(tmp_path, rules, events).events
    data = json.loads(event.text)
    assert data["$type"] == f"{NS}.Created, Learning.Scoring.Domain"
    criteria = data["Rubric"]["Criteria"]
    assert criteria["$type"] == f"{LIST}[[{NS}.Criterion, Learning.Scoring.Domain]], mscorlib"
    assert criteria["$values"][0] == {
        "$type": f"{NS}.Criterion, Learning.Scoring.Domain",
        "Name": f"{NS}.Criterion, {ASM}",
    }
    assert data["Rubric"]["Map"]["$type"].endswith(
        "Learning.Scoring.Domain, Version=1.0.0.0, Culture=neutral, PublicKeyToken=null]], mscorlib"
    )
    assert data["Rubric"]["Other"] == NESTED["Rubric"]["Other"]
    assert data["Note"] == NESTED["Note"]
    assert list(data) == list(json.loads(events[0].text))  # key order kept


def test_upcast_renames_removes_and_defaults_fields(tmp_path: Path) -> None:
    lines = {"$type": f"{LIST}[[X, A]], mscorlib", "$values": [{"Sku": "a"}, {"Sku": "b"}]}
    events = stream("Updated", "Created", Comment="c", Attempts=3, Score=7, Lines=lines)
    rules = """
[[upcast]]
event_type = "Updated"
rename = { Comment = "Remark", "Lines.Sku" = "Code" }
remove = ["Attempts", "Nope"]
default = { Reviewed = false, Score = 0, "Lines.Qty" = 1 }
"""
    updated, created = run(tmp_path, rules, events).events
    data = json.loads(updated.text)
    assert list(data) == ["$type", "Id", "TimeStamp", "Version", "AggregateType", "Remark",
                          "Score", "Lines", "Reviewed"]  # fmt: skip
    assert data["Remark"] == "c" and data["Score"] == 7 and data["Reviewed"] is False
    assert data["Lines"]["$values"] == [{"Code": "a", "Qty": 1}, {"Code": "b", "Qty": 1}]
    assert created.text == events[1].text  # another type: untouched


def test_python_callable_splits_and_leaves_out(tmp_path: Path) -> None:
    (tmp_path / "splitting.py").write_text(
        """
def split(event):
    if event.event_type == "Dropped":
        return None
    if event.event_type != "Lessons":
        return event
    out = []
    for lesson in event.data["Lessons"]:
        data = {k: v for k, v in event.data.items() if k != "Lessons"}
        data["$type"] = data["$type"].replace(".Lessons,", ".LessonAdded,")
        data["Lesson"] = lesson
        out.append(data)
    return out
""",
        encoding="utf-8",
    )
    events = stream("Created", "Lessons", "Dropped", "Updated", Lessons=["a", "b", "c"])
    outcome = run(tmp_path, '[[python]]\ncallable = "splitting:split"\n', events)
    assert outcome.failure is None
    assert [e.event_type for e in outcome.events] == [
        "Created", "LessonAdded", "LessonAdded", "LessonAdded", "Updated",
    ]  # fmt: skip
    assert [json.loads(e.text).get("Lesson") for e in outcome.events[1:4]] == ["a", "b", "c"]
    assert_loadable(outcome)
    assert outcome.mapping == [(1, (1,)), (2, (2, 3, 4)), (3, ()), (4, (5,))]
    assert outcome.events[0].text == events[0].text  # returned unchanged: the exact text
    assert {e.commit_id for e in outcome.events[1:4]} == {"c2"}


_CALLABLES = {
    "identity": "return event",
    "the mapping back": "return event.data",
    "twice": "return [event, event]",
    "changed in place": "event.data['Note'] = 'changed'\n    return event",
    "version in place": "event.data['Version'] = 7\n    return event",
    "timestamp in place": (
        "event.data['TimeStamp'] = '2025-01-01T00:00:00.0000000+00:00'\n    return event"
    ),
    "type in place": (
        "event.data['$type'] = event.data['$type'].replace('.Created,', '.Made,')\n    return event"
    ),
    "nested in place": "event.data['Inner']['Deep'] = 1\n    return event",
    "a copy, changed": "return dict(event.data, Extra=True)",
    # (migrate's path gives the text as bytes, made a str when read: the test compares it)
    "its text read": "read.append(event.text)\n    return event",
}


@pytest.mark.parametrize("name", list(_CALLABLES))
@pytest.mark.parametrize("spaced", [False, True])
def test_callables_on_migrates_path_equal_the_text_path(
    tmp_path: Path, name: str, spaced: bool
) -> None:
    """transform_checked (migrate's path, parsed payloads given away) gives what
    transform_stream gives for a callable that returns its event unchanged, twice, or
    changed in place (the envelope, nested fields) or as a copy; an event returned unchanged
    keeps its stored bytes."""
    from esctl.streams import clean_payloads
    from esctl.transforms import transform_checked

    body = _CALLABLES[name]
    module = f"callable_{name.replace(' ', '_').replace(',', '')}"
    source = f"read = []\n\ndef f(event):\n    {body}\n"
    (tmp_path / f"{module}.py").write_text(source, encoding="utf-8")
    rules = load_rules(rules_file(tmp_path, f'[[python]]\ncallable = "{module}:f"\n')).rules
    sys.modules[module].read.clear()  # (the module stays imported from the last parameters)
    separators = (", ", ": ") if spaced else (",", ":")
    events = [
        SourceEvent(
            e.commit_id,
            e.version,
            json.dumps(json.loads(e.text), ensure_ascii=False, separators=separators),
        )
        for e in stream("Created", "Updated", "Created", Note="é", Inner={"A": 1})
    ]
    expected = transform_stream(rules, "agg-1", events)
    for _ in range(2):
        clean = clean_payloads("agg-1", [e.text.encode() for e in events])
        assert clean is not None
        checked = transform_checked(rules, "agg-1", [e.commit_id for e in events], clean[1])
        assert checked.failure is None and expected.failure is None
        assert checked_texts(checked) == [(e.version, e.text) for e in expected.events]
        assert [e.type_name for e in checked.events] == [
            json.loads(e.text)["$type"] for e in expected.events
        ]
        assert [e.timestamp for e in checked.events] == [e.timestamp for e in expected.events]
        assert checked.numbering == expected.numbering
        sources = {e.commit_id: e.text for e in events}
        for e in checked.events:  # (a Version set and renumbered back: rewritten, equal)
            assert e.text == sources[e.commit_id] or not e.unchanged
            assert (e.utf8() is e.payload) == e.unchanged
        if name in ("identity", "the mapping back", "its text read"):  # the stored bytes
            assert all(e.unchanged for e in checked.events)
    read = sys.modules[module].read  # by transform_stream, then twice by transform_checked
    assert read == ([[e.text for e in events] * 3] if name == "its text read" else [[]])[0]
    assert all(type(text) is str for text in read)


def test_rules_apply_in_the_order_written(tmp_path: Path) -> None:
    events = stream("Viewed", "Created")
    rename = f'[[rename_type]]\nfrom = "{NS}.Viewed"\nto = "Ns.Seen"\n'
    leave = '[[leave_out]]\nevent_type = "Viewed"\n'
    assert [e.event_type for e in run(tmp_path, rename + leave, events).events] == [
        "Seen",
        "Created",
    ]
    assert [e.event_type for e in run(tmp_path, leave + rename, events).events] == ["Created"]


# --- failures -------------------------------------------------------------------------------


def test_a_missing_field_quarantines_the_whole_aggregate(tmp_path: Path) -> None:
    events = stream("Updated", "Updated", "Updated")
    events[1] = SourceEvent("c2", 2, payload("Updated", 2, Comment="x"))
    rules = '[[leave_out]]\nevent_type = "Nothing"\n[[upcast]]\nevent_type = "Updated"\n'
    rules += 'rename = { Comment = "Remark" }\n'
    outcome = run(tmp_path, rules, events, numbering=Numbering(0, 0))
    assert outcome.events == [] and outcome.mapping == []
    assert outcome.numbering == Numbering(0, 0)
    failure = outcome.failure
    assert failure is not None and failure.kind == "transform_failed"
    assert failure.rule == "[[upcast]] #1 (line 3)"
    assert "'Comment'" in failure.error
    assert failure.commit_id == "c1" and failure.stored == events[0].text
    problem = failure.as_problem()
    assert problem.kind == "transform_failed" and "[[upcast]] #1" in problem.detail


@pytest.mark.parametrize(
    "upcast",
    [
        'remove = ["TimeStamp"]\ndefault = { TimeStamp = "yesterday" }',
        'rename = { TimeStamp = "When" }\ndefault = { TimeStamp = "2024-01-01" }',
    ],
)
def test_an_upcast_that_leaves_no_datetimeoffset_timestamp_quarantines_the_aggregate(
    tmp_path: Path, upcast: str
) -> None:
    """The row needs the TimeStamp as a DateTimeOffset: a rule that puts anything else there
    fails the aggregate, named, like a failing callable (it was a crash of the whole run)."""
    events = stream("Updated", Comment="c")
    outcome = run(tmp_path, f'[[upcast]]\nevent_type = "Updated"\n{upcast}\n', events)
    assert outcome.events == []
    failure = outcome.failure
    assert failure is not None and failure.rule == "[[upcast]] #1 (line 1)"
    assert "not a DateTimeOffset" in failure.error, failure.error


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("    raise KeyError('Lessons')", "raised KeyError: 'Lessons'"),
        ("    return 42", "returned int"),
        ("    return dict(event.data, Id='other')", "an event cannot move to another aggregate"),
        ("    return dict(event.data, TimeStamp='yesterday')", "not a DateTimeOffset"),
    ],
)
def test_a_failing_callable_quarantines_the_aggregate(
    tmp_path: Path, body: str, message: str
) -> None:
    module = "failing_" + re.sub(r"\W", "_", tmp_path.name)  # one module per case
    (tmp_path / f"{module}.py").write_text(f"def f(event):\n{body}\n", encoding="utf-8")
    events = stream("A", "B")
    outcome = run(tmp_path, f'[[python]]\ncallable = "{module}:f"\n', events)
    assert outcome.events == []
    assert outcome.failure is not None and outcome.failure.rule == "[[python]] #1 (line 1)"
    assert message in outcome.failure.error and f"{module}:f" in outcome.failure.error
    assert outcome.failure.stored == events[0].text


# --- renumbering: incremental runs continue it ----------------------------------------------

SPLITTER = """
def f(event):
    if event.event_type == "Split":
        return [event, dict(event.data, Half=2)]
    return event
"""


@settings(max_examples=60, deadline=None)
@given(
    classes=st.lists(st.sampled_from(["Keep", "Drop", "Split"]), min_size=1, max_size=12),
    cut=st.integers(min_value=0, max_value=12),
)
def test_renumbering_continues_across_increments(
    tmp_path_factory: pytest.TempPathFactory, classes: list[str], cut: int
) -> None:
    folder = tmp_path_factory.mktemp("rules")
    (folder / "splitter.py").write_text(SPLITTER, encoding="utf-8")
    rules = load_rules(
        rules_file(
            folder, '[[leave_out]]\nevent_type = "Drop"\n[[python]]\ncallable = "splitter:f"\n'
        )
    ).rules
    events = stream(*classes)
    cut = min(cut, len(events))
    whole = transform_stream(rules, "agg-1", events)
    first = transform_stream(rules, "agg-1", events[:cut])
    second = transform_stream(rules, "agg-1", events[cut:], first.numbering)
    assert first.events + second.events == whole.events
    assert second.numbering == whole.numbering
    assert first.mapping + second.mapping == whole.mapping
    assert_loadable(whole)
    expected = sum({"Keep": 1, "Drop": 0, "Split": 2}[c] for c in classes)
    assert whole.numbering == Numbering(len(classes), expected)


# --- $type names ----------------------------------------------------------------------------


def test_type_names_parse_with_generics_arrays_and_attributes() -> None:
    name = f"{LIST}[[{NS}.A+B, {ASM}, Version=1.0.0.0]], mscorlib"
    assert [(k, name[a:b]) for k, a, b in name_spans(name) or []] == [
        ("type", LIST), ("type", f"{NS}.A+B"), ("assembly", ASM), ("assembly", "mscorlib"),
    ]  # fmt: skip
    assert name_spans("Ns.T[], Asm") == [("type", 0, 4), ("assembly", 8, 11)]
    for odd in ("", "Ns.T, ", "List`1[[Ns.T, A]", "Ns.T]]"):
        assert name_spans(odd) is None
        assert rename_names(odd, lambda kind, name: "X") == odd  # left as it is


# --- the rules file -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[[drop]]\nevent_type = 'A'\n", "unknown table [[drop]]"),
        ("[[leave_out]]\nevent_typ = 'A'\n", "[[leave_out]] #1 (line 1): unknown key 'event_typ'"),
        ("[[leave_out]]\n", "[[leave_out]] #1 (line 1): give event_type or aggregate_type"),
        ("[[leave_out]]\nevent_type = 'A[bc'\n", "event_type = 'A[bc' is not a glob"),
        ("[[rename_type]]\nto = 'B'\n", "[[rename_type]] #1 (line 1): the key 'from' is missing"),
        ("[[rename_assembly]]\nfrom = 'A'\nto = 'B, C'\n", "to = 'B, C' is not a .NET name"),
        ("[[upcast]]\nevent_type = 'A'\n", "give rename, remove or default"),
        ("[[upcast]]\nevent_type = 'A'\nremove = ['x >']\n", "remove: bad path 'x >'"),
        ("[[upcast]]\nevent_type = 'A'\ndefault = { At = 2024-01-01 }\n", "a date is not JSON"),
        ("[[python]]\ncallable = 'nowhere_module_x:f'\n", "cannot import 'nowhere_module_x'"),
        ("[[python]]\ncallable = 'json:no_such'\n", "json has no function 'no_such'"),
        ("[[python]]\ncallable = 'json'\n", "write it as 'module:function'"),
        ("leave_out = [{ event_type = 'A' }]\n", "write each leave_out rule as its own"),
        ("[[leave_out]\n", "is not valid TOML"),
    ],
)
def test_malformed_rules_files_name_the_table_and_key(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = rules_file(tmp_path, text)
    with pytest.raises(UsageError) as caught:
        load_rules(path)
    message = str(caught.value)
    assert str(path) in message and expected in message, message


def test_a_missing_rules_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read the transforms file"):
        load_rules(tmp_path / "absent.toml")


def test_the_fingerprint_covers_the_file_and_the_callables_source(tmp_path: Path) -> None:
    module = tmp_path / "fp_module.py"
    module.write_text("def f(event):\n    return event\n", encoding="utf-8")
    path = rules_file(tmp_path, '[[python]]\ncallable = "fp_module:f"\n')
    first = load_rules(path).fingerprint
    assert load_rules(path).fingerprint == first and len(first) == 64
    module.write_text("def f(event):\n    return None\n", encoding="utf-8")
    assert load_rules(path).fingerprint != first
    path.write_text('# changed\n[[python]]\ncallable = "fp_module:f"\n', encoding="utf-8")
    assert load_rules(path).fingerprint not in (first,)


_TEXTS = st.sampled_from([
    f"{NS}.A, {ASM}", f"{LIST}[[{NS}.B, {ASM}]], mscorlib", ASM, f'"$type":"{NS}.C, {ASM}"',
    "back\\slash \"quoted\"", "é ü 学", "", "plain",
])  # fmt: skip
_DOCUMENTS = st.recursive(
    _TEXTS | st.integers(-5, 5) | st.booleans(),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["$type", "Name", "$values", "Note"]), inner, max_size=4)
    ),
    max_leaves=12,
)


def _renamed_types(value: Any, old: str, new: str) -> Any:
    """What rename_assembly should make of a parsed document, computed independently."""
    if isinstance(value, list):
        return [_renamed_types(v, old, new) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, inner in value.items():
        if key == "$type" and isinstance(inner, str):
            inner = inner.replace(f", {old}]", f", {new}]")
            inner = inner[: -len(old)] + new if inner.endswith(f", {old}") else inner
            out[key] = inner
        else:
            out[key] = _renamed_types(inner, old, new)
    return out


@settings(max_examples=150, deadline=None)
@given(fields=st.dictionaries(st.sampled_from(["Note", "Inner", "Items"]), _DOCUMENTS))
def test_assembly_renames_touch_only_type_values(
    tmp_path_factory: pytest.TempPathFactory, fields: dict[str, Any]
) -> None:
    folder = tmp_path_factory.mktemp("rules")
    rules = load_rules(
        rules_file(folder, f'[[rename_assembly]]\nfrom = "{ASM}"\nto = "New.Asm"\n')
    ).rules
    source = payload("Created", 1, **fields)
    (event,) = transform_stream(rules, "agg-1", [SourceEvent("c1", 1, source)]).events
    assert json.loads(event.text) == _renamed_types(json.loads(source), ASM, "New.Asm")
    assert list(json.loads(event.text)) == list(json.loads(source))
    if event.text == source:
        assert ASM not in json.dumps(_type_values(json.loads(source)))


def _type_values(value: Any) -> list[str]:
    if isinstance(value, list):
        return [t for v in value for t in _type_values(v)]
    if isinstance(value, dict):
        own = [value["$type"]] if isinstance(value.get("$type"), str) else []
        return own + [t for k, v in value.items() if k != "$type" for t in _type_values(v)]
    return []


def _slow_type_rewrite(text: str, old: str, new: str) -> str:
    """rename_assembly the slow way: every JSON string scanned, each ``"$type"`` key's string
    value decoded, renamed by the parser and encoded again."""
    spans: list[tuple[int, int]] = []
    key_end = -1
    for match, _ in typenames._strings(text):
        if key_end != -1:
            colon = re.compile(r"\s*:\s*").match(text, key_end)
            key_end = -1
            if colon is not None and colon.end() == match.start():
                spans.append(match.span())
                continue
        if match.group() == '"$type"':
            key_end = match.end()
    out, done = [], 0
    for start, end in spans:
        value = json.loads(text[start:end])
        renamed = rename_names(
            value, lambda kind, name: new if kind == "assembly" and name == old else None
        )
        if renamed != value:
            out += [text[done:start], json.dumps(renamed, ensure_ascii=False)]
            done = end
    return "".join(out) + text[done:] if out else text


@settings(max_examples=150, deadline=None)
@given(
    fields=st.dictionaries(
        st.sampled_from(["Note", "Inner", "Items", 'Odd"$type', "Back\\"]), _DOCUMENTS
    ),
    spaced=st.booleans(),
    ascii_only=st.booleans(),
)
def test_the_fast_type_rewrite_equals_the_slow_one(
    tmp_path_factory: pytest.TempPathFactory, fields: dict[str, Any], spaced: bool, ascii_only: bool
) -> None:
    """The engine's token cache and Newtonsoft-spelling scan give exactly what decoding,
    parsing and encoding every ``$type`` value gives, whatever the spacing and escapes; the
    second pass (from the cache) the same as the first."""
    folder = tmp_path_factory.mktemp("rules")
    rules = load_rules(
        rules_file(folder, f'[[rename_assembly]]\nfrom = "{ASM}"\nto = "New.Asm"\n')
    ).rules
    document = json.loads(payload("Created", 1, **fields))
    separators = (", ", ": ") if spaced else (",", ":")
    source = json.dumps(document, ensure_ascii=ascii_only, separators=separators)
    expected = _slow_type_rewrite(source, ASM, "New.Asm")
    for _ in range(2):
        (event,) = transform_stream(rules, "agg-1", [SourceEvent("c1", 1, source)]).events
        assert event.text == expected


# --- consecutive renames in one step ------------------------------------------------------


def test_consecutive_renames_equal_the_rules_one_by_one(tmp_path: Path) -> None:
    """Renames share one pass per payload (and a cache across aggregates); migrate plan's
    per-rule effects apply them one rule at a time: both give the same events, and so does
    migrate's transform_checked, whatever the order the rules' names turn up in."""
    import random

    from esctl.streams import clean_payloads
    from esctl.transforms import RuleEffect, transform_checked

    model = f"{ASM}.Models.Line, {ASM}"
    text = (
        f'[[rename_type]]\nfrom = "{NS}.ItemScoreCreated"\nto = "New.Created"\n'
        f'[[rename_namespace]]\nfrom = "{ASM}.Models"\nto = "New.Models"\n'
        f'[[rename_assembly]]\nfrom = "{ASM}"\nto = "New.Asm"\n'
    )
    shapes: list[dict[str, Any]] = [
        {},
        {"Line": {"$type": model, "Sku": "a"}},
        {"Lines": {"$type": f"System.Collections.Generic.List`1[[{model}]], mscorlib"}},
        {"Note": f"{ASM} and \\u0041"},
    ]
    rng = random.Random(3)
    passed_through = 0
    for _ in range(40):
        rules = load_rules(rules_file(tmp_path, text)).rules  # new rules: steps compiled anew
        classes = [rng.choice(["ItemScoreCreated", "ItemScoreUpdated"]) for _ in range(6)]
        events = [
            SourceEvent(f"c{v}", v, payload(cls, v, **rng.choice(shapes)))
            for v, cls in enumerate(classes, 1)
        ]
        if rng.random() < 0.5:  # an assembly no rule names: only some payloads are renamed
            events = [
                SourceEvent(e.commit_id, e.version, e.text.replace(f", {ASM}", ", Other", 1))
                if rng.random() < 0.5
                else e
                for e in events
            ]
        grouped = transform_stream(rules, "agg-1", events)
        one_by_one = transform_stream(rules, "agg-1", events, effects=RuleEffect.of(rules))
        assert grouped == one_by_one
        clean = clean_payloads("agg-1", [e.text.encode() for e in events])
        assert clean is not None
        checked = transform_checked(rules, "agg-1", [e.commit_id for e in events], clean[1])
        assert checked.plain is not None  # renames alone: the fast path
        assert checked_texts(checked) == [(e.version, e.text) for e in grouped.events]
        # What migrate writes: the stored bytes while no rule changed the text, else the text.
        for raw, source, read in zip(checked.plain[3], events, clean[1], strict=True):
            assert (raw is read.payload) == (raw.decode() == source.text)
            passed_through += raw is read.payload
    assert passed_through  # some payloads named no renamed name: they kept their bytes


# --- migrate's byte paths equal the text path -------------------------------------------------

_RULE_TABLES = [
    f'[[rename_type]]\nfrom = "{NS}.Created"\nto = "New.Events.Made"\n',
    f'[[rename_namespace]]\nfrom = "{NS}"\nto = "New.Events"\n',
    f'[[rename_assembly]]\nfrom = "{ASM}"\nto = "New.Asm"\n',
    '[[leave_out]]\nevent_type = "Upd*"\n',
    '[[leave_out]]\naggregate_type = "Item*"\nevent_type = "Gone"\n',
]
_SPELLINGS = [
    ("", ""),  # as json.dumps writes it
    ('"$type"', '"\\u0024type"'),  # a key an escape spells (not a $type member to the engine)
    ("Learning", "L\\u0065arning"),  # a name an escape spells
    ("Events.", "Events\\u002e"),
    ('{"$type"', '{ "$type" '),  # the own $type with space around
]


@settings(max_examples=200, deadline=None)
@given(
    fields=st.dictionaries(
        st.sampled_from(["Note", "Inner", "Items", 'Odd"$type', "Back\\"]), _DOCUMENTS
    ),
    classes=st.lists(
        st.sampled_from(["Created", "Updated", "Gone", "Kept"]), min_size=1, max_size=4
    ),
    tables=st.lists(st.sampled_from(_RULE_TABLES), min_size=1, max_size=4),
    spaced=st.booleans(),
    ascii_only=st.booleans(),
    spelling=st.sampled_from(_SPELLINGS),
    upcast=st.booleans(),
    own_first=st.booleans(),
    start=st.sampled_from([Numbering(), Numbering(3, 3), Numbering(3, 1)]),
)
def test_the_byte_paths_equal_the_text_path(
    tmp_path_factory: pytest.TempPathFactory,
    fields: dict[str, Any],
    classes: list[str],
    tables: list[str],
    spaced: bool,
    ascii_only: bool,
    spelling: tuple[str, str],
    upcast: bool,
    own_first: bool,
    start: Numbering,
) -> None:
    """migrate's transform_checked renames the payloads' UTF-8 bytes: with only leave-outs
    and renames without InFlight events (the plain path), else on InFlight events holding
    bytes (an upcast that matches nothing keeps the rules off the plain path). Both give the
    texts, versions, numbering and left-out count that transform_stream gives working on text,
    whatever the spacing, escapes (in strings, in $type values, in keys), nesting, the own
    $type's place and renumbering."""
    from esctl.streams import clean_payloads
    from esctl.transforms import transform_checked

    folder = tmp_path_factory.mktemp("rules")
    text = "".join(tables) + (
        '[[upcast]]\nevent_type = "Nothing"\nremove = ["X"]\n' if upcast else ""
    )
    rules = load_rules(rules_file(folder, text)).rules
    separators = (", ", ": ") if spaced else (",", ":")
    first = start.last_source_version + 1
    events = []
    for version, cls in enumerate(classes, first):
        document = json.loads(payload(cls, version, **fields))
        if not own_first:  # (jsonb's key order, or another writer's)
            document["$type"] = document.pop("$type")
        source = json.dumps(document, ensure_ascii=ascii_only, separators=separators)
        if spelling[0]:
            source = source.replace(spelling[0], spelling[1])
        events.append(SourceEvent(f"c{version}", version, source))
    expected = transform_stream(rules, "agg-1", events, start)
    ids = [e.commit_id for e in events]
    for _ in range(2):  # the second time from the caches
        clean = clean_payloads("agg-1", [e.text.encode() for e in events], first_version=first)
        assert clean is not None
        checked = transform_checked(rules, "agg-1", ids, clean[1], start)
        assert checked.failure is None and expected.failure is None
        if upcast:
            assert checked.plain is None
        assert checked_texts(checked) == [(e.version, e.text) for e in expected.events]
        assert checked.numbering == expected.numbering
        assert checked.left_out == expected.left_out
        types = (
            list(checked.plain[2])
            if checked.plain is not None
            else [e.type_name for e in checked.events]
        )
        assert [codec.event_type_from_type_name(t) for t in types] == [
            e.event_type for e in expected.events
        ]
        sources = {e.commit_id: e.text for e in events}
        for e in checked.events:  # the stored bytes, as read, while no rule changed the text
            assert e.unchanged == (e.text == sources[e.commit_id])
            assert (e.utf8() is e.payload) == e.unchanged


def _tricky(own: str, *members: str) -> str:
    """A payload text: its own $type token ``own`` (as written), then ``members`` as written."""
    rest = "".join("," + m for m in members)
    return (
        f'{{"$type":{own},"Id":"agg-1","TimeStamp":"2024-03-01T10:00:00.1234567+00:00",'
        f'"Version":1,"AggregateType":"ItemScore"{rest}}}'
    )


_CREATED = f'"{NS}.Created, {ASM}"'
_MODEL = f'"{ASM}.Models.Line, {ASM}"'
_MODEL_ESCAPED = _MODEL.replace("Line", "L\\u0069ne")


@pytest.mark.parametrize(
    "text",
    [
        _tricky(_CREATED),
        _tricky(_CREATED.replace("Events.", "Events\\u002e")),  # an escape in the own token
        _tricky(_CREATED.replace("Created", 'Cre\\"ated')),  # an escaped quote in it
        _tricky(_CREATED, f'"Odd\\"$type":{_MODEL}'),  # "$type" after an escaped quote: a key
        _tricky(_CREATED, f'"Odd\\"$type" : {_MODEL}'),  # the same, spaced
        _tricky(_CREATED, '"Note":"x \\"$type\\":\\"' + _MODEL[1:-1] + '\\""'),  # in a string
        _tricky(_CREATED, f'"Line":{{"$type":{_MODEL}}}'),
        _tricky(_CREATED, f'"Line":{{"$type" : {_MODEL}}}'),  # spaced: the regular expression
        _tricky(_CREATED, f'"Line":{{"$type":{_MODEL_ESCAPED}}}'),
        _tricky(_CREATED, f'"Line":{{"\\u0024type":{_MODEL}}}'),  # not a member, on any path
        _tricky(_CREATED, '"Note":"$type"', f'"Line":{{"$type":{_MODEL}}}'),  # a value "$type"
        _tricky(_CREATED, f'"List":{{"$type":"{LIST}[[{NS}.Created, {ASM}]], mscorlib"}}'),
        _tricky(_CREATED, '"Back\\\\":1', f'"Line":{{"$type":{_MODEL}}}'),  # an escaped backslash
        _tricky(_CREATED, f'"Line":{{"$type":"Odd$Name, X","$values":[{{"$type":{_MODEL}}}]}}'),
        _tricky(_CREATED, f'"Line":{{"$type":{_MODEL},"Note":"costs $5"}}'),  # $ in a text
        _tricky(_CREATED, f'"Line":{{"$type":{_MODEL.replace("Line", "L$ine")}}}'),
        _tricky(_CREATED, f'"$type":{_MODEL}'),  # a second own $type (the parsed one)
        _tricky(_CREATED, f'"Line":{{"$type":{_MODEL}}}', f'"$type":{_CREATED}'),
        _tricky('"Other.Type, Other"'),
        _tricky(_CREATED).replace('{"$type":', '{ "$type":', 1),
        '{"Id":"agg-1","$type":' + _tricky(_CREATED)[9:],  # the own $type not first
    ],
)
@pytest.mark.parametrize("upcast", [False, True])
def test_the_byte_paths_equal_the_text_path_on_tricky_payloads(
    tmp_path: Path, text: str, upcast: bool
) -> None:
    from esctl.streams import clean_payloads
    from esctl.transforms import transform_checked

    json.loads(text)  # valid JSON, as migrate's payloads are
    tables = "".join(_RULE_TABLES[:3])
    if upcast:
        tables += '[[upcast]]\nevent_type = "Nothing"\nremove = ["X"]\n'
    rules = load_rules(rules_file(tmp_path, tables)).rules
    expected = transform_stream(rules, "agg-1", [SourceEvent("c1", 1, text)])
    for _ in range(2):
        clean = clean_payloads("agg-1", [text.encode()])
        assert clean is not None
        checked = transform_checked(rules, "agg-1", ["c1"], clean[1])
        assert checked_texts(checked) == [(e.version, e.text) for e in expected.events]
