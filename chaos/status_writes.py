"""Whether two status writers ever wrote one CR at the same time, from the API server's audit log.

The local API server logs every write of ``memcacheds/status`` (deploy/local/cluster.py's audit
policy) with when the request arrived, when its response was complete and its code. Status
replicas hold no lease on a CR: each write is conditional on the resourceVersion it was folded
from, so two replicas may send writes of one CR at once, but the API server must accept only
one of them and refuse the other with a conflict (409). Two *accepted* writes of one CR whose
spans overlap would mean a write folded from a state another had already replaced: that must
not happen, across NATS node losses and leader changes too.
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from datetime import datetime
from pathlib import Path


def status_write_spans(
    audit_log: Path, namespace: str, *, refused: bool = False
) -> dict[str, list[tuple[datetime, datetime]]]:
    """Each CR's status writes in ``namespace`` the API server accepted (``refused``: those it
    refused with a conflict instead): (received, completed), in order."""
    spans: dict[str, list[tuple[datetime, datetime]]] = defaultdict(list)
    for line in audit_log.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line cut by a restart of the API server
        ref = entry.get("objectRef") or {}
        if (
            ref.get("resource") == "memcacheds"
            and ref.get("subresource") == "status"
            and ref.get("namespace") == namespace
            and entry.get("verb") in ("patch", "update")
            and entry.get("stage") == "ResponseComplete"
            and ((entry.get("responseStatus") or {}).get("code") == 409) == refused
        ):
            start = datetime.fromisoformat(entry["requestReceivedTimestamp"])
            spans[ref.get("name", "")].append(
                (start, datetime.fromisoformat(entry["stageTimestamp"]))
            )
    for writes in spans.values():
        writes.sort()
    return spans


def overlapping(spans: dict[str, list[tuple[datetime, datetime]]]) -> list[str]:
    """The CRs two of whose (accepted) writes overlapped in time."""
    return sorted(
        name
        for name, writes in spans.items()
        if any(start < end for (_, end), (start, _) in itertools.pairwise(writes))
    )
