"""The raw RESP path of esctl.redisio (issue 17): commands packed by hand as redis-py would send
them, and replies read in slices handed to hiredis, whatever the sizes and boundaries."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from esctl import redisio
from esctl.redisio import resp


def reference_pack(commands: list[tuple[Any, ...]]) -> bytes:
    """RESP as the general loop of pack_commands built it, one argument at a time."""
    out = b""
    for command in commands:
        out += b"*%d\r\n" % len(command)
        for arg in command:
            if isinstance(arg, str):
                data = arg.encode("utf-8", "surrogateescape")
            elif isinstance(arg, bytes):
                data = arg
            else:
                data = str(arg).encode()
            out += b"$%d\r\n%s\r\n" % (len(data), data)
    return out


_ARGS = st.one_of(
    st.text(),
    st.text(alphabet=st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF)),  # surrogateescape
    st.binary(),
    st.integers(),
)


@given(st.lists(st.lists(_ARGS, min_size=1, max_size=5).map(tuple), max_size=20))
def test_pack_commands_is_resp_of_every_argument(commands: list[tuple[Any, ...]]) -> None:
    assert resp.pack_commands(commands) == reference_pack(commands)


@pytest.mark.parametrize("feed_bytes", [1, 7, 1024, resp.FEED_BYTES])
def test_replies_of_any_size_come_back_whole_whatever_the_feed_slices(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, feed_bytes: int
) -> None:
    """Values from empty to several reads long, pipelined, read back exactly: a reply split
    across slices and across reads is put together by hiredis."""
    monkeypatch.setattr(resp, "FEED_BYTES", feed_bytes)
    sizes = [0, 1, 700, 16_383, 16_384, 16_385, 100_000, 3 << 20, 5]
    if feed_bytes < 1024:
        sizes = [s for s in sizes if s < 200_000]  # a byte at a time: keep it quick
    values = {f"resp-{i}": bytes([i % 251]) * size for i, size in enumerate(sizes)}
    redis_client.mset(values)
    names = list(values) * 3 + ["resp-missing"]
    replies = redisio.pipelined(redis_client, [("GET", name) for name in names])
    assert replies == [values.get(name) for name in names]
    wrong = redisio.pipelined(redis_client, [("HGET", "resp-0", "f"), ("GET", "resp-4")])
    assert isinstance(wrong[0], Exception) and wrong[1] == values["resp-4"]
