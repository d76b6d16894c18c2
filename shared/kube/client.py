"""A thin Kubernetes API client: raw JSON requests and streaming watches over one connection pool.

kubernetes-asyncio loads the configuration (KUBECONFIG or in-cluster service account) and owns
the TLS connection pool; requests go through its REST layer as plain dicts, because the
services publish objects as JSON and apply them with server-side apply, and model classes would
only be converted back. Every call passes through :meth:`KubeClient.request`, the one place
that classifies failures (transient: retry with backoff; permanent: report), counts requests
and records a CLIENT span per call. A list can be read page by page within a byte bound
(:meth:`KubeClient.list_pages`), so that a tenant's huge objects cannot make one page, or one
relist, take more memory than a service has.
"""

from __future__ import annotations

import logging
import os
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import aiohttp
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from prometheus_client import Counter, Histogram

from memcached_operator.shared.kube.kubelib import Configuration, RESTClientObject
from memcached_operator.shared.kube.kubelib import config as kube_config
from memcached_operator.shared.kube.watchlines import DEFAULT_MAX_LINE, Oversized, lines
from memcached_operator.shared.runtime import jsonc
from memcached_operator.shared.runtime.errors import ClassifiedError, PermanentError, TransientError

API_REQUESTS = Counter(
    "mcop_kube_api_requests_total",
    "Requests made to the Kubernetes API server",
    ["verb", "resource", "code"],
)
API_REQUEST_SECONDS = Histogram(
    "mcop_kube_api_request_duration_seconds",
    "Time from sending a request to the API server to having read its response",
    ["verb", "resource"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
LIST_PAGES_SHRUNK = Counter(
    "mcop_kube_list_pages_shrunk_total",
    "List pages whose body was over the byte bound, asked for again with half as many objects",
    ["resource"],
)
_tracer = trace.get_tracer("memcached-operator.kube")
log = logging.getLogger("memcached_operator.kube")

JsonObject = dict[str, Any]
# Objects per list page, as client-go's reflector asks for; bytes of one page a service reads
# at most by default (as much as one watch line: every object the API server stores fits).
LIST_PAGE_LIMIT = 500
DEFAULT_MAX_PAGE = DEFAULT_MAX_LINE


class BodyTooLarge(Exception):
    """A response body longer than the bound its reader set (the rest was not read)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the response body is over {limit} bytes")
        self.limit = limit


@dataclass(frozen=True)
class Page:
    """One page of a list: its objects and the list's resourceVersion (the one to watch from
    once every page is read)."""

    items: list[JsonObject]
    resource_version: str


async def _read_bounded(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body, or :class:`BodyTooLarge` as soon as more than ``limit`` bytes arrived (the
    connection is closed then, not drained)."""
    parts: list[bytes] = []
    size = 0
    while chunk := await resp.content.readany():
        size += len(chunk)
        if size > limit:
            resp.close()
            raise BodyTooLarge(limit)
        parts.append(chunk)
    return b"".join(parts)


@dataclass(frozen=True)
class Resource:
    """Where a kind lives in the API: /api/v1 for the core group, /apis/<group>/<version> else."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None, sub: str = "") -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if namespace:
            base += f"/namespaces/{quote(namespace, safe='')}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{quote(name, safe='')}"
        if sub:
            base += f"/{sub}"
        return base


MEMCACHED = Resource("cache.example.com", "v1", "memcacheds", "Memcached")
DEPLOYMENT = Resource("apps", "v1", "deployments", "Deployment")
POD = Resource("", "v1", "pods", "Pod")
SERVICE = Resource("", "v1", "services", "Service")
PDB = Resource("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget")
EVENT = Resource("events.k8s.io", "v1", "events", "Event")


class ApiError(ClassifiedError):
    """An error status from the API server, with its Status message; :meth:`classify` says
    whether it is worth retrying (the work queue asks, for any ApiError a handler lets through)."""

    def __init__(self, status: int, message: str, *, reason: str = "", retry_after: float | None):
        super().__init__(f"{status} {reason}: {message}".strip())
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after

    @property
    def not_found(self) -> bool:
        return self.status == 404

    def classify(self) -> TransientError | PermanentError:
        """429, 409, 5xx and timeouts are worth retrying; other 4xx are not."""
        if self.status in (408, 409, 429) or self.status >= 500 or self.status == 0:
            return TransientError(str(self), retry_after=self.retry_after)
        reason = {400: "BadRequest", 403: "Forbidden", 422: "Invalid"}.get(self.status, "ApiError")
        return PermanentError(reason, self.message or str(self))


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        import time

        return max(0.0, when.timestamp() - time.time())


def _environment_proxy(host: str) -> str | None:
    """The proxy the environment names for the API server URL (HTTPS_PROXY and NO_PROXY, as
    aiohttp's trust_env would read them), or None."""
    parsed = urllib.parse.urlsplit(host)
    proxies = urllib.request.getproxies_environment()
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
    if not parsed.hostname or bypass(parsed.netloc, proxies):
        return None
    return proxies.get(parsed.scheme or "https")


class KubeClient:
    """Raw JSON access to the API server; create with :meth:`connect`, close when done."""

    def __init__(self, rest: RESTClientObject, configuration: Configuration) -> None:
        self._rest = rest
        self._config = configuration

    @classmethod
    async def connect(
        cls, kubeconfig: str | None = None, *, context: str | None = None
    ) -> KubeClient:
        """A client from ``kubeconfig`` (or KUBECONFIG, ~/.kube/config; ``context``: one of
        its contexts instead of the current one), or in-cluster when there is none."""
        configuration = Configuration()
        path = kubeconfig or os.environ.get("KUBECONFIG")
        if path or context or not os.environ.get("KUBERNETES_SERVICE_HOST"):
            await kube_config.load_kube_config(
                config_file=path, context=context, client_configuration=configuration
            )
        else:
            kube_config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
        configuration.connection_pool_maxsize = 64
        proxy = _environment_proxy(configuration.host or "")
        if proxy and not configuration.proxy:
            configuration.proxy = proxy
        rest = RESTClientObject(configuration)
        # kubernetes-asyncio's session trusts the environment, which makes aiohttp look up
        # proxy variables and ~/.netrc in a thread on every request: a visible share of the
        # CPU of a status refresh. The proxy is resolved once, above, instead.
        session = rest.pool_manager
        if hasattr(session, "_trust_env"):
            session._trust_env = False
        return cls(rest, configuration)

    async def close(self) -> None:
        await self._rest.close()

    def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        token = self._config.api_key.get("BearerToken") or self._config.api_key.get("authorization")
        if token:
            prefix = self._config.api_key_prefix.get("BearerToken", "")
            headers["Authorization"] = f"{prefix} {token}".strip() if prefix else token
        return headers

    async def _send(
        self,
        method: str,
        path: str,
        query: Mapping[str, str] | None,
        *,
        headers: dict[str, str],
        body: Any,
        _request_timeout: float | aiohttp.ClientTimeout,
    ) -> aiohttp.ClientResponse:
        """One request on the REST layer's session (its TLS, pool, proxy and server name),
        the response not yet read. The body is encoded here, once, with orjson: the REST
        layer's own request() would encode it with the standard library's json, match the
        content type with a regular expression and build a timeout object on every call."""
        url = f"{self._config.host}{path}"
        if query:
            url = f"{url}?{urllib.parse.urlencode(query)}"
        timeout = (
            _request_timeout
            if isinstance(_request_timeout, aiohttp.ClientTimeout)
            else aiohttp.ClientTimeout(total=_request_timeout)
        )
        options: dict[str, Any] = {}
        if body is not None:
            options["data"] = jsonc.dumps(body)
        if self._rest.proxy:
            options["proxy"] = self._rest.proxy
            if self._rest.proxy_headers:
                options["proxy_headers"] = self._rest.proxy_headers
        if self._rest.server_hostname:
            options["server_hostname"] = self._rest.server_hostname
        response: aiohttp.ClientResponse = await self._rest.pool_manager.request(
            method, url, headers=headers, timeout=timeout, **options
        )
        return response

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str | None = None,
        resource: str = "",
        timeout: float = 30.0,
        traced: bool = True,
        max_bytes: int | None = None,
    ) -> JsonObject:
        """One API call; returns the decoded body or raises ApiError / TransientError.

        ``traced=False`` leaves out the span (readiness probes would otherwise start a trace
        every few seconds); the call is counted either way. ``max_bytes`` bounds the body
        read: a longer one is dropped as it arrives, raising :class:`BodyTooLarge`.
        """
        span_cm: AbstractContextManager[Span] = (
            _tracer.start_as_current_span(
                f"{method} {resource or path}",
                kind=SpanKind.CLIENT,
                attributes={
                    "http.request.method": method,
                    "url.path": path,
                    "k8s.resource": resource,
                },
            )
            if traced
            else nullcontext(trace.INVALID_SPAN)
        )
        with span_cm as span, API_REQUEST_SECONDS.labels(method, resource).time():
            try:
                resp = await self._send(
                    method,
                    path,
                    query,
                    headers=self._headers(content_type or ("application/json" if body else None)),
                    body=body,
                    _request_timeout=timeout,
                )
            except (aiohttp.ClientError, TimeoutError) as err:
                API_REQUESTS.labels(method, resource, "error").inc()
                span.set_status(Status(StatusCode.ERROR, str(err)))
                raise TransientError(f"{method} {path}: {type(err).__name__}: {err}") from err
            try:
                raw = await (resp.read() if max_bytes is None else _read_bounded(resp, max_bytes))
            except BodyTooLarge:
                API_REQUESTS.labels(method, resource, "too_large").inc()
                span.set_status(Status(StatusCode.ERROR, "response body over the bound"))
                raise
            except (aiohttp.ClientError, TimeoutError) as err:
                # The connection broke half-way through the response (a server going away).
                API_REQUESTS.labels(method, resource, "error").inc()
                span.set_status(Status(StatusCode.ERROR, str(err)))
                raise TransientError(f"{method} {path}: {type(err).__name__}: {err}") from err
            finally:
                resp.release()
            API_REQUESTS.labels(method, resource, str(resp.status)).inc()
            span.set_attribute("http.response.status_code", resp.status)
            if resp.status >= 400:
                try:
                    status = jsonc.loads(raw)
                except ValueError:
                    status = {"message": raw.decode(errors="replace")[:500]}
                span.set_status(Status(StatusCode.ERROR, str(resp.status)))
                raise ApiError(
                    resp.status,
                    str(status.get("message", "")),
                    reason=str(status.get("reason", "")),
                    retry_after=_retry_after(resp.headers),
                )
            result: JsonObject = jsonc.loads(raw) if raw else {}
            return result

    async def get(self, res: Resource, namespace: str, name: str) -> JsonObject | None:
        try:
            return await self.request("GET", res.path(namespace, name), resource=res.plural)
        except ApiError as err:
            if err.not_found:
                return None
            raise

    async def apply(
        self, res: Resource, obj: JsonObject, *, field_manager: str, force: bool = True
    ) -> JsonObject:
        """Server-side apply of `obj` (which names itself) under `field_manager`."""
        meta = obj["metadata"]
        return await self.request(
            "PATCH",
            res.path(meta.get("namespace"), meta["name"]),
            query={"fieldManager": field_manager, "force": "true" if force else "false"},
            body=obj,
            content_type="application/apply-patch+yaml",
            resource=res.plural,
        )

    async def delete(self, res: Resource, namespace: str, name: str, *, uid: str) -> bool:
        """Delete one object, only if it is still the one with ``uid`` (a precondition, so a
        re-created object of the same name is never deleted by mistake). False: already gone."""
        try:
            await self.request(
                "DELETE",
                res.path(namespace, name),
                body={
                    "apiVersion": "v1",
                    "kind": "DeleteOptions",
                    "preconditions": {"uid": uid},
                    "propagationPolicy": "Background",
                },
                resource=res.plural,
            )
        except ApiError as err:
            if err.not_found:
                return False
            raise
        return True

    async def patch_status(
        self,
        res: Resource,
        namespace: str,
        name: str,
        patch: JsonObject,
        *,
        field_manager: str = "memcached-operator-status",
    ) -> JsonObject:
        return await self.request(
            "PATCH",
            res.path(namespace, name, "status"),
            query={"fieldManager": field_manager},
            body=patch,
            content_type="application/merge-patch+json",
            resource=f"{res.plural}/status",
        )

    async def list(
        self,
        res: Resource,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        limit: int = LIST_PAGE_LIMIT,
    ) -> tuple[list[JsonObject], str]:
        """All objects (paginated) and the list's resourceVersion to watch from."""
        items: list[JsonObject] = []
        rv = ""
        pages = self.list_pages(
            res, namespace=namespace, label_selector=label_selector, limit=limit
        )
        async for page in pages:
            items.extend(page.items)
            rv = page.resource_version
        return items, rv

    async def list_pages(
        self,
        res: Resource,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        limit: int = LIST_PAGE_LIMIT,
        max_bytes: int | None = DEFAULT_MAX_PAGE,
    ) -> AsyncIterator[Page]:
        """The objects page by page, so that a caller holds one page at a time.

        Unless ``max_bytes`` is None, no page's body is read past that many bytes (16 MiB by
        default): a page that is longer is asked for again (same continue token) with half as
        many objects, down to one, and the rest of the list keeps the smaller size. One object
        is read whole, whatever its size: the API server bounds an object (etcd's request
        limit), not this client."""
        token = ""
        while True:
            query = {"limit": str(limit)}
            if label_selector:
                query["labelSelector"] = label_selector
            if token:
                query["continue"] = token
            try:
                body = await self.request(
                    "GET",
                    res.path(namespace),
                    query=query,
                    resource=res.plural,
                    timeout=120,
                    max_bytes=max_bytes if limit > 1 else None,
                )
            except BodyTooLarge as err:
                limit = max(1, limit // 2)
                LIST_PAGES_SHRUNK.labels(res.plural).inc()
                log.warning(
                    "a page of %s was over %d bytes; asking for %d objects at a time",
                    res.plural,
                    err.limit,
                    limit,
                )
                continue
            meta = body.get("metadata") or {}
            token = meta.get("continue") or ""
            yield Page(body.get("items") or [], str(meta.get("resourceVersion", "")))
            if not token:
                return

    async def watch(
        self,
        res: Resource,
        *,
        resource_version: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        timeout_seconds: int = 300,
        max_line: int = DEFAULT_MAX_LINE,
    ) -> AsyncIterator[JsonObject | Oversized]:
        """Yield raw watch events ({type, object}) with bookmarks on, and an event longer than
        ``max_line`` bytes as :class:`Oversized` (watchlines.py: it does not end the watch);
        raises ApiError(410) when the resourceVersion is too old, TransientError when the
        stream breaks."""
        query = {
            "watch": "true",
            "allowWatchBookmarks": "true",
            "resourceVersion": resource_version,
            "timeoutSeconds": str(timeout_seconds),
        }
        if label_selector:
            query["labelSelector"] = label_selector
        try:
            resp = await self._send(
                "GET",
                res.path(namespace),
                query,
                headers=self._headers(None),
                body=None,
                _request_timeout=aiohttp.ClientTimeout(
                    sock_connect=10, sock_read=timeout_seconds + 30
                ),
            )
        except (aiohttp.ClientError, TimeoutError) as err:
            raise TransientError(f"watch {res.plural}: {err}") from err
        API_REQUESTS.labels("WATCH", res.plural, str(resp.status)).inc()
        try:
            if resp.status >= 400:
                raw = await resp.read()
                try:
                    message = str(jsonc.loads(raw).get("message", ""))
                except ValueError:
                    message = raw.decode(errors="replace")[:300]
                raise ApiError(resp.status, message, retry_after=_retry_after(resp.headers))
            reader = lines(resp.content.readany, max_line=max_line)
            while True:
                try:
                    line = await anext(reader, None)
                except (aiohttp.ClientError, TimeoutError) as err:
                    raise TransientError(f"watch {res.plural} broke: {err}") from err
                if line is None:
                    return
                if isinstance(line, Oversized):
                    yield line
                    continue
                event: JsonObject = jsonc.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    raise ApiError(
                        int(status.get("code", 500)),
                        str(status.get("message", "")),
                        reason=str(status.get("reason", "")),
                        retry_after=None,
                    )
                yield event
        finally:
            resp.release()
