"""The sequence of a stream's newest message on a subject filter, as the stream's leader holds it.

A barrier needs only a number: "the newest pod event of this namespace is at sequence N". nats-py's
``get_last_msg(direct=False)`` asks the leader (``STREAM.MSG.GET``, unlike a direct get, which any
replica may answer from behind) but then decodes the whole stored message, its body from base64
and its headers with the standard library's e-mail parser, for a number that is one field of the
reply. :func:`last_sequence` sends the same request without the headers (``no_hdr``) and reads
only ``message.seq`` from the reply.
"""

from __future__ import annotations

from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import APIError

from memcached_operator.shared.bus import connection
from memcached_operator.shared.runtime import jsonc

# JetStream's error code for "no message found" (a 404, as a missing stream is too).
NO_MESSAGE_FOUND = 10037


async def last_sequence(
    js: JetStreamContext, stream: str, subject: str, *, timeout: float = 5.0
) -> int:
    """Sequence of the newest message of ``stream`` on ``subject`` (wildcards allowed) as its
    leader holds it; 0 when there is none. Another error of the JetStream API raises its
    :class:`~nats.js.errors.APIError`; a reply that is not one raises ValueError."""
    body = jsonc.dumps({"last_by_subj": subject, "no_hdr": True})
    reply = await connection.client_of(js).request(
        f"{connection.api_prefix(js)}.STREAM.MSG.GET.{stream}", body, timeout=timeout
    )
    doc: Any = jsonc.loads(reply.data or b"")
    if not isinstance(doc, dict):
        raise ValueError(f"not a STREAM.MSG.GET reply: {reply.data[:100]!r}")
    error = doc.get("error")
    if isinstance(error, dict):
        if error.get("err_code") == NO_MESSAGE_FOUND:
            return 0
        APIError.from_error(error)  # raises
    message = doc.get("message")
    seq = message.get("seq") if isinstance(message, dict) else None
    if not isinstance(seq, int) or seq < 0:
        raise ValueError(f"no sequence in the STREAM.MSG.GET reply: {reply.data[:100]!r}")
    return seq
