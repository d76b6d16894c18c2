"""A controller's identity: one value from which every name it goes by is derived.

A controller (``reconcile``, ``status``) is known on the bus by the subjects of its requests,
outcomes and dead letters, the durable consumer its workers share, the prefix of its leases,
and the label of its metrics. They are all derived here from its name, so that no service
rebuilds them from strings (and no two places can disagree).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from memcached_operator.shared.bus.streams import LEASES_SUBJECT_PREFIX
from memcached_operator.shared.bus.subjects import (
    DEADLETTER,
    OUTCOMES,
    PREFIX,
    REQUESTS,
    ObjectKey,
    encode_token,
    subject,
)

_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")

# Where runs of one object are kept apart: across every process of the controller (a lease in
# the lease bucket, lease.py), or only within each process (process_lease.py), for a
# controller whose writes are all conditional on the object's resourceVersion.
Exclusive = Literal["fleet", "process"]


@dataclass(frozen=True)
class Controller:
    """One controller of the pipeline, by name (a lower-case DNS label), the service that runs
    it (the instrumentation scope of its spans; its name when not given), and where its runs of
    one object are kept apart (:data:`Exclusive`: "fleet" takes a lease per run)."""

    name: str
    service: str = ""
    exclusive: Exclusive = "fleet"

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"controller name must be a lower-case DNS label: {self.name!r}")
        if self.exclusive not in ("fleet", "process"):
            raise ValueError(f"exclusive must be 'fleet' or 'process', not {self.exclusive!r}")
        if not self.service:
            object.__setattr__(self, "service", self.name)

    def __str__(self) -> str:
        return self.name

    @classmethod
    def of(cls, controller: Controller | str) -> Controller:
        """``controller`` as a value: one of the pipeline's by its name, or a new one."""
        if isinstance(controller, Controller):
            return controller
        return _PIPELINE.get(controller) or cls(controller)

    @property
    def leased(self) -> bool:
        """Whether its runs take a lease in the lease bucket (``exclusive="fleet"``)."""
        return self.exclusive == "fleet"

    @property
    def durable(self) -> str:
        """The durable consumer all of its workers pull from (also the consumer group name of
        its spans)."""
        return f"mcop-{self.name}"

    @property
    def metrics_label(self) -> str:
        """The ``name``/``controller`` label of its metrics (controller-runtime's)."""
        return self.name

    @property
    def tracer_name(self) -> str:
        """The instrumentation scope of the spans its service makes."""
        return f"memcached-operator.{self.service}"

    @property
    def requests(self) -> str:
        """The subject family of its requests, without the object: ``mcop.requests.<name>``."""
        return f"{PREFIX}.{REQUESTS}.{self.name}"

    @property
    def outcomes(self) -> str:
        """The subject family of its outcomes: ``mcop.outcomes.<name>``."""
        return f"{PREFIX}.{OUTCOMES}.{self.name}"

    @property
    def filter_subject(self) -> str:
        """The filter of its consumer: every request of this controller."""
        return f"{self.requests}.>"

    @property
    def lease_prefix(self) -> str:
        """The KV subject prefix of its leases in the lease bucket."""
        return f"{LEASES_SUBJECT_PREFIX}{self.name}."

    def request_subject(self, key: ObjectKey) -> str:
        return subject(REQUESTS, self.name, key)

    def outcome_subject(self, key: ObjectKey) -> str:
        return subject(OUTCOMES, self.name, key)

    def deadletter_subject(self, key: ObjectKey | None) -> str:
        """Where its dead letters go; ``None`` for a request whose subject had no key."""
        if key is None:
            return f"{PREFIX}.{DEADLETTER}.{self.name}._._"
        return subject(DEADLETTER, self.name, key)

    def lease_name(self, key: ObjectKey) -> str:
        """The KV key of an object's lease: the subject tokens, with ``~`` (not allowed in a KV
        key) as ``=``."""
        tokens = (self.name, encode_token(key.namespace), encode_token(key.name))
        return ".".join(tokens).replace("~", "=")


# The pipeline's two controllers. shared/api/contract.py derives its names from these.
RECONCILE_CONTROLLER = Controller("reconcile", service="reconciler")
# Every status write is conditional on the CR's resourceVersion (services/status/service.py):
# of two replicas refreshing one CR only one can write, so a lease per run would buy nothing.
STATUS_CONTROLLER = Controller("status", service="status", exclusive="process")
_PIPELINE = {c.name: c for c in (RECONCILE_CONTROLLER, STATUS_CONTROLLER)}
