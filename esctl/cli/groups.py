"""Options that travel together, declared once as a group: a frozen dataclass of
:class:`OptionGroup` whose fields are the options (``Annotated`` aliases with defaults). A
command takes the whole group as one parameter annotated with the class; :func:`with_groups`
gives Typer the group's options in that parameter's place (so ``--help`` lists them there) and
hands the command one instance built from their values.

Put it right above the function, under ``@with_context``. As ``esctl.cli.context`` does for the
shared options, it uses Typer's public API only (:func:`esctl.cli.context.with_parameters`)."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from esctl.cli.context import with_parameters
from esctl.cli.options import (
    AggregatesOpt,
    AggregateTypeOpt,
    DryRunOpt,
    EventTypesOpt,
    ProgressOpt,
    SinceOpt,
    UntilOpt,
    WhereOpt,
    YesOpt,
)

if TYPE_CHECKING:
    from esctl.query import Selectors


class OptionGroup:
    """The base of an option group: subclass it as a frozen dataclass of option fields."""


def with_groups(func: Callable[..., None]) -> Callable[..., None]:
    """Make each parameter of ``func`` annotated with an :class:`OptionGroup` class stand for
    that group's options (see the module docstring)."""
    signature = inspect.signature(func, eval_str=True)
    parameters: list[inspect.Parameter] = []
    groups: dict[str, tuple[type[OptionGroup], list[str]]] = {}
    for parameter in signature.parameters.values():
        group = parameter.annotation
        if not (isinstance(group, type) and issubclass(group, OptionGroup)):
            parameters.append(parameter)
            continue
        hints = typing.get_type_hints(group, include_extras=True)
        fields = dataclasses.fields(group)  # type: ignore[arg-type]
        groups[parameter.name] = (group, [f.name for f in fields])
        parameters += [
            parameter.replace(name=f.name, default=f.default, annotation=hints[f.name])
            for f in fields
        ]

    @functools.wraps(func)
    def command(*args: Any, **kwargs: Any) -> None:
        for name, (group, names) in groups.items():
            kwargs[name] = group(**{n: kwargs.pop(n) for n in names})
        func(*args, **kwargs)

    return with_parameters(command, parameters)


# --- the groups shared by several command modules --------------------------------------------


@dataclasses.dataclass(frozen=True)
class EventSelection(OptionGroup):
    """The event selectors of ``events query`` and ``replay``."""

    types: EventTypesOpt = None
    aggregate_type: AggregateTypeOpt = None
    aggregates: AggregatesOpt = None
    since: SinceOpt = None
    until: UntilOpt = None
    where: WhereOpt = None

    def selectors(self) -> Selectors:
        """The selectors as the core takes them (``QueryFilters`` are built from them)."""
        from esctl.query import Selectors

        return Selectors(
            types=tuple(self.types or ()),
            aggregate_type=self.aggregate_type,
            aggregates=tuple(self.aggregates or ()),
            since=self.since,
            until=self.until,
            where=tuple(self.where or ()),
        )


@dataclasses.dataclass(frozen=True)
class Changing(OptionGroup):
    """How a command that changes data runs: --dry-run, --yes, --progress (``compress``,
    ``replay``, ``queue requeue``, ``drain`` and ``restore``)."""

    dry_run: DryRunOpt = False
    yes: YesOpt = False
    progress: ProgressOpt = True

    @property
    def asks(self) -> bool:
        """Whether the command may ask before it changes anything: not with --yes, nor in a
        dry run (which changes nothing)."""
        return not (self.yes or self.dry_run)
