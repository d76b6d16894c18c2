"""`kubectl memcached`: the kubectl plugin that answers "what happened to my cache, and why".

kubectl runs any ``kubectl-<name>`` on PATH as ``kubectl <name>``; the package declares the
console script ``kubectl-memcached``. Verbs, one module each: ``history`` (history.py),
``explain`` (explain.py), ``dlq list|show|retry|purge`` (dlq.py) and ``audit`` (command.py,
the same records as ``memcached-operator audit``). Everything is read from the event stream
with subject filters, so the server returns one object's records without the client scanning
the stream; ``explain`` adds the API server's view of the CR, its Deployment and its pods.

Where things come from, as kubectl users expect: the cluster from the current kubeconfig
context (``--kubeconfig``, ``--context``), the namespace from ``-n`` or the context's
namespace (``-A`` for all, where a verb allows it); NATS from NATS_URL and the credentials
variables the services use (NATS_USER/NATS_PASSWORD, NATS_TOKEN, NATS_CREDS, NATS_CA), or,
when NATS_URL is unset, from the ConfigMap ``memcached-operator-nats`` (key ``url``) the
operator publishes in its namespace (``--operator-namespace``). Read-only verbs need no more
than the NATS ``audit`` user may do; ``dlq retry`` and ``dlq purge`` need the ``admin`` one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import os
import sys
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from nats.aio.client import Client

from memcached_operator.audit import render
from memcached_operator.shared.bus import connection as natsconn
from memcached_operator.shared.bus import subjects
from memcached_operator.shared.kube.client import KubeClient, Resource
from memcached_operator.shared.runtime.errors import TransientError

CONFIGMAP = Resource("", "v1", "configmaps", "ConfigMap")
NATS_CONFIGMAP = "memcached-operator-nats"
NATS_CONFIGMAP_KEY = "url"
DEFAULT_OPERATOR_NAMESPACE = "memcached-operator"
PROG = "kubectl memcached"
CONNECT_TIMEOUT = 10.0


class UsageError(Exception):
    """A mistake on the command line or in the environment: printed, exit code 1."""


def _common(parser: argparse.ArgumentParser, *, all_namespaces: bool) -> None:
    parser.add_argument("-n", "--namespace", help="the namespace (default: the context's)")
    if all_namespaces:
        parser.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    parser.add_argument("-o", "--output", choices=render.OUTPUTS, default="table")
    parser.add_argument("--since", type=render.parse_time, help="newer than, e.g. 10m or a time")
    parser.add_argument("--until", type=render.parse_time, help="older than, e.g. 1m or a time")
    parser.add_argument("--kubeconfig", default=None, help="kubeconfig file (env KUBECONFIG)")
    parser.add_argument("--context", default=None, help="kubeconfig context (default: current)")
    parser.add_argument(
        "--operator-namespace",
        default=os.environ.get("MCOP_OPERATOR_NAMESPACE", DEFAULT_OPERATOR_NAMESPACE),
        help="where the operator publishes its NATS ConfigMap, read when NATS_URL is unset "
        "(env MCOP_OPERATOR_NAMESPACE)",
    )


def build_parser() -> argparse.ArgumentParser:
    from memcached_operator.audit import command, dlq, explain, history

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="History, explanations and dead letters of Memcacheds, from the "
        "memcached-operator event stream.",
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    h = verbs.add_parser("history", help="a Memcached's revisions as recorded")
    _common(h, all_namespaces=False)
    history.add_arguments(h)
    e = verbs.add_parser("explain", help="why a Memcached is in its current state")
    _common(e, all_namespaces=False)
    explain.add_arguments(e)
    d = verbs.add_parser("dlq", help="dead-lettered requests: list, show, retry, purge")
    dverbs = d.add_subparsers(dest="dlq_verb", required=True, metavar="ACTION")
    for name, help_ in dlq.ACTIONS.items():
        sp = dverbs.add_parser(name, help=help_, description=help_)
        _common(sp, all_namespaces=True)
        dlq.add_arguments(name, sp)
    a = verbs.add_parser("audit", help="the event stream as a list, --follow to tail it")
    _common(a, all_namespaces=True)
    a.add_argument("--name", help="only objects (or owners' outcomes) with this name")
    a.add_argument(
        "--kind",
        choices=["memcached", "deployment", "pod", "pdb", "service", "reconcile", "deadletter"],
        help="only this kind",
    )
    a.add_argument("--type", dest="types", action="append", default=[], help="event type")
    a.add_argument("--from-start", action="store_true", help="the whole history (default)")
    a.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    a.set_defaults(_run=command.audit)
    return parser


def _kubeconfig_files(explicit: str | None) -> list[Path]:
    text = explicit or os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    return [Path(p) for p in text.split(os.pathsep) if p]


def context_namespace(kubeconfig: str | None, context: str | None) -> str:
    """The namespace of the chosen (or current) kubeconfig context, "default" without one."""
    docs: list[dict[str, Any]] = []
    for path in _kubeconfig_files(kubeconfig):
        with contextlib.suppress(OSError, yaml.YAMLError):
            doc = yaml.safe_load(path.read_text())
            if isinstance(doc, dict):
                docs.append(doc)
    wanted = context or next(
        (d.get("current-context") for d in docs if d.get("current-context")), None
    )
    for doc in docs:
        for entry in doc.get("contexts") or []:
            if isinstance(entry, dict) and entry.get("name") == wanted:
                namespace = (entry.get("context") or {}).get("namespace")
                if namespace:
                    return str(namespace)
    return "default"


@dataclass
class Session:
    """What a verb works with: its arguments, the namespace (None: all), NATS and the API."""

    args: argparse.Namespace
    namespace: str | None
    nc: Client
    kube: KubeClient | None
    nats_user: str  # who NATS_USER or the URL says we are, "" when neither says


def nats_identity(url: str) -> str:
    """The NATS user this process connects as: NATS_USER, else the URL's user, else ""."""
    if os.environ.get("NATS_USER"):
        return os.environ["NATS_USER"]
    first = url.split(",")[0]
    return urllib.parse.unquote(urllib.parse.urlsplit(first).username or "")


async def nats_url(args: argparse.Namespace, kube: KubeClient | None) -> str:
    """NATS_URL, else the operator's ConfigMap; a clear error when neither is there."""
    if os.environ.get("NATS_URL"):
        return os.environ["NATS_URL"]
    where = f"ConfigMap {args.operator_namespace}/{NATS_CONFIGMAP}"
    if kube is None:
        raise UsageError(f"NATS_URL is not set and there is no cluster to read {where} from")
    try:
        cm = await kube.get(CONFIGMAP, args.operator_namespace, NATS_CONFIGMAP)
    except Exception as err:
        raise UsageError(f"NATS_URL is not set and {where} could not be read: {err}") from None
    url = ((cm or {}).get("data") or {}).get(NATS_CONFIGMAP_KEY)
    if not url:
        raise UsageError(
            f"NATS_URL is not set and {where} has no key {NATS_CONFIGMAP_KEY!r} "
            "(set NATS_URL, or --operator-namespace to where the operator runs)"
        )
    return str(url)


@contextlib.asynccontextmanager
async def session(args: argparse.Namespace, *, needs_kube: bool) -> AsyncIterator[Session]:
    if getattr(args, "all_namespaces", False):
        namespace: str | None = None
    else:
        namespace = args.namespace or context_namespace(args.kubeconfig, args.context)
    kube: KubeClient | None = None
    if needs_kube or not os.environ.get("NATS_URL"):
        kube = await KubeClient.connect(args.kubeconfig, context=args.context)
    try:
        url = await nats_url(args, kube)
        try:
            # The services' connection keeps trying for ever; a command gives up and says so.
            nc = await asyncio.wait_for(natsconn.connect("kubectl-memcached", url), CONNECT_TIMEOUT)
        except TimeoutError:
            raise UsageError(
                f"cannot connect to NATS at {_redacted(url)} within {CONNECT_TIMEOUT:.0f}s"
            ) from None
        except Exception as err:
            raise UsageError(f"cannot connect to NATS at {_redacted(url)}: {err!r}") from None
        try:
            yield Session(args, namespace, nc, kube, nats_identity(url))
        finally:
            await nc.close()
    finally:
        if kube is not None:
            await kube.close()


def _redacted(url: str) -> str:
    parts = urllib.parse.urlsplit(url.split(",")[0])
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}:{parts.port}" if parts.port else f"{parts.scheme}://{host}"


async def _audit(args: argparse.Namespace) -> int:
    """The audit verb is command.audit, with this plugin's namespace and NATS URL."""
    from memcached_operator.audit import command
    from memcached_operator.shared.runtime.settings import NatsSettings

    if not args.all_namespaces:
        args.namespace = args.namespace or context_namespace(args.kubeconfig, args.context)
    kube = None
    if not os.environ.get("NATS_URL"):
        kube = await KubeClient.connect(args.kubeconfig, context=args.context)
    try:
        url = await nats_url(args, kube)
    finally:
        if kube is not None:
            await kube.close()
    if args.since is not None:  # command.audit takes a duration back from now
        args.since = max(dt.timedelta(0), dt.datetime.now(dt.UTC) - args.since)
    return await command.audit(args, NatsSettings(nats_url=url))


async def _main(args: argparse.Namespace) -> int:
    from memcached_operator.audit import dlq, explain, history

    if args.verb == "audit":
        return await _audit(args)
    if args.verb == "history":
        async with session(args, needs_kube=False) as s:
            return await history.run(s)
    if args.verb == "explain":
        async with session(args, needs_kube=True) as s:
            return await explain.run(s)
    async with session(args, needs_kube=False) as s:
        return await dlq.run(s)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    name = getattr(args, "name", None)
    if name and not subjects.is_object_name(name):
        parser.error(f"not a valid Kubernetes object name: {subjects.shown(name)}")
    # A command's own close is not news: the connection's state changes, which a service logs
    # as warnings, stay out of a person's terminal (failures still end the command with an
    # error message).
    logging.getLogger("memcached_operator.nats").setLevel(logging.ERROR)
    try:
        return asyncio.run(_main(args))
    except (KeyboardInterrupt, BrokenPipeError):
        return 0
    except (UsageError, RuntimeError, ValueError, TransientError) as err:
        sys.stderr.write(f"error: {err}\n")
        return 1
    except Exception as err:  # e.g. no kubeconfig, an API server that refused: say which
        sys.stderr.write(f"error: {type(err).__name__}: {err}\n")
        return 1


def console() -> None:
    """Console-script entry point (``kubectl-memcached``)."""
    sys.exit(main())


if __name__ == "__main__":
    console()
