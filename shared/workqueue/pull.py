"""Pull requests kept open for a queue's free slots, so that requests arrive as they are published.

nats-py's ``fetch`` asks once per call: a "no wait" pull request, then, when nothing was
waiting, a lingering one; each returned its status message ("no messages", "request timeout")
besides the requests it carried. In a burst, where requests trickle in one at a time, that was
about two messages through nats-server on top of every request a worker ran (bench/README.md,
"Persistent pulls"). Like nats.go's ``Consume``, a queue now keeps pull requests (JetStream's
``CONSUMER.MSG.NEXT``) open for its free slots instead: the server hands each request to a
worker as it is published, and no status message comes while requests keep coming.

:class:`PullBook` is the bookkeeping, pure and with an injected clock. ``outstanding`` counts
the messages asked for and not come yet: a delivery takes one off, and the status that ends a
pull request unfilled (408 when it expired, 409 when the server dropped it) takes off what the
request still owed, from its ``Nats-Pending-Messages`` header. A queue asks for more when its
free slots exceed what it is owed (topping up only from half its slots while some are owed, so
that a busy queue sends one pull request per few runs, not one per run). Every pull request
expires after ``expires`` seconds (the queue's ``pull_expires``), so a lower limit (the yield
policy, yielding.py), a dropped connection or a recreated consumer takes effect within that
time: when every pull request sent would have ended by now, whatever is still counted as owed
is forgotten (its end was lost with a connection).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import orjson

Clock = Callable[[], float]

STATUS = "Status"
PENDING_MESSAGES = "Nats-Pending-Messages"
# Status codes that end a pull request: expired (408), dropped by the server (409: the
# consumer deleted, a leader change, too many waiting requests...).
ENDED = ("408", "409")
NO_RESPONDERS = "503"  # nobody serves the consumer's pull requests: it does not exist
# Seconds past a pull request's expiry by which its end must have come.
GRACE = 1.0


def next_subject(stream: str, durable: str) -> str:
    """Where a pull request for ``durable`` on ``stream`` is published."""
    return f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"


def pull_request(batch: int, *, expires: float) -> bytes:
    """A pull request for ``batch`` messages that the server ends after ``expires`` seconds."""
    return orjson.dumps({"batch": batch, "expires": int(expires * 1e9)})


@dataclass
class PullBook:
    """What one queue has asked for and not received: when to ask for more, and how much."""

    expires: float
    clock: Clock = time.monotonic
    outstanding: int = 0
    _last_sent: float = field(default=-math.inf)

    def to_ask(self, free: int) -> int:
        """How many messages to ask for now, with ``free`` slots (0: none yet)."""
        if self.outstanding and self.clock() > self._last_sent + self.expires + GRACE:
            self.outstanding = 0  # every request sent has ended; its end was lost
        want = free - self.outstanding
        if want <= 0:
            return 0
        if self.outstanding and 2 * want < free:
            return 0  # still owed more than half of what the free slots could take
        return want

    def sent(self, batch: int) -> None:
        self.outstanding += batch
        self._last_sent = self.clock()

    def delivered(self) -> None:
        self.outstanding = max(0, self.outstanding - 1)

    def ended(self, headers: Mapping[str, str]) -> None:
        """A status ended one pull request: take off what it still owed (all, unknown)."""
        try:
            unfilled = int(headers.get(PENDING_MESSAGES, ""))
        except ValueError:
            unfilled = self.outstanding
        self.outstanding = max(0, self.outstanding - unfilled)

    def open_for(self) -> float:
        """Seconds until every pull request still owing messages has expired (0: none)."""
        if not self.outstanding:
            return 0.0
        return max(0.0, self._last_sent + self.expires - self.clock())

    def reset(self) -> None:
        """Nothing asked for is owed any more (the consumer is gone, or the connection)."""
        self.outstanding = 0
