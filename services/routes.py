"""The composition root: every controller's watches, handed to the watcher as one routing table.

As controller-runtime's main.go registers each controller with the manager, this module
collects what each controller declares beside its handler (reconciler/watches.py,
status/watches.py) into one :class:`Router` and runs the watcher with it (`memcached-operator
watcher` starts here). It is the one module that imports several services; the services import
none of each other (tests/unit/test_layering.py).
"""

from __future__ import annotations

import argparse

from memcached_operator.reconciler import watches as reconciler
from memcached_operator.shared.bus.routing import Router
from memcached_operator.status import watches as status
from memcached_operator.watcher import service as watcher


def router() -> Router:
    """The routing table, with fresh predicate memory. The reconciler's declarations come
    first, so a change that wakes both controllers (a Deployment deleted) asks it first."""
    return Router((*reconciler.watches(), *status.watches()))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    watcher.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return watcher.run(args, router())
