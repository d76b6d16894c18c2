"""Builds the local control-plane binaries from Go modules into a cache keyed by their inputs.

Two Go modules live beside this file: `kube/` (one multi-call binary holding etcd,
kube-apiserver, kube-controller-manager, kube-scheduler and kubectl) and `kwok/` (kwok as a Go
tool dependency). The cache directory is named by a hash of those modules' files and the Go
version, so a rebuild happens only when one of them changes; a cold build of Kubernetes takes
many minutes on two cores, so it prints one progress line per compiled package.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
KUBE_MODULE = HERE / "kube"
KWOK_MODULE = HERE / "kwok"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")


def cache_root() -> Path:
    base = os.environ.get("MCOP_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "memcached-operator"
    )
    return Path(base)


def kubernetes_version() -> str:
    match = re.search(r"^\s*k8s\.io/kubernetes (v\S+)", (KUBE_MODULE / "go.mod").read_text(), re.M)
    if match is None:
        raise RuntimeError("k8s.io/kubernetes not required in deploy/local/kube/go.mod")
    return match.group(1)


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise RuntimeError("the Go toolchain is required to build the local control plane")
    return go


def input_hash() -> str:
    digest = hashlib.sha256()
    go_version = subprocess.run(
        [_go(), "version"], check=True, capture_output=True, text=True
    ).stdout
    digest.update(go_version.encode())
    for module in (KUBE_MODULE, KWOK_MODULE):
        for path in sorted(module.iterdir()):
            if path.suffix == ".go" or path.name in ("go.mod", "go.sum"):
                digest.update(path.name.encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def bin_dir() -> Path:
    return cache_root() / "bin" / input_hash()


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _log(message: str) -> None:
    print(f"[build] {message}", file=sys.stderr, flush=True)


def _go_build(*, module: Path, package: str, output: Path, ldflags: str, label: str) -> None:
    env = dict(os.environ, CGO_ENABLED="0")
    deps = subprocess.run(
        [_go(), "list", "-deps", package],
        cwd=module,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    total = len(deps)
    _log(f"{label}: {total} packages (already-cached packages are skipped)")
    started = time.monotonic()
    proc = subprocess.Popen(
        [_go(), "build", "-v", "-trimpath", "-ldflags", ldflags, "-o", str(output), package],
        cwd=module,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    done = 0
    errors: list[str] = []
    for line in proc.stderr:
        line = line.rstrip()
        if line in deps:
            done += 1
            if done % 25 == 0 or done == total:
                _log(f"{label}: [{done}/{total}] {line} ({time.monotonic() - started:.0f}s)")
        elif line:
            errors.append(line)
    if proc.wait() != 0:
        raise RuntimeError(f"go build of {label} failed:\n" + "\n".join(errors[-40:]))
    _log(f"{label}: built in {time.monotonic() - started:.0f}s")


def ensure_built() -> Path:
    """Return the directory holding the binaries, building them first if the cache misses."""
    target = bin_dir()
    if (target / "localkube").exists() and (target / "kwok").exists():
        return target
    with _lock(cache_root() / "build.lock"):
        if (target / "localkube").exists() and (target / "kwok").exists():
            return target
        staging = target.with_name(target.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        version = kubernetes_version()
        major, minor = version.lstrip("v").split(".")[:2]
        pkg = "k8s.io/component-base/version"
        ldflags = " ".join(
            [
                "-s -w",
                f"-X {pkg}.gitVersion={version}",
                f"-X {pkg}.gitMajor={major}",
                f"-X {pkg}.gitMinor={minor}",
                f"-X {pkg}.gitTreeState=clean",
                f"-X {pkg}.buildDate={dt.datetime.now(dt.UTC):%Y-%m-%dT%H:%M:%SZ}",
            ]
        )
        _log(f"building Kubernetes {version} control plane into {target} (cold: many minutes)")
        _go_build(
            module=KUBE_MODULE,
            package=".",
            output=staging / "localkube",
            ldflags=ldflags,
            label="localkube",
        )
        _go_build(
            module=KWOK_MODULE,
            package="sigs.k8s.io/kwok/cmd/kwok",
            output=staging / "kwok",
            ldflags="-s -w",
            label="kwok",
        )
        for name in COMPONENTS:
            (staging / name).symlink_to("localkube")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    return target


def main() -> None:
    print(ensure_built())


if __name__ == "__main__":
    main()
