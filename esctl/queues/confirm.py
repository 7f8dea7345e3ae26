"""The question a mutating queue command asks before its first change: a :class:`Plan` of what
it is about to do, put to the caller's ``confirm`` callback."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from esctl.errors import Refused


@dataclass(frozen=True)
class Plan:
    """What a mutating command is about to do, for the confirmation question."""

    action: str
    """``requeue``, ``drain``, ``discard`` or ``restore``."""
    count: int
    source: str
    destination: str | None


Confirm = Callable[[Plan], bool]


def require_confirmation(confirm: Confirm | None, plan: Plan) -> None:
    """Refused when ``confirm`` says no (no callback: the caller already agreed)."""
    if confirm is not None and not confirm(plan):
        raise Refused(f"{plan.action} not confirmed; nothing was changed")
