"""Whether two status writers ever wrote one CR at the same time, from the API server's audit log.

The local API server logs every write of ``memcacheds/status`` (deploy/local/cluster.py's audit
policy) with when the request arrived and when its response was complete. Two writes of one CR
whose spans overlap were concurrent: with several status replicas, the per-object lease of the
work queue must rule that out, across NATS node losses and leader changes too.
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from datetime import datetime
from pathlib import Path


def status_write_spans(
    audit_log: Path, namespace: str
) -> dict[str, list[tuple[datetime, datetime]]]:
    """Each CR's status writes in ``namespace``: (received, completed), in order."""
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
        ):
            start = datetime.fromisoformat(entry["requestReceivedTimestamp"])
            spans[ref.get("name", "")].append(
                (start, datetime.fromisoformat(entry["stageTimestamp"]))
            )
    for writes in spans.values():
        writes.sort()
    return spans


def overlapping(spans: dict[str, list[tuple[datetime, datetime]]]) -> list[str]:
    """The CRs two of whose writes overlapped in time."""
    return sorted(
        name
        for name, writes in spans.items()
        if any(start < end for (_, end), (start, _) in itertools.pairwise(writes))
    )
