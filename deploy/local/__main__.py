"""`python -m deploy.local`: the local control plane and the demo, run from a checkout.

    python -m deploy.local cluster up|down|status|env   etcd, kube-apiserver, controller-manager,
                                                        scheduler, kwok and nats-server on loopback
    python -m deploy.local demo                         the cluster, the services and the samples

They are not subcommands of `memcached-operator`: the wheel and the image carry only what runs in
a cluster (this tooling needs the `local` extra and the Go module files beside it).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

SUBCOMMANDS = {
    "cluster": ("deploy.local.cluster_command", "run a local control plane with kwok and NATS"),
    "demo": ("deploy.local.demo", "run the whole system locally and apply the samples"),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.local", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_) in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        importlib.import_module(module).add_arguments(sp)
        sp.set_defaults(_module=module)
    args = parser.parse_args(argv)
    result: int = importlib.import_module(args._module).run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
