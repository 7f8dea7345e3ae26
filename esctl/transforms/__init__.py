"""Transforms: rules that change what an event store holds on its way out of Redis (leave
events or aggregates out, rename .NET types, namespaces and assemblies in ``$type``, upcast
fields, or any Python callable), applied to one aggregate's stream at a time and renumbered so
the stream stays loadable.

:func:`load_rules` reads a rules file (``--transforms FILE``, :mod:`.rules`);
:func:`transform_stream` applies it to one aggregate's events (:mod:`.engine`). Pure: no I/O
beyond reading the rules file and importing its callables. Below the operations, so that every
operation can use it. The design and the renumbering contract: docs/design/transforms.md.
"""

from esctl.transforms.engine import (
    CheckedOutcome,
    Numbering,
    RuleEffect,
    SourceEvent,
    StreamOutcome,
    TransformedEvent,
    TransformFailure,
    transform_checked,
    transform_stream,
)
from esctl.transforms.events import Event, InFlight
from esctl.transforms.rules import KINDS, Rule, Rules, fingerprint, load_rules

__all__ = [
    "KINDS",
    "CheckedOutcome",
    "Event",
    "InFlight",
    "Numbering",
    "Rule",
    "RuleEffect",
    "Rules",
    "SourceEvent",
    "StreamOutcome",
    "TransformFailure",
    "TransformedEvent",
    "fingerprint",
    "load_rules",
    "transform_checked",
    "transform_stream",
]
