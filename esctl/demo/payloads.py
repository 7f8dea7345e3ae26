"""The JSON of the demo's events and snapshots, as Newtonsoft (TypeNameHandling.All) writes it,
made up from the demo's seeded random source: names, comments, scores, order lines."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import orjson

from esctl.demo import dotnet
from esctl.demo.domain import (
    COURSES,
    EVENT_TYPES,
    NAMES,
    PRODUCTS,
    SENTENCES,
    STRING_LIST,
    event_type_name,
    list_of,
    model,
    snapshot_type_name,
)
from esctl.demo.records import Aggregate, Event

Fields = dict[str, Any]


class Payloads:
    """Makes up payloads. Every value is drawn from ``rng`` (the plan's), in a fixed order, so a
    seed gives the same store."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def guid(self) -> str:
        return dotnet.guid(self.rng)

    def name(self) -> str:
        return self.rng.choice(NAMES)

    def sentence(self) -> str:
        return self.rng.choice(SENTENCES)

    def long_text(self, at_least: int) -> str:
        parts: list[str] = []
        size = 0
        while size < at_least:
            part = self.sentence()
            parts.append(part)
            size += len(part.encode("utf-8")) + 1
        return " ".join(parts)

    # -- events --

    def event(self, aggregate: Aggregate, event: Event, *, long_answers: bool = False) -> str:
        """The event's JSON exactly as Newtonsoft (TypeNameHandling.All) writes it."""
        document: Fields = {
            "$type": EVENT_TYPES[event.kind],
            "Id": aggregate.id,
            "TimeStamp": dotnet.timestamp_text(event.ticks, aggregate.offset_minutes),
            "Version": event.version,
            "AggregateType": aggregate.type,
        }
        fields = _FIELDS.get(event.kind)
        if fields is None:  # pragma: no cover - every kind of EVENT_TYPES has its fields
            raise AssertionError(event.kind)
        document |= fields(self, aggregate, event, long_answers)
        return dotnet.to_json(document)

    def item_score_created(self, aggregate: Aggregate, event: Event, long: bool) -> Fields:
        rng = self.rng
        criteria = [
            {"$type": model("Criterion"), "Name": name, "Weight": weight,
             "Points": rng.randint(0, 4)}
            for name, weight in (("Thèse", 0.4), ("Cohérence", 0.35), ("Références", 0.25))
        ]  # fmt: skip
        return {
            "ItemId": self.guid(),
            "LearnerId": rng.randint(10_000, 99_999),
            "LearnerName": self.name(),
            "Score": round(rng.uniform(0, 10), 1),
            "MaxScore": 10.0,
            "Rubric": {
                "$type": model("Rubric"),
                "Name": "Essay — Argumentation (v2)",
                "Criteria": {"$type": list_of(model("Criterion")), "$values": criteria},
            },
        }

    def item_score_updated(self, aggregate: Aggregate, event: Event, long: bool) -> Fields:
        return {
            "Score": round(self.rng.uniform(0, 10), 1),
            "PreviousScore": round(self.rng.uniform(0, 10), 1),
            "Reason": self.sentence(),
            "ScoredBy": self.name(),
        }

    def item_score_comment_added(self, aggregate: Aggregate, event: Event, long: bool) -> Fields:
        return {
            "CommentId": self.guid(),
            "Author": self.name(),
            "Comment": self.long_text(self.rng.randint(1100, 2600)),
            "Tags": {"$type": STRING_LIST, "$values": ["Feedback", "Écriture", "作文"]},
        }

    def item_score_finalized(self, aggregate: Aggregate, event: Event, long: bool) -> Fields:
        return {
            "FinalScore": round(self.rng.uniform(4, 10), 1),
            "Grade": self.rng.choice(("A", "A−", "B+", "B", "C")),  # noqa: RUF001
            "FinalizedBy": self.name(),
        }

    def assessment_started(self, aggregate: Aggregate, event: Event, long: bool) -> Fields:
        return {
            "LearnerId": self.rng.randint(10_000, 99_999),
            "AssessmentName": self.rng.choice(COURSES) + " — Test",
            "StartedBy": self.name(),
        }

    def response_recorded(self, aggregate: Aggregate, event: Event, long: bool) -> Fields:
        rng = self.rng
        long = long or rng.random() < 0.5
        return {
            "QuestionNumber": event.index,
            "Answer": self.long_text(rng.randint(1050, 1800)) if long else self.sentence(),
            "Attachments": {
                "$type": list_of(model("Attachment")),
                "$values": [
                    {"$type": model("Attachment"), "FileName": f"schéma_№{i}.png",
                     "Bytes": rng.randint(2_000, 900_000)}
                    for i in range(rng.randint(0, 2))
                ],
            },
        }  # fmt: skip

    def assessment_submitted(self, aggregate: Aggregate, event: Event, long: bool) -> Fields:
        return {
            "ResponseCount": len(aggregate.kinds) - 2,
            "DurationSeconds": self.rng.randint(300, 5400),
        }

    def order_placed(self, aggregate: Aggregate, event: Event, long: bool) -> Fields:
        rng = self.rng
        return {
            "CustomerId": rng.randint(100, 9999),
            "CustomerName": self.name(),
            "Currency": rng.choice(("EUR", "USD", "JPY", "CHF")),
            "ShippingAddress": {
                "$type": model("Address"),
                "Street": rng.choice(("Königstraße 12", "1-2-3 Shibuya", "Rua São Bento 5")),
                "City": rng.choice(("München", "東京", "São Paulo", "Zürich")),
                "Country": rng.choice(("DE", "JP", "BR", "CH")),
            },
        }

    def order_line_added(self, aggregate: Aggregate, event: Event, long: bool) -> Fields:
        rng = self.rng
        many = rng.random() < 0.3
        lines = []
        for _ in range(rng.randint(9, 14) if many else rng.randint(1, 3)):
            sku, description = rng.choice(PRODUCTS)
            lines.append(
                {"$type": model("OrderLine"), "Sku": sku, "Description": description,
                 "Quantity": rng.randint(1, 30), "UnitPrice": round(rng.uniform(1, 90), 2)}
            )  # fmt: skip
        return {"Lines": {"$type": list_of(model("OrderLine")), "$values": lines}}

    def order_shipped(self, aggregate: Aggregate, event: Event, long: bool) -> Fields:
        return {
            "Carrier": self.rng.choice(("DHL", "ヤマト運輸", "La Poste")),
            "TrackingNumber": f"JD{self.rng.randrange(10**12):012d}",
        }

    def order_cancelled(self, aggregate: Aggregate, event: Event, long: bool) -> Fields:
        return {"Reason": self.sentence(), "CancelledBy": self.name()}

    def gradebook_opened(self, aggregate: Aggregate, event: Event, long: bool) -> Fields:
        return {
            "CourseName": self.rng.choice(COURSES),
            "Term": self.rng.choice(("2018-H1", "2019-H2", "2021-H1", "2024-H2")),
            "TeacherName": self.name(),
        }

    def envelope(self, aggregate: Aggregate, event: Event, long: bool) -> Fields:
        rng = self.rng
        comment = self.long_text(1100) if rng.random() < 0.2 else self.sentence()
        return {
            "CorrelationId": self.guid(),
            "Payload": {
                "$type": event_type_name("GradePublished"),
                "LearnerId": rng.randint(10_000, 99_999),
                "Grade": rng.choice(("A", "B+", "C", "très bien", "優")),
                "Comment": comment,
            },
        }

    # -- snapshots --

    def snapshot(self, aggregate: Aggregate, upto: int) -> str:
        """The JSON of ``aggregate``'s snapshot after its first ``upto`` events."""
        events = [orjson.loads(e.text) for e in aggregate.events[:upto]]
        document: Fields = {
            "$type": snapshot_type_name(aggregate.type),
            "Id": aggregate.id,
            "Version": events[-1]["Version"],
        }
        if aggregate.type == "ItemScore":
            scores = [e["Score"] for e in events if "Score" in e]
            comments = [e["Comment"] for e in events if "Comment" in e]
            document |= {
                "Score": scores[-1] if scores else None,
                "MaxScore": 10.0,
                "Finalized": any("FinalScore" in e for e in events),
                "Comments": {"$type": STRING_LIST, "$values": comments},
            }
        elif aggregate.type == "Assessment":
            document |= {
                "Answers": {
                    "$type": STRING_LIST,
                    "$values": [e["Answer"] for e in events if "Answer" in e],
                },
                "Submitted": any("ResponseCount" in e for e in events),
            }
        elif aggregate.type == "Order":
            lines = sum(len(e["Lines"]["$values"]) for e in events if "Lines" in e)
            status = "Placed"
            for e in events:
                if "TrackingNumber" in e:
                    status = "Shipped"
                elif "CancelledBy" in e:
                    status = "Cancelled"
            document |= {"CustomerId": events[0]["CustomerId"], "LineCount": lines,
                         "Status": status}  # fmt: skip
        else:
            document |= {"CourseName": events[0]["CourseName"], "GradesPublished": upto - 1}
        return dotnet.to_json(document)


_FIELDS: dict[str, Callable[[Payloads, Aggregate, Event, bool], Fields]] = {
    "ItemScoreCreated": Payloads.item_score_created,
    "ItemScoreUpdated": Payloads.item_score_updated,
    "ItemScoreCommentAdded": Payloads.item_score_comment_added,
    "ItemScoreFinalized": Payloads.item_score_finalized,
    "AssessmentStarted": Payloads.assessment_started,
    "ResponseRecorded": Payloads.response_recorded,
    "AssessmentSubmitted": Payloads.assessment_submitted,
    "OrderPlaced": Payloads.order_placed,
    "OrderLineAdded": Payloads.order_line_added,
    "OrderShipped": Payloads.order_shipped,
    "OrderCancelled": Payloads.order_cancelled,
    "GradebookOpened": Payloads.gradebook_opened,
    "Envelope`1": Payloads.envelope,
}
"""Event type -> the fields its payload adds to Id, TimeStamp, Version and AggregateType."""
