"""`python -m deploy.local cluster up|down|status|env`: the command line of the local cluster
(deploy/local/cluster.py), and the flags that say which local instance, shared with `demo`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from deploy.local import build
from deploy.local.cluster import COMPONENTS, down, log, status, up
from deploy.local.layout import DEFAULT_BASE_PORT, Layout, default_state_dir


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
        help="first of 8 consecutive loopback ports (env MCOP_BASE_PORT)",
    )
    parser.add_argument(
        "--nodes", type=int, default=int(os.environ.get("MCOP_NODES", "1")), help="fake nodes"
    )


def run(args: argparse.Namespace) -> int:
    layout = Layout.load(args.state_dir, base_port=args.base_port, nodes=args.nodes)
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
        return 0 if running == len(COMPONENTS) else 3
    else:
        print("\n".join(env_lines(layout)))
    return 0
