"""The `memcached-operator` command line: one console script, one subcommand per part.

The local control plane and the demo are not here: they run from a checkout
(`python -m deploy.local cluster up|down|status|env`, `python -m deploy.local demo`), so the
wheel and the image carry only what runs in a cluster.

Each subcommand's module adds its own flags (every flag also readable from an environment
variable) and runs; this module only dispatches, so importing it stays cheap and a service's
dependencies load only when that service runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand -> (module, help). Each module has add_arguments(parser) and run(args) -> int.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "crd": ("memcached_operator.cli", "print the Memcached CustomResourceDefinition (YAML)"),
    # The watcher starts from the composition root, which hands it every controller's watches.
    "watcher": ("memcached_operator.routes", "publish every watched change to JetStream"),
    "reconciler": (
        "memcached_operator.reconciler.service",
        "converge Deployments (one worker process)",
    ),
    "status": ("memcached_operator.status.service", "fold outcomes into the Memcached status"),
    "audit": ("memcached_operator.audit.command", "replay or follow the event stream"),
    "streams": (
        "memcached_operator.shared.bus.stream_admin",
        "create (ensure) or check the streams, as the NATS admin",
    ),
    "rbac": (
        "memcached_operator.admin.rbac",
        "print namespaced Roles for an operator that watches a fixed set of namespaces",
    ),
    "nats-credentials": (
        "memcached_operator.admin.nats_credentials",
        "print the NATS Secrets for a cluster: fresh passwords and the server's bcrypt hashes",
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`crd` takes no flags."""


def run(args: argparse.Namespace) -> int:
    """`crd`: print the CRD generated from the pydantic models."""
    from memcached_operator.shared.api.crd import crd_yaml

    sys.stdout.write(crd_yaml())
    return 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported for its flags (a reconciler process
    need not load the watcher or the local cluster code just to parse its arguments)."""
    parser = argparse.ArgumentParser(
        prog="memcached-operator",
        description="A Kubernetes operator for Memcached as a pipeline on NATS JetStream.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_) in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(_module=module)
        if name == command:
            importlib.import_module(module).add_arguments(sp)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    module = importlib.import_module(args._module)
    result: int = module.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())


def console() -> None:
    """Console-script entry point."""
    sys.exit(main())
