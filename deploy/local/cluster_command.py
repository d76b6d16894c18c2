"""`python -m deploy.local cluster up|down|status|env`: the command line of the local cluster
(deploy/local/cluster.py), and the flags that say which local instance, shared with `demo`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from deploy.local import build
from deploy.local.cluster import components, down, log, status, up
from deploy.local.layout import DEFAULT_BASE_PORT, Layout, default_state_dir
from deploy.local.nats_cluster import NatsCluster


def env_lines(layout: Layout) -> list[str]:
    bins = build.bin_dir()
    return [
        f"export KUBECONFIG={layout.kubeconfig}",
        f"export NATS_URL={layout.nats_url}",
        *([f"export NATS_CA={layout.nats_ca}"] if layout.nats_tls else []),
        f'export PATH="{bins}:$PATH"',
    ]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["up", "down", "status", "env"])
    add_common_arguments(parser)
    parser.add_argument("--purge", action="store_true", help="down: also delete the state dir")
    parser.add_argument(
        "--nats-tls",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="up: NATS clients must use TLS (certificate from the local PKI, NATS_CA its CA); "
        "unset keeps what the state directory has",
    )


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Which local instance: shared by `cluster` and `demo`."""
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get("MCOP_STATE_DIR", default_state_dir())),
        help="where PKI, data, logs and pids live (env MCOP_STATE_DIR)",
    )
    parser.add_argument(
        "--base-port",
        type=int,
        default=int(os.environ.get("MCOP_BASE_PORT", DEFAULT_BASE_PORT)),
        help="first of 8 consecutive loopback ports, 15 with --nats-nodes 3 (env MCOP_BASE_PORT)",
    )
    parser.add_argument(
        "--nodes", type=int, default=int(os.environ.get("MCOP_NODES", "1")), help="fake nodes"
    )
    parser.add_argument(
        "--nats-nodes",
        type=int,
        choices=[1, 3],
        default=int(os.environ.get("MCOP_NATS_NODES", "1")),
        help="NATS servers: 1, or a JetStream cluster of 3 with every stream at 3 replicas "
        "(env MCOP_NATS_NODES; an existing state directory keeps what it was made with)",
    )


def run(args: argparse.Namespace) -> int:
    layout = Layout.load(
        args.state_dir, base_port=args.base_port, nodes=args.nodes, nats_nodes=args.nats_nodes
    )
    if args.action == "up":
        up(layout, nats_tls=args.nats_tls)
        print("\n".join(env_lines(layout)))
    elif args.action == "down":
        stopped = down(layout, purge=args.purge)
        log(f"stopped: {', '.join(stopped) or 'nothing was running'}")
    elif args.action == "status":
        running = 0
        for name, info in status(layout).items():
            state = "running" if info["running"] else "stopped"
            running += bool(info["running"])
            print(f"{name:<26} {state:<8} pid={info['pid'] or '-'}")
        print("\n".join(NatsCluster(layout).describe()))
        return 0 if running == len(components(layout)) else 3
    else:
        print("\n".join(env_lines(layout)))
    return 0
