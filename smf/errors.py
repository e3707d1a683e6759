"""Error types: bad frames (the peer broke the protocol) and RPC statuses (a call failed)."""

from __future__ import annotations

from typing import ClassVar


class SmfError(Exception):
    """Base class of every error this package raises on purpose."""


# --------------------------------------------------------------------------- bad frames


class FrameError(SmfError, ValueError):
    """A frame header or body violates the wire format; the connection cannot continue.

    ``field`` names the header field at fault and ``value`` is what the peer sent.
    """

    def __init__(self, field: str, value: int, reason: str) -> None:
        super().__init__(f"bad frame: {field}={value}: {reason}")
        self.field = field
        self.value = value
        self.reason = reason


class BadCompression(FrameError):
    def __init__(self, value: int) -> None:
        super().__init__("compression", value, "unknown compression (valid: 0, 1, 2, 3)")


class BadFlags(FrameError):
    def __init__(self, value: int) -> None:
        super().__init__(
            "bitflags",
            value,
            "unknown bits or a combination not allowed here (defined: bit 0 payload headers; "
            "bits 1-5 STREAM, OPEN, END, CANCEL, CREDIT on a stream, once the client opened "
            "one: see docs/streams.md)",
        )


class BadSize(FrameError):
    def __init__(self, value: int) -> None:
        super().__init__(
            "size", value, "a body is never empty (an empty message is an empty table)"
        )


class BadMeta(FrameError):
    def __init__(self, value: int) -> None:
        super().__init__("meta", value, "meta (wire id or status) must not be 0")


class ChecksumMismatch(FrameError):
    def __init__(self, expected: int, actual: int) -> None:
        super().__init__("checksum", expected, f"body hashes to {actual} (xxhash64 & 0xFFFFFFFF)")
        self.actual = actual


class FrameTooLarge(FrameError):
    def __init__(self, value: int, limit: int) -> None:
        super().__init__("size", value, f"above the configured maximum of {limit} bytes")
        self.limit = limit


# --------------------------------------------------------------------------- RPC statuses


class RpcError(SmfError):
    """A call finished with a non-200 status. ``message`` is the peer's error text."""

    status: int = 0
    _by_status: ClassVar[dict[int, type[RpcError]]] = {}

    def __init__(self, message: str = "", status: int | None = None) -> None:
        if status is not None:
            self.status = status
        super().__init__(f"{self.status}: {message}" if message else str(self.status))
        self.message = message

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if cls.status:
            RpcError._by_status.setdefault(cls.status, cls)

    @staticmethod
    def from_status(status: int, message: str) -> RpcError:
        """The most specific error type for ``status`` (plain ``RpcError`` when unknown)."""
        cls = RpcError._by_status.get(status)
        if cls is None:
            return RpcError(message, status)
        return cls(message)


class BadRequest(RpcError):
    status = 400


class NotFound(RpcError):
    status = 404


class DeadlineExceeded(RpcError, TimeoutError):
    status = 408


class PayloadTooLarge(RpcError):
    status = 413


class InternalError(RpcError):
    status = 500


class Unimplemented(RpcError):
    status = 501


class Unavailable(RpcError):
    status = 503


class Unsupported(RpcError):
    status = 505


BODY_PREFIX = 32
"""At most this many bytes of an unreadable reply body go into an error message."""


def reply_text(status: int, body: bytes | bytearray | memoryview) -> str:
    """The message of the ``RpcError`` for a non-200 reply.

    A known status with a printable UTF-8 body (what smf servers send) gives that text.
    Anything else (a status no ``RpcError`` class declares, such as smf-java's echo of
    the request's wire id, or a binary body) names the status and shows at most
    ``BODY_PREFIX`` bytes of the body, escaped, so the message stays printable.
    """
    raw = bytes(body)
    known = status in RpcError._by_status
    if known:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            if text.replace("\n", "").replace("\t", "").isprintable():
                return text
    shown = repr(raw[:BODY_PREFIX]) + ("..." if len(raw) > BODY_PREFIX else "")
    if known:
        return f"binary body of {len(raw)} bytes: {shown}"
    return (
        f"unknown status {status} (not an smf status: is the peer an smf server?), "
        f"body of {len(raw)} bytes: {shown}"
    )


class ConnectionLost(SmfError, ConnectionError):
    """The connection closed (or could not be made) while a call was pending."""
