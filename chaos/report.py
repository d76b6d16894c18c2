"""What a chaos run found, as a user would check it: lost, duplicated and stuck CRs, events,
dead letters, leaked processes, concurrent status writes, and every fault injected (chaos/run.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Report:
    n: int
    namespace: str
    converged: int = 0
    available: int = 0
    deployments: int = 0
    wrong_deployments: list[str] = field(default_factory=list)
    missing_added_events: list[str] = field(default_factory=list)
    duplicate_added_events: list[str] = field(default_factory=list)
    duplicate_details: dict[str, list[str]] = field(default_factory=dict)
    dead_letters: int = 0
    # One line per dead letter: subject, reason, error (what a user would read with `dlq show`).
    dead_letter_details: list[str] = field(default_factory=list)
    leaked_pids: list[int] = field(default_factory=list)
    kills: int = 0
    restarts: list[str] = field(default_factory=list)
    deliveries: int | None = None
    seconds_to_converge: float | None = None
    nats_nodes: int = 1
    spec_changes: int = 0
    status_replicas: int = 1
    overlapping_status_writes: list[str] = field(default_factory=list)
    status_writes: int = 0
    refused_status_writes: int = 0
    faults: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return self.n - self.converged

    @property
    def duplicated(self) -> int:
        extra = max(0, self.deployments - self.n)
        return extra + len(self.duplicate_added_events)

    @property
    def stuck(self) -> int:
        return self.n - self.available

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.duplicated == 0
            and self.stuck == 0
            and not self.wrong_deployments
            and not self.missing_added_events
            and self.dead_letters == 0
            and not self.leaked_pids
            and not self.overlapping_status_writes
        )

    def lines(self) -> list[str]:
        return [
            f"CRs: {self.n}; converged (one correct Deployment): {self.converged}; "
            f"Available: {self.available}; Deployments in the namespace: {self.deployments}",
            f"lost {self.lost}, duplicated {self.duplicated}, stuck {self.stuck}",
            f"time to converge: {self.seconds_to_converge} s from the first create",
            f"reconcilers SIGKILLed: {self.kills}; restarted: {', '.join(self.restarts)}",
            f"reconcile requests delivered (all workers, redeliveries included): {self.deliveries}",
            f"CRs without an 'added' event: {len(self.missing_added_events)}; with more than "
            f"one: {len(self.duplicate_added_events)}; dead letters: {self.dead_letters}",
            *(f"  {name}: {'; '.join(seen)}" for name, seen in self.duplicate_details.items()),
            *(f"  dead letter {line}" for line in self.dead_letter_details),
            f"leaked processes: {self.leaked_pids or 'none'}",
            f"NATS nodes: {self.nats_nodes}; spec changes during the chaos: {self.spec_changes}",
            f"status replicas: {self.status_replicas}; status writes: {self.status_writes} "
            f"(and {self.refused_status_writes} refused with a conflict); "
            f"CRs written by two at once (audit log): {len(self.overlapping_status_writes)}",
            *([f"faults injected ({len(self.faults)}):", *self.faults] if self.faults else []),
            "RESULT: " + ("PASS" if self.ok else "FAIL"),
        ]
