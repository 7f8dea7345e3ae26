"""esctl's error types: messages added to on the way up keep what they say across processes."""

from __future__ import annotations

import pickle

from esctl.errors import ConnectionFailed, EsctlError, ServerError


def test_add_appends_to_the_message_and_str_and_args() -> None:
    error = ServerError("OOM command not allowed", hint="raise maxmemory")
    assert error.add("compress had compressed 3 values") is error
    assert str(error) == "OOM command not allowed; compress had compressed 3 values"
    assert error.args == (str(error),)
    assert error.hint == "raise maxmemory"


def test_reword_replaces_the_message() -> None:
    error = EsctlError("lost the connection")
    error.reword(f"the migration finished; then the prune stopped: {error.message}")
    assert str(error) == "the migration finished; then the prune stopped: lost the connection"
    assert error.args == (str(error),)


def test_an_added_to_error_survives_pickling_with_its_fields() -> None:
    # --workers sends errors from worker processes to the parent
    error = ConnectionFailed("connection reset", server="redis://127.0.0.1:1/0", hint="retry")
    error.add("prune had deleted 4 aggregates")
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is ConnectionFailed
    assert str(back) == "connection reset; prune had deleted 4 aggregates"
    assert back.args == (str(back),)
    assert (back.server, back.hint) == ("redis://127.0.0.1:1/0", "retry")
