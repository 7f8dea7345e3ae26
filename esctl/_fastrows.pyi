from collections.abc import Callable, Sequence

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
