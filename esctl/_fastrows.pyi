from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

_P = TypeVar("_P", bound=tuple[object, ...])

def clean_rows(
    aggregate_id: str,
    values: Sequence[bytes | None],
    first_version: int,
    known_type: str | None,
    gunzip: Callable[[bytes], bytes],
    event_type_of: Callable[[str], bytes],
    type_cache: dict[bytes, bytes],
    /,
) -> tuple[str, list[bytes]] | None: ...
def clean_payloads(
    aggregate_id: str,
    values: Sequence[bytes | None],
    first_version: int,
    known_type: str | None,
    gunzip: Callable[[bytes], bytes],
    payload_type: type[_P],
    names: dict[bytes, str],
    /,
) -> tuple[str, list[_P]] | None: ...
def identical(
    aggregate_id: str,
    values: Sequence[bytes | None],
    aggregate_type: str,
    versions: Sequence[int],
    time_stamps: Sequence[int],
    event_types: Sequence[str],
    event_data: Sequence[bytes],
    gunzip: Callable[[bytes], bytes],
    event_type_of: Callable[[str], bytes],
    type_cache: dict[bytes, bytes],
    /,
) -> bool: ...
def lookup_orders(
    prefix: str, legacy: str, commit_ids: Sequence[str], /
) -> list[tuple[str, str]] | None: ...
def pack_three(commands: Sequence[tuple[Any, ...]], /) -> bytes | None: ...
def binary_rows(
    moments: Sequence[datetime],
    versions: Sequence[int],
    type_names: Sequence[str],
    payloads: Sequence[bytes],
    event_type_of: Callable[[str], bytes],
    cache: dict[str, bytes],
    /,
) -> list[bytes] | None: ...
