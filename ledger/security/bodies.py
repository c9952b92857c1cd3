"""Request bodies checked before they reach a method: bounded in size and decodable.

gRPC answers a deserializer that raises with INTERNAL "Exception deserializing request!"
and logs a traceback. A checked deserializer never raises: for a body it refuses it
returns a RefusedBody, which the interceptor answers with a named error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ledger.security.errors import InvalidRequest, Reason, ResourceExhausted, SecurityError

# Above any valid request: the largest, a batch of 1,000 transfers with every text field
# at its maximum length in 4-byte characters, is about 3 MB. gRPC's own
# max_receive_message_length is set a bit above this as a backstop (its refusal carries
# no ErrorInfo).
request_bytes_max = 4 * 1024 * 1024

Deserializer = Callable[[bytes], object]


@dataclass(frozen=True)
class RefusedBody:
    """A request body that was not decoded, and why (the bytes themselves are dropped)."""

    reason: Reason  # MESSAGE_TOO_LARGE or MALFORMED_REQUEST
    size_bytes: int
    size_bytes_max: int
    error_type: str = ""  # the decoder's exception class, for the log

    def error(self) -> SecurityError:
        """The refusal to answer the call with."""
        log_fields = {"size_bytes": self.size_bytes}
        if self.reason is Reason.MESSAGE_TOO_LARGE:
            return ResourceExhausted(
                self.reason,
                f"the request has {self.size_bytes} bytes; at most {self.size_bytes_max} are read",
                metadata={
                    "size_bytes": str(self.size_bytes),
                    "size_bytes_max": str(self.size_bytes_max),
                },
                log_fields=log_fields,
            )
        return InvalidRequest(
            self.reason,
            "the request body is not a valid message of the method's request type",
            log_fields={**log_fields, "error": self.error_type},
        )


def checked_deserializer(
    deserializer: Deserializer | None, size_bytes_max: int = request_bytes_max
) -> Deserializer:
    """`deserializer` that refuses bodies over size_bytes_max and never raises."""

    def deserialize(body: bytes) -> object:
        if len(body) > size_bytes_max:
            return RefusedBody(Reason.MESSAGE_TOO_LARGE, len(body), size_bytes_max)
        if deserializer is None:
            return body
        try:
            return deserializer(body)
        # Whatever a decoder raises (DecodeError, UnicodeDecodeError, RecursionError...)
        # means the same thing: the body is not a message of this type.
        except Exception as error:
            return RefusedBody(
                Reason.MALFORMED_REQUEST, len(body), size_bytes_max, type(error).__name__
            )

    return deserialize
