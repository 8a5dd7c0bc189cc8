"""Request bodies: media types, size limits and decompression (gzip, deflate), before any parsing.

Everything here is stdlib only and raises :class:`Refused` carrying the HTTP status to answer
with: 400 for a body that cannot be read (not gzip, truncated, empty), 413 past the size limit
(compressed or not), 415 for a media type or content encoding the endpoint does not take. The
endpoints raise it too (503 when the store cannot take the rows).
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator
from typing import Any

GZIP_MAGIC = b"\x1f\x8b"
DEFAULT_MAX_BODY = 10 * 1024 * 1024
TOO_DEEP = "JSON nested too deeply to read"  # json.loads hit the recursion limit
_GZIP_WBITS = 16 + zlib.MAX_WBITS
_ENCODINGS = {"": None, "identity": None, "gzip": "gzip", "x-gzip": "gzip", "deflate": "deflate"}


class Refused(Exception):
    """A request the endpoint answers with ``status`` and ``message`` instead of storing it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def media_type(content_type: str | None) -> str:
    """``application/json; charset=utf-8`` -> ``application/json`` (lower case, no parameters)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def content_encoding(header: str | None) -> str | None:
    """The body's compression (``gzip``/``deflate``/None); anything else is a 415."""
    name = (header or "").strip().lower()
    if name not in _ENCODINGS:
        raise Refused(415, f"unsupported Content-Encoding '{header}'; use gzip, deflate or none")
    return _ENCODINGS[name]


def check_length(header: str | None, max_body: int) -> None:
    """Refuse a declared Content-Length past the limit before reading a byte of it."""
    if header is None:
        return
    try:
        length = int(header)
    except ValueError:
        raise Refused(400, f"invalid Content-Length '{header}'") from None
    if length > max_body:
        raise Refused(413, too_large(max_body))


async def read_limited(chunks: AsyncIterator[bytes], max_body: int) -> bytes:
    """The raw body, refused as soon as it grows past ``max_body`` (chunked bodies included)."""
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > max_body:
            raise Refused(413, too_large(max_body))
        parts.append(chunk)
    return b"".join(parts)


def decode(raw: bytes, encoding: str | None, max_body: int) -> bytes:
    """The uncompressed body; gzip is also recognised by its magic bytes when not declared."""
    if encoding is None and raw.startswith(GZIP_MAGIC):
        encoding = "gzip"
    if encoding == "gzip":
        return _inflate_members(raw, max_body)
    if encoding == "deflate":
        try:
            return _inflate(zlib.decompressobj(zlib.MAX_WBITS), raw, max_body)
        except zlib.error:  # some clients send raw deflate, without the zlib header
            return _inflate(zlib.decompressobj(-zlib.MAX_WBITS), raw, max_body)
    return raw


def _inflate_members(raw: bytes, max_body: int) -> bytes:
    """Every gzip member of ``raw`` (``cat a.gz b.gz`` is one valid gzip stream)."""
    out = bytearray()
    rest = raw
    while rest:
        if not rest.startswith(GZIP_MAGIC):
            what = "body is not gzip" if not out else "data after the gzip stream"
            raise Refused(400, f"{what} (Content-Encoding: gzip)")
        member = zlib.decompressobj(_GZIP_WBITS)
        out += _inflate(member, rest, max_body - len(out))
        rest = member.unused_data
    return bytes(out)


def _inflate(stream: Any, data: bytes, limit: int) -> bytes:
    """Decompress one stream, never holding more than ``limit`` + 1 bytes of output (no zip bombs)."""
    out = bytearray()
    try:
        while True:
            out += stream.decompress(data, limit + 1 - len(out))
            if len(out) > limit:
                raise Refused(413, "body is too large once decompressed")
            data = stream.unconsumed_tail
            if stream.eof:
                return bytes(out)
            if not data:
                raise Refused(400, "compressed body is truncated")
    except zlib.error as exc:
        raise Refused(400, f"compressed body is corrupt: {exc}") from None


def too_large(max_body: int) -> str:
    return f"body is larger than {max_body} bytes"
