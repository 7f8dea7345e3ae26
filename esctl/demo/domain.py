"""The made-up scoring service the demo store belongs to: its app and environment, its aggregate
and event types (with the .NET type names Newtonsoft writes), the services subscribed to them,
the store's history, and the words its payloads are made of."""

from __future__ import annotations

import functools
from datetime import UTC, datetime

DEMO_APP = "Learning.ScoringService.Web-Demo"
DEMO_ENV = "demo"

DEFAULT_NOW = datetime(2025, 1, 15, 9, 30, tzinfo=UTC)
"""The demo's "present" unless the caller gives one: recent events and queued messages are
timestamped relative to it (``esctl demo`` passes the real clock)."""
HISTORY_START = datetime(2017, 2, 1, tzinfo=UTC)
HISTORY_END = datetime(2024, 12, 20, tzinfo=UTC)
"""Events that are not "recent" lie in [HISTORY_START, HISTORY_END]; ``now`` must be later."""
LEGACY_CUTOFF = datetime(2017, 10, 1, tzinfo=UTC)
"""Events saved before this instant are in the legacy layout (the library changed in October
2017); every later event is in the partitioned layout."""

_ASM = "Learning.ScoringService.Domain"
_EVENTS_NS = f"{_ASM}.Events"


def domain_type(namespace: str, name: str) -> str:
    """The assembly-qualified name Newtonsoft writes for class ``name`` of the domain assembly's
    ``namespace`` (``Events``, ``Models``, ``Snapshots``)."""
    return f"{_ASM}.{namespace}.{name}, {_ASM}"


event_type_name = functools.partial(domain_type, "Events")
model = functools.partial(domain_type, "Models")


def snapshot_type_name(aggregate_type: str) -> str:
    return domain_type("Snapshots", f"{aggregate_type}Snapshot")


def list_of(item_type_name: str) -> str:
    return f"System.Collections.Generic.List`1[[{item_type_name}]], mscorlib"


STRING_LIST = list_of("System.String, mscorlib")

# Short event type (what docs/layout.md calls TYPE) -> the assembly-qualified $type.
EVENT_TYPES: dict[str, str] = {
    "ItemScoreCreated": event_type_name("ItemScoreCreated"),
    "ItemScoreUpdated": event_type_name("ItemScoreUpdated"),
    "ItemScoreCommentAdded": event_type_name("ItemScoreCommentAdded"),
    "ItemScoreFinalized": event_type_name("ItemScoreFinalized"),
    "AssessmentStarted": event_type_name("AssessmentStarted"),
    # A nested class: Type.Name is the inner name.
    "ResponseRecorded": f"{_EVENTS_NS}.AssessmentEvents+ResponseRecorded, {_ASM}",
    "AssessmentSubmitted": event_type_name("AssessmentSubmitted"),
    "OrderPlaced": event_type_name("OrderPlaced"),
    "OrderLineAdded": event_type_name("OrderLineAdded"),
    "OrderShipped": event_type_name("OrderShipped"),
    "OrderCancelled": event_type_name("OrderCancelled"),
    "GradebookOpened": event_type_name("GradebookOpened"),
    # A generic class: Type.Name keeps the arity, the type arguments are in [[…]].
    "Envelope`1": (
        f"Learning.Messaging.Envelope`1[[{_EVENTS_NS}.GradePublished, {_ASM}]], Learning.Messaging"
    ),
}

AGGREGATE_TYPES = ("ItemScore", "Assessment", "Order", "Gradebook")
INTEGER_ID_TYPES = {"Order": 1001, "Gradebook": 500_001}  # first id of each integer-id type

REPORTING = "Learning.ReportingService.Worker-Demo"
NOTIFICATION = "Learning.NotificationService.Web-Demo"
SEARCH = "Learning.SearchIndexer.Worker-Demo"
BILLING = "Learning.BillingService.Worker-Demo"
ANALYTICS = "Learning.AnalyticsService.Worker-Demo"

SUBSCRIPTIONS: dict[str, tuple[str, ...]] = {
    "ItemScoreCreated": (REPORTING, NOTIFICATION, SEARCH),
    "ItemScoreUpdated": (REPORTING, SEARCH),
    "OrderPlaced": (BILLING, NOTIFICATION),
    "ResponseRecorded": (REPORTING, ANALYTICS),
    "Envelope`1": (REPORTING, NOTIFICATION),
}
"""Event type -> the services subscribed to it (``Subscribers:{ENV:TYPE}``)."""

NAMES = (
    "Zoë Ångström",
    "José Núñez",
    "田中 太郎",
    "Søren Kierkegård",
    "Łukasz Wróblewski",
    "Αλέξανδρος Παπαδόπουλος",
    "Amélie Poulain",
    "Nguyễn Thị Minh",
    "Björk Guðmundsdóttir",
    "李小龍",
    "Ольга Смирнова",
    "Chloé O'Brien",
)
SENTENCES = (
    "L'argumentation est claire, mais la conclusion manque de nuance.",
    "Die Gliederung überzeugt; an der Rechtschreibung (ß/ss) muss noch gearbeitet werden.",
    "解答は正しいですが、途中の計算をもう少し丁寧に書きましょう。",
    "答案结构清晰，论据充分，但引用格式需要统一。",  # noqa: RUF001 (Chinese punctuation)
    "Excellent use of evidence 👍 — keep going! 🎉",
    "La tesis es sólida; revisa la concordancia de los tiempos verbales.",
    "Ответ верный, но не хватает обоснования второго шага.",
    "Bom trabalho! A introdução poderia ser mais concisa. 🙂",
    "정답입니다. 풀이 과정을 조금 더 자세히 적어 주세요.",
    "Ciò che conta è il ragionamento: ottimo lavoro ✨",
    'The rubric criterion "coherence" was met; "citations" was not.',
    "Punkte:\n1. Einleitung ✔\n2. Hauptteil ✔\n3. Schluss ✘",
    "Saved under C:\\Scores\\2019 — see the attached file.",
    "Ἡ ἀπάντησις ὀρθή ἐστιν. 📐",
)
COURSES = ("Français avancé", "数学 — 期末", "Physik für Anfänger", "Історія України", "Música 🎵")
PRODUCTS = (
    ("BK-1042", "Workbook « Grammaire progressive »"),
    ("BK-2210", "漢字練習帳 (3級)"),
    ("PN-0007", "Füller mit Ersatzpatronen"),
    ("CL-3300", "Calculatrice scientifique — modèle ÉCOLE"),
    ("EB-9001", "E-book: Ελληνική Μυθολογία"),
    ("KT-5150", "Kit de química 🧪"),
)
