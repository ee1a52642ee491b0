"""A push that the server or the network refused, as one line (exit status 2), and short causes.

The libraries' own messages are long (urllib3 nests three exceptions in one text) and some name
request headers; medsynth words its own line from the cause, so no library text, and never a
credential, reaches a message.
"""

from __future__ import annotations

import socket
import ssl

from medsynth.errors import MedsynthError


class PushError(MedsynthError):
    """A refused login, an unreachable server, or an instance the server did not store (exit 2).

    ``stored``: instances this push stored (and recorded) before it stopped.
    """

    def __init__(self, message: str, stored: int = 0) -> None:
        super().__init__(message)
        self.stored = stored


def network_cause(exc: BaseException) -> str:
    """A few words for why a connection failed: ``connection refused``, ``timed out``, ..."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ssl.SSLCertVerificationError):
            return f"TLS certificate not trusted ({e.verify_message or 'verify failed'})"
        if isinstance(e, ssl.SSLError):
            return f"TLS failed ({e.reason or type(e).__name__})"
        if isinstance(e, ConnectionRefusedError):
            return "connection refused"
        if isinstance(e, ConnectionResetError):
            return "connection reset by the server"
        if isinstance(e, socket.gaierror):
            return "host name not found"
        if isinstance(e, TimeoutError | socket.timeout):
            return "timed out"
        todo += [e.__cause__, e.__context__, *[a for a in getattr(e, "args", ()) if isinstance(a, BaseException)]]
        reason = getattr(e, "reason", None)
        if isinstance(reason, BaseException):
            todo.append(reason)
    name = type(exc).__name__
    if "Timeout" in name:
        return "timed out"
    if "SSL" in name:
        return "TLS failed"
    return f"connection failed ({name})"
