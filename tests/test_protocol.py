"""The worker protocol: typed messages, a compact wire form, pickling at every protocol."""

from __future__ import annotations

import pickle

import pytest

from pipeobs.datasets import MiniBatch
from pipeobs.protocol import (
    MESSAGES,
    Bye,
    Debug,
    Debugging,
    Hello,
    InitFailed,
    LoadFailed,
    Ready,
    Result,
    Setup,
    Stop,
    Tasks,
    decode,
    encode,
)

ERROR = {"type": "ValueError", "message": "bad", "location": "score.py:3 in run", "traceback": "Traceback..."}
SAMPLES = [
    Hello("0/process000", 123),
    Setup("tok", "00-" + "1" * 32 + "-" + "2" * 16 + "-01", "score.py", ".", ["--x", "1"], "append_row", None, "",
          [], "/tmp/x", "INFO", {"step_id": "s", "node": 0, "name": "process000"}),
    Tasks([(MiniBatch(id=3, input_index=0, kind="file", files=("a.txt",)), 1)]),
    Stop(),
    Ready(0.25),
    InitFailed(ERROR),
    LoadFailed(ERROR),
    Result(3, 1, {"status": "RUN_DONE", "total": 1, "succeeded": 1, "rows": b"a\n"}),
    Bye(None, b"profile"),
    Debug(3, 1, "127.0.0.1", 0),
    Debugging(3, 1, "127.0.0.1", 5678),
]


class TestProtocol:
    def test_every_message_kind_has_a_sample(self) -> None:
        """The samples below cover the whole protocol (a new kind needs one)."""
        assert {type(m) for m in SAMPLES} == set(MESSAGES)

    @pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
    @pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
    def test_each_message_survives_encode_pickle_decode(self, message: object, protocol: int) -> None:
        """What crosses the channel pickles at every protocol and decodes to an equal typed message."""
        wire = pickle.loads(pickle.dumps(encode(message), protocol))  # type: ignore[arg-type]

        decoded = decode(wire)

        assert type(decoded) is type(message) and decoded == message

    def test_the_wire_form_is_a_plain_tuple(self) -> None:
        """No class reference on the wire: a result pickles as cheaply as a tuple."""
        wire = encode(Result(1, 1, {}))

        assert type(wire) is tuple and type(wire[1]) is tuple
        assert b"Result" not in pickle.dumps(wire)

    @pytest.mark.parametrize("wire", [("result", 1), (99, ()), (7, (1,)), None])
    def test_anything_else_is_refused_with_a_value_error(self, wire: object) -> None:
        """A stranger's tuple is not mistaken for a message."""
        with pytest.raises(ValueError, match="not a pipeobs worker message"):
            decode(wire)  # type: ignore[arg-type]
