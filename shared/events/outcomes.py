"""The outcome of one reconcile, as the reconciler publishes it and the status service reads it.

Outcomes go to ``mcop.outcomes.<controller>.<namespace>.<name>`` on the events stream, so they
are part of the audit history too, and the newest one per CR is a direct get by subject away.
The body is this model as camelCase JSON; the headers are CloudEvents attributes (type
``io.memcached-operator.reconcile.outcome``) plus the trace context of the reconcile.

An outcome that would tell a reader nothing new (:meth:`Outcome.same_news`: the newest stored
one already says the same about the same CR and generation, and the reconcile wrote nothing)
is not stored again: resyncs and status writes reconcile every CR again and again, and the
audit stream is bounded, so a copy per no-op would push real history out of it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from memcached_operator.shared.bus.subjects import ObjectKey

OutcomeResult = Literal["success", "error", "deadlettered", "gone"]
# The reason of a "deadlettered" outcome, and of the Degraded condition the status service
# makes of it; the watcher's resync recognises a dead-lettered CR by it.
DEAD_LETTERED = "DeadLettered"


class Outcome(BaseModel):
    """What the reconciler published after handling one request for a CR.

    ``result`` is "success", "error" (a failure it reports, with a CamelCase ``reason``),
    "deadlettered" (it gave up retrying) or "gone" (the CR no longer exists).
    """

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    key: str = Field(min_length=1)
    uid: str = Field(min_length=1)
    generation: int = Field(ge=0)
    result: OutcomeResult
    reason: str = ""
    message: str = ""
    duration_seconds: float = Field(default=0.0, ge=0)
    trace_id: str = ""
    time: datetime

    @field_validator("key")
    @classmethod
    def _namespaced_key(cls, value: str) -> str:
        namespace, sep, name = value.partition("/")
        if not sep or not namespace or not name:
            raise ValueError(f"key must be 'namespace/name', got {value!r}")
        return value

    @field_validator("time")
    @classmethod
    def _aware_time(cls, value: datetime) -> datetime:
        # RFC3339 always carries an offset; a bare local time would be ambiguous across pods.
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value

    @property
    def object_key(self) -> ObjectKey:
        return ObjectKey.parse(self.key)

    def same_news(self, other: Outcome | None) -> bool:
        """Whether ``other`` already says what this one says: the same CR (uid), generation,
        result, reason and message. Time, duration and trace differ between any two."""
        return other is not None and (
            other.key,
            other.uid,
            other.generation,
            other.result,
            other.reason,
            other.message,
        ) == (self.key, self.uid, self.generation, self.result, self.reason, self.message)

    @property
    def failed(self) -> bool:
        return self.result in ("error", "deadlettered")

    @classmethod
    def from_json(cls, data: bytes | str) -> Outcome:
        """Parse a published outcome; raises ValueError naming every field that is wrong."""
        try:
            return cls.model_validate_json(data)
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in error['loc']) or 'body'}: {error['msg']}"
                for error in err.errors()
            )
            raise ValueError(f"not a reconcile outcome: {problems}") from err

    def to_json(self) -> bytes:
        """The wire form (camelCase), the inverse of :meth:`from_json`."""
        return self.model_dump_json(by_alias=True).encode()
