"""List+watch of one kind, turned into a gap-free sequence of changes.

The model is client-go's reflector: list, then watch from the list's resourceVersion with
bookmarks on, resuming from the last resourceVersion seen after every disconnect, relisting
when the API server answers 410 Gone, and reconnecting with capped exponential backoff and
jitter. What it adds is a `known` map (key -> uid and resourceVersion of the last change that
reached the stream), seeded from the stream itself at start-up: a list is diffed against it,
so a restarted or second watcher emits exactly the changes the stream lacks — including
deletions that happened while no watcher ran — and nothing it already holds.

A list is read and diffed a page at a time, each page within a byte bound (``max_page``:
KubeClient.list_pages asks for fewer objects per page when one is longer), so that the memory
a relist takes is one page's, however many large objects a tenant labels for us to watch.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from memcached_operator.shared.bus.subjects import ObjectKey
from memcached_operator.shared.kube.client import (
    DEFAULT_MAX_PAGE,
    ApiError,
    JsonObject,
    KubeClient,
    Resource,
)
from memcached_operator.shared.kube.watchlines import (
    DEFAULT_MAX_LINE,
    Identity,
    Oversized,
    identify,
)
from memcached_operator.shared.runtime.backoff import retry_delay
from memcached_operator.shared.runtime.errors import TransientError

log = logging.getLogger("memcached_operator.watcher")


@dataclass(frozen=True)
class Known:
    uid: str
    resource_version: str


Emit = Callable[[str, JsonObject, "Known | None"], Awaitable[None]]
# Sees every object listed or watched, changed or not (``deleted`` for a deletion).
Observe = Callable[[JsonObject, bool], None]
# Told of a watch event too long to read (shared/kube/watchlines.py), and what it was about
# when its first bytes say (None: they do not).
Refuse = Callable[[Oversized, "Identity | None"], Awaitable[None]]


def key_of(obj: JsonObject) -> ObjectKey:
    meta = obj.get("metadata") or {}
    return ObjectKey(str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def known_of(obj: JsonObject) -> Known:
    meta = obj.get("metadata") or {}
    return Known(str(meta.get("uid") or ""), str(meta.get("resourceVersion") or ""))


def diff_page(
    known: dict[ObjectKey, Known], listed: list[JsonObject], seen: set[ObjectKey]
) -> list[tuple[str, JsonObject]]:
    """The additions and modifications of one page of a list, in list order; adds the page's
    keys to ``seen`` (what :func:`deletions` leaves out once every page is read). Over every
    page and then the deletions, these are the changes that take the stream from ``known`` to
    the listed state."""
    changes: list[tuple[str, JsonObject]] = []
    for obj in listed:
        key = key_of(obj)
        seen.add(key)
        now = known_of(obj)
        before = known.get(key)
        if before is None:
            changes.append(("added", obj))
        elif before.uid != now.uid:
            # Deleted and re-created under the same name while nobody watched.
            changes.append(("deleted", _stub(key, before)))
            changes.append(("added", obj))
        elif before.resource_version != now.resource_version:
            changes.append(("modified", obj))
    return changes


def deletions(known: dict[ObjectKey, Known], seen: set[ObjectKey]) -> list[tuple[str, JsonObject]]:
    """The objects `known` holds that no page of the list had, as deletions (with a stub)."""
    return [("deleted", _stub(key, known[key])) for key in sorted(set(known) - seen)]


def _stub(key: ObjectKey, known: Known) -> JsonObject:
    return {
        "metadata": {
            "namespace": key.namespace,
            "name": key.name,
            "uid": known.uid,
            "resourceVersion": known.resource_version,
        }
    }


def _delay(attempt: int, retry_after: float | None) -> float:
    return retry_delay(
        attempt=attempt, base=0.5, cap=30.0, retry_after=retry_after, jitter=random.random()
    )


class Informer:
    """Runs list+watch for one resource and hands every change to `emit` in order."""

    def __init__(
        self,
        kube: KubeClient,
        resource: Resource,
        *,
        emit: Emit,
        known: dict[ObjectKey, Known],
        namespace: str | None = None,
        label_selector: str | None = None,
        watch_timeout: int = 300,
        observe: Observe | None = None,
        refuse: Refuse | None = None,
        max_line: int = DEFAULT_MAX_LINE,
        max_page: int = DEFAULT_MAX_PAGE,
    ) -> None:
        self.kube = kube
        self.resource = resource
        self.emit = emit
        self.known = known
        self.namespace = namespace
        self.label_selector = label_selector
        self.watch_timeout = watch_timeout
        self.observe = observe
        self.refuse = refuse
        self.max_line = max_line
        self.max_page = max_page
        self.synced = asyncio.Event()
        self.resource_version = ""

    async def _apply(self, change: str, obj: JsonObject) -> None:
        key = key_of(obj)
        before = self.known.get(key)
        if self.observe is not None:
            self.observe(obj, change == "deleted")
        await self.emit(change, obj, before)
        if change == "deleted":
            self.known.pop(key, None)
        else:
            self.known[key] = known_of(obj)

    async def _oversized(self, line: Oversized) -> None:
        """A watch event too long to read: the watch goes on. A deletion reaches the stream as
        a relist's does (with a stub of the object); any other change is handed to ``refuse``
        (the watcher dead-letters it) and left out of ``known``, so a relist, whose objects
        are read whole, emits it again."""
        who = identify(line.prefix)
        log.error(
            "a %s watch event of %d bytes is over the %d-byte bound; not read",
            self.resource.plural,
            line.size,
            self.max_line,
            extra={"object": f"{who.namespace}/{who.name}" if who else "unknown"},
        )
        if who is not None:
            key = ObjectKey(who.namespace, who.name)
            if who.change == "DELETED" and key in self.known:
                await self._apply("deleted", _stub(key, Known(who.uid, who.resource_version)))
            elif self.refuse is not None:
                await self.refuse(line, who)
            self.resource_version = who.resource_version
        elif self.refuse is not None:
            await self.refuse(line, None)

    async def relist(self) -> None:
        seen: set[ObjectKey] = set()
        rv = ""
        pages = self.kube.list_pages(
            self.resource,
            namespace=self.namespace,
            label_selector=self.label_selector,
            max_bytes=self.max_page,
        )
        async for page in pages:
            if self.observe is not None:
                # Also the objects the stream already holds, which diff_page() leaves out: a
                # restarted watcher must know their state too.
                for obj in page.items:
                    self.observe(obj, False)
            for change, obj in diff_page(self.known, page.items, seen):
                await self._apply(change, obj)
            rv = page.resource_version
        for change, obj in deletions(self.known, seen):
            await self._apply(change, obj)
        self.resource_version = rv
        self.synced.set()
        log.info(
            "listed %s",
            self.resource.plural,
            extra={"count": len(seen), "resource_version": rv},
        )

    async def run(self) -> None:
        attempt = 0
        need_list = True
        while True:
            try:
                if need_list:
                    await self.relist()
                    need_list = False
                async for event in self.kube.watch(
                    self.resource,
                    resource_version=self.resource_version,
                    namespace=self.namespace,
                    label_selector=self.label_selector,
                    timeout_seconds=self.watch_timeout,
                    max_line=self.max_line,
                ):
                    attempt = 0
                    if isinstance(event, Oversized):
                        await self._oversized(event)
                        continue
                    kind = event.get("type")
                    obj = event.get("object") or {}
                    rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
                    if kind == "BOOKMARK":
                        self.resource_version = rv or self.resource_version
                        continue
                    change = {"ADDED": "added", "MODIFIED": "modified", "DELETED": "deleted"}
                    if kind not in change:
                        continue
                    await self._apply(change[kind], obj)
                    self.resource_version = rv or self.resource_version
            except ApiError as err:
                if err.status == 410:
                    log.info("watch of %s expired (410 Gone); relisting", self.resource.plural)
                    need_list = True
                    continue
                attempt += 1
                delay = _delay(attempt, err.retry_after)
                log.warning("watch %s: %s; retrying in %.1fs", self.resource.plural, err, delay)
                await asyncio.sleep(delay)
            except TransientError as err:
                attempt += 1
                delay = _delay(attempt, err.retry_after)
                log.warning("watch %s: %s; retrying in %.1fs", self.resource.plural, err, delay)
                await asyncio.sleep(delay)
            except Exception as err:
                # Whatever else broke (e.g. publishing while NATS restarts), the informer must
                # not die: start over from a list, which re-emits only what the stream lacks.
                attempt += 1
                delay = _delay(attempt, None)
                log.exception(
                    "watch %s failed unexpectedly (%r); relisting in %.1fs",
                    self.resource.plural,
                    err,
                    delay,
                )
                need_list = True
                await asyncio.sleep(delay)
