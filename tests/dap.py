"""A test client for the Debug Adapter Protocol (what VS Code speaks to debugpy): JSON messages framed by a
Content-Length header, over a socket."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any


class DapClient:
    """Requests go out numbered; a message read while waiting for another is kept until asked for, so an event
    that arrives before the response awaited (or the reverse) is not lost. ``transcript`` lists the traffic."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=60)
        self.stream = self.sock.makefile("rwb")
        self.seq = 0
        self.unread: list[dict[str, Any]] = []
        self.transcript: list[str] = []

    def send(self, command: str, **arguments: Any) -> int:
        """Send a request; its ``seq``, for :meth:`response`."""
        self.seq += 1
        body = json.dumps({"seq": self.seq, "type": "request", "command": command, "arguments": arguments}).encode()
        self.stream.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        self.stream.flush()
        self.transcript.append(f"-> {command} {json.dumps(arguments)}")
        return self.seq

    def request(self, command: str, **arguments: Any) -> dict[str, Any]:
        """Send a request and wait for its successful response."""
        return self.response(self.send(command, **arguments))

    def response(self, seq: int) -> dict[str, Any]:
        answer = self._next(lambda m: m["type"] == "response" and m["request_seq"] == seq)
        assert answer["success"], answer
        return answer

    def event(self, name: str) -> dict[str, Any]:
        return self._next(lambda m: m["type"] == "event" and m["event"] == name)

    def attach(self, breakpoints: dict[Path, int] | None = None, just_my_code: bool = True) -> None:
        """initialize, attach, setBreakpoints, configurationDone: VS Code's opening of an attach session."""
        self.request("initialize", clientID="pipeobs-tests", adapterID="debugpy", pathFormat="path",
                     linesStartAt1=True, columnsStartAt1=True)
        attach = self.send("attach", justMyCode=just_my_code)
        self.event("initialized")
        for path, line in (breakpoints or {}).items():
            body = self.request("setBreakpoints", source={"path": str(path)}, breakpoints=[{"line": line}])["body"]
            assert body["breakpoints"][0]["verified"], body
        self.request("configurationDone")
        self.response(attach)

    def disconnect(self) -> None:
        """End the session, as VS Code does, and close the socket."""
        self.request("disconnect")
        self.close()

    def close(self) -> None:
        self.stream.close()
        self.sock.close()

    def _next(self, wanted: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        while True:
            found = next((m for m in self.unread if wanted(m)), None)
            if found is not None:
                self.unread.remove(found)
                return found
            self.unread.append(self._receive())

    def _receive(self) -> dict[str, Any]:
        length = 0
        while (header := self.stream.readline()) not in (b"\r\n", b""):
            name, _, value = header.decode().partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        if not length:
            raise ConnectionError("the debug adapter closed the connection:\n" + "\n".join(self.transcript))
        message: dict[str, Any] = json.loads(self.stream.read(length))
        kind = message.get("event") or f"{message.get('command')} response"
        self.transcript.append(f"<- {kind} {json.dumps(message.get('body', {}))[:200]}")
        return message
