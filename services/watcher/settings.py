"""The watcher process's settings: the common service settings, the namespaces it watches, the
resync period and the bounds on one watch event and one list page."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import field_validator
from pydantic_settings import NoDecode

from memcached_operator.shared.kube.client import DEFAULT_MAX_PAGE
from memcached_operator.shared.kube.watchlines import DEFAULT_MAX_LINE
from memcached_operator.shared.runtime.settings import ServiceSettings, health_port, setting


class WatcherSettings(ServiceSettings):
    health_port: int = health_port(8081)
    # NoDecode: a comma-separated string, as deploy/ sets it, not the JSON list
    # pydantic-settings would expect of a sequence in the environment.
    namespaces: Annotated[tuple[str, ...], NoDecode] = setting(
        (),
        env="WATCH_NAMESPACES",
        help="comma-separated namespaces to watch; empty for all",
    )
    resync: float = setting(
        300.0,
        env="RESYNC_PERIOD",
        gt=0,
        help="seconds between re-requests of every CR's reconcile",
    )

    max_watch_line: int = setting(
        DEFAULT_MAX_LINE,
        env="MAX_WATCH_LINE_BYTES",
        ge=4096,
        help="bytes of one watch event the watcher reads at most; a longer one is "
        "dead-lettered (WatchEventTooLarge) and the watch goes on",
    )

    max_list_page: int = setting(
        DEFAULT_MAX_PAGE,
        env="MAX_LIST_PAGE_BYTES",
        ge=4096,
        help="bytes of one page of a list the watcher reads at most; a longer page is asked "
        "for again with half as many objects (one object is always read whole)",
    )

    @field_validator("namespaces", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(n.strip() for n in value.split(",") if n.strip())
        return value
