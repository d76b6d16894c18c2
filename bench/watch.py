"""List+watch of one kind in one namespace for the harness and the floor client.

A deliberately plain reflector: list, hand every object over as ADDED, then watch from the
list's resourceVersion, resuming after a closed stream and relisting after 410 Gone. It is
what any client that must notice changes needs, and nothing more.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from memcached_operator.shared.kube.client import ApiError, JsonObject, KubeClient, Resource
from memcached_operator.shared.kube.watchlines import Oversized
from memcached_operator.shared.runtime.errors import TransientError

log = logging.getLogger("bench.watch")

OnEvent = Callable[[str, JsonObject], None]


async def watch_forever(
    kube: KubeClient,
    resource: Resource,
    *,
    namespace: str,
    on_event: OnEvent,
    synced: asyncio.Event | None = None,
    label_selector: str | None = None,
) -> None:
    rv = ""
    while True:
        try:
            if not rv:
                items, rv = await kube.list(
                    resource, namespace=namespace, label_selector=label_selector
                )
                for obj in items:
                    # List items lack apiVersion and kind; watch events carry them.
                    obj.setdefault("apiVersion", resource.api_version)
                    obj.setdefault("kind", resource.kind)
                    on_event("ADDED", obj)
                if synced is not None:
                    synced.set()
            async for event in kube.watch(
                resource,
                resource_version=rv,
                namespace=namespace,
                label_selector=label_selector,
                timeout_seconds=600,
            ):
                if isinstance(event, Oversized):
                    continue  # the bench's objects are small; a tenant's are not its business
                obj = event.get("object") or {}
                rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
                if event.get("type") != "BOOKMARK":
                    on_event(str(event.get("type")), obj)
        except ApiError as err:
            if err.status == 410:
                rv = ""
                continue
            log.warning("watch %s: %s", resource.plural, err)
            await asyncio.sleep(0.5)
        except TransientError as err:
            log.warning("watch %s: %s", resource.plural, err)
            await asyncio.sleep(0.5)
