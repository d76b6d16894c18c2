"""Builds the controller-runtime peer (bench/peers/controller_runtime/) into the local cache.

The same machinery as the control plane's binaries (deploy/local/build.py): Go modules through
the module proxy, one progress line per 25 compiled packages, and a cache directory under
~/.cache/memcached-operator named by a hash of the module's files and the Go version, so a
rebuild happens only when one of them changes. ``python -m bench.peers.build`` prints the path.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

from deploy.local.build import _go, _go_build, _lock, _log, cache_root

MODULE = Path(__file__).resolve().parent / "controller_runtime"
BINARY = "memcached-go-peer"


def input_hash() -> str:
    """The Go version and every file of the module that goes into the binary."""
    digest = hashlib.sha256()
    version = subprocess.run([_go(), "version"], check=True, capture_output=True, text=True)
    digest.update(version.stdout.encode())
    for path in sorted(MODULE.iterdir()):
        if path.suffix == ".go" or path.name in ("go.mod", "go.sum"):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def binary_path() -> Path:
    return cache_root() / "peers" / input_hash() / BINARY


def ensure_built() -> Path:
    """The peer's binary, built first if the cache misses (a cold build fetches and compiles
    controller-runtime and client-go: minutes on two busy cores)."""
    target = binary_path()
    if target.exists():
        return target
    with _lock(cache_root() / "peers.lock"):
        if target.exists():
            return target
        staging = target.parent.with_name(target.parent.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        _log(f"building the controller-runtime peer into {target.parent}")
        _go_build(
            module=MODULE,
            package=".",
            output=staging / BINARY,
            ldflags="-s -w",
            label="go-peer",
        )
        shutil.rmtree(target.parent, ignore_errors=True)
        staging.rename(target.parent)
    return target


def main() -> None:
    print(ensure_built())


if __name__ == "__main__":
    main()
