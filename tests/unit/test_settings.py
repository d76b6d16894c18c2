"""Each process's typed settings: the flags and environment variables it has always read, the
precedence flag > environment > default, validation as a usage error (exit 2) naming where the
bad value came from, and `--help` listing every flag with its variable."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from memcached_operator import cli
from memcached_operator.reconciler.settings import ReconcilerSettings
from memcached_operator.shared.bus.stream_admin import StreamAdminSettings
from memcached_operator.shared.runtime import settings
from memcached_operator.shared.runtime.settings import NatsSettings, Settings
from memcached_operator.shared.workqueue.options import QueueOptions
from memcached_operator.status.settings import StatusSettings
from memcached_operator.watcher.settings import WatcherSettings

pytestmark = pytest.mark.unit

COMMON = {
    "--nats-url": "NATS_URL",
    "--kubeconfig": "KUBECONFIG",
    "--health-port": "HEALTH_PORT",
    "--liveness-stall": "LIVENESS_STALL_SECONDS",
}
QUEUE = {
    "--ack-wait": "ACK_WAIT",
    "--lease-ttl": "LEASE_TTL",
    "--max-deliveries": "MAX_DELIVERIES",
    "--backoff-cap": "BACKOFF_CAP",
}
# subcommand -> (settings model, {flag: environment variable}): the names deploy/, tests,
# bench and chaos use, as the hand-written argparse blocks had them.
COMMANDS: dict[str, tuple[type[Settings], dict[str, str]]] = {
    "watcher": (
        WatcherSettings,
        {
            **COMMON,
            "--namespaces": "WATCH_NAMESPACES",
            "--resync": "RESYNC_PERIOD",
            "--max-watch-line": "MAX_WATCH_LINE_BYTES",
            "--max-list-page": "MAX_LIST_PAGE_BYTES",
        },
    ),
    "reconciler": (
        ReconcilerSettings,
        {
            **COMMON,
            **QUEUE,
            "--concurrency": "RECONCILE_CONCURRENCY",
            "--progress-deadline": "PROGRESS_DEADLINE_SECONDS",
        },
    ),
    "status": (
        StatusSettings,
        {
            **COMMON,
            **QUEUE,
            "--concurrency": "STATUS_CONCURRENCY",
            "--min-interval": "STATUS_MIN_INTERVAL",
            "--settle": "STATUS_SETTLE",
            "--yield-backlog": "STATUS_YIELD_BACKLOG",
            "--yield-pause": "STATUS_YIELD_PAUSE",
        },
    ),
    "streams": (
        StreamAdminSettings,
        {
            "--nats-url": "NATS_URL",
            "--stream-replicas": "STREAM_REPLICAS",
            "--events-max-age": "EVENTS_MAX_AGE",
            "--events-per-object": "EVENTS_PER_OBJECT",
            "--lease-ttl": "LEASE_TTL",
            "--stream-max-bytes": "STREAM_MAX_BYTES",
        },
    ),
    "audit": (NatsSettings, {"--nats-url": "NATS_URL"}),
}
ALL_VARIABLES = sorted({env for _, flags in COMMANDS.values() for env in flags.values()})
# The defaults of the hand-written blocks.
DEFAULTS: dict[str, dict[str, Any]] = {
    "watcher": {
        "nats_url": "nats://127.0.0.1:4222",
        "kubeconfig": None,
        "health_port": 8081,
        "liveness_stall": 120.0,
        "namespaces": (),
        "resync": 300.0,
    },
    "reconciler": {
        "health_port": 8082,
        "concurrency": 8,
        "ack_wait": 30.0,
        "lease_ttl": 30.0,
        "max_deliveries": 10,
        "backoff_cap": 60.0,
        "progress_deadline": 600,
    },
    "status": {
        "health_port": 8083,
        "concurrency": 16,
        "min_interval": 1.0,
        "settle": 30.0,
        "yield_backlog": 16,
        "yield_pause": 10.0,
    },
    "streams": {
        "nats_url": "nats://127.0.0.1:4222",
        "stream_replicas": 1,
        "events_max_age": None,
        "lease_ttl": None,
        "stream_max_bytes": None,
    },
}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """None of the settings' variables set, whatever the shell running the tests has."""
    for variable in ALL_VARIABLES:
        monkeypatch.delenv(variable, raising=False)


def parse(command: str, *argv: str) -> argparse.Namespace:
    """The real command line's parse of ``memcached-operator <command> <argv>``."""
    positional = ("ensure",) if command == "streams" else ()
    return cli.build_parser(command).parse_args([command, *positional, *argv])


def load(command: str, *argv: str) -> Any:
    model = COMMANDS[command][0]
    return settings.from_args(model, parse(command, *argv))


def flags_of(parser: argparse.ArgumentParser, command: str) -> set[str]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    found = set()
    for action in sub.choices[command]._actions:
        found.update(s for s in action.option_strings if s.startswith("--") and s != "--help")
    return found


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_model_reads_the_variables_it_always_has(command: str) -> None:
    model, flags = COMMANDS[command]
    read = {
        settings.flag(name): field.validation_alias for name, field in model.model_fields.items()
    }
    assert read == flags


@pytest.mark.parametrize("command", ["watcher", "reconciler", "status", "streams"])
def test_the_subcommand_takes_the_same_flags(command: str) -> None:
    assert flags_of(cli.build_parser(command), command) == set(COMMANDS[command][1])


def test_audit_keeps_its_own_flags_beside_the_nats_url() -> None:
    flags = flags_of(cli.build_parser("audit"), "audit")
    assert flags == {
        "--nats-url",
        "--namespace",
        "--name",
        "--kind",
        "--type",
        "--since",
        "--from-start",
        "--follow",
        "--output",
    }


@pytest.mark.parametrize("command", sorted(DEFAULTS))
def test_defaults_when_neither_flag_nor_variable(command: str) -> None:
    loaded = load(command)
    for name, default in DEFAULTS[command].items():
        assert getattr(loaded, name) == default, name


@pytest.mark.parametrize(
    (
        "command",
        "flag",
        "variable",
        "from_env",
        "from_flag",
        "attribute",
        "env_value",
        "flag_value",
    ),
    [
        ("reconciler", "--concurrency", "RECONCILE_CONCURRENCY", "3", "5", "concurrency", 3, 5),
        ("status", "--concurrency", "STATUS_CONCURRENCY", "12", "2", "concurrency", 12, 2),
        ("reconciler", "--ack-wait", "ACK_WAIT", "4", "7.5", "ack_wait", 4.0, 7.5),
        ("status", "--lease-ttl", "LEASE_TTL", "4", "9", "lease_ttl", 4.0, 9.0),
        ("watcher", "--health-port", "HEALTH_PORT", "9000", "0", "health_port", 9000, 0),
        ("watcher", "--resync", "RESYNC_PERIOD", "3", "10", "resync", 3.0, 10.0),
        (
            "watcher",
            "--namespaces",
            "WATCH_NAMESPACES",
            "a, b",
            "c",
            "namespaces",
            ("a", "b"),
            ("c",),
        ),
        (
            "reconciler",
            "--progress-deadline",
            "PROGRESS_DEADLINE_SECONDS",
            "8",
            "9",
            "progress_deadline",
            8,
            9,
        ),
        (
            "reconciler",
            "--liveness-stall",
            "LIVENESS_STALL_SECONDS",
            "5",
            "0",
            "liveness_stall",
            5.0,
            0.0,
        ),
        ("status", "--yield-backlog", "STATUS_YIELD_BACKLOG", "-1", "4", "yield_backlog", -1, 4),
        (
            "status",
            "--nats-url",
            "NATS_URL",
            "nats://a:1",
            "nats://b:2",
            "nats_url",
            "nats://a:1",
            "nats://b:2",
        ),
        ("streams", "--stream-replicas", "STREAM_REPLICAS", "3", "1", "stream_replicas", 3, 1),
        (
            "streams",
            "--stream-max-bytes",
            "STREAM_MAX_BYTES",
            "1KiB",
            "2048",
            "stream_max_bytes",
            1024,
            2048,
        ),
        (
            "audit",
            "--nats-url",
            "NATS_URL",
            "nats://a:1",
            "nats://b:2",
            "nats_url",
            "nats://a:1",
            "nats://b:2",
        ),
    ],
)
def test_flag_over_environment_over_default(
    monkeypatch: pytest.MonkeyPatch,
    command: str,
    flag: str,
    variable: str,
    from_env: str,
    from_flag: str,
    attribute: str,
    env_value: object,
    flag_value: object,
) -> None:
    monkeypatch.setenv(variable, from_env)
    assert getattr(load(command), attribute) == env_value
    assert getattr(load(command, flag, from_flag), attribute) == flag_value


def test_each_controller_reads_only_its_own_concurrency(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECONCILE_CONCURRENCY", "3")
    monkeypatch.setenv("STATUS_CONCURRENCY", "12")
    assert load("reconciler").concurrency == 3
    assert load("status").concurrency == 12


def test_variable_names_are_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("reconcile_concurrency", "3")
    assert load("reconciler").concurrency == 8


def test_an_empty_variable_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    # a Deployment's `value: ""` (and what the hand-written EVENTS_MAX_AGE read did)
    monkeypatch.setenv("HEALTH_PORT", "")
    monkeypatch.setenv("EVENTS_MAX_AGE", "")
    assert load("reconciler").health_port == 8082
    assert load("streams").events_max_age is None


def test_namespaces_are_split_on_commas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCH_NAMESPACES", " team-a,,team-b ,")
    assert load("watcher").namespaces == ("team-a", "team-b")
    assert load("watcher", "--namespaces", "").namespaces == ()


@pytest.mark.parametrize(
    ("command", "argv", "environment", "says"),
    [
        (
            "reconciler",
            ["--concurrency", "-1"],
            {},
            "argument --concurrency: Input should be greater than or equal to 1",
        ),
        (
            "status",
            ["--concurrency", "0"],
            {},
            "argument --concurrency: Input should be greater than or equal to 1",
        ),
        (
            "reconciler",
            [],
            {"RECONCILE_CONCURRENCY": "many"},
            "env RECONCILE_CONCURRENCY: Input should be a valid integer",
        ),
        (
            "watcher",
            ["--health-port", "70000"],
            {},
            "argument --health-port: Input should be less than or equal to 65535",
        ),
        (
            "watcher",
            [],
            {"RESYNC_PERIOD": "0"},
            "env RESYNC_PERIOD: Input should be greater than 0",
        ),
        (
            "status",
            ["--yield-backlog", "-2"],
            {},
            "argument --yield-backlog: Input should be greater than or equal to -1",
        ),
        (
            "status",
            ["--ack-wait", "soon"],
            {},
            "argument --ack-wait: Input should be a valid number",
        ),
        (
            "streams",
            [],
            {"STREAM_MAX_BYTES": "lots"},
            "env STREAM_MAX_BYTES: Value error, not a size: 'lots'",
        ),
    ],
)
def test_a_bad_value_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
    argv: list[str],
    environment: dict[str, str],
    says: str,
) -> None:
    for variable, value in environment.items():
        monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as exited:
        load(command, *argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"memcached-operator {command}: error: {says}" in err
    assert err.startswith("usage: memcached-operator")


def test_every_bad_value_is_named_at_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ACK_WAIT", "-4")
    with pytest.raises(SystemExit):
        load("reconciler", "--max-deliveries", "x")
    err = capsys.readouterr().err
    assert "argument --max-deliveries:" in err
    assert "env ACK_WAIT:" in err


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_lists_every_flag_with_its_variable(command: str) -> None:
    parser = cli.build_parser(command)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    actions = {s: a for a in sub.choices[command]._actions for s in a.option_strings}
    for flag, variable in COMMANDS[command][1].items():
        help_ = actions[flag].help or ""
        assert f"(env {variable}" in help_, flag
    text = sub.choices[command].format_help()
    for flag in COMMANDS[command][1]:
        assert flag in text


def test_help_gives_the_service_default() -> None:
    parser = cli.build_parser("status")
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    text = " ".join(sub.choices["status"].format_help().split())
    assert "(env HEALTH_PORT, default 8083)" in text
    assert "(env STATUS_CONCURRENCY, default 16)" in text


def test_a_queue_model_must_name_its_concurrency_variable() -> None:
    with pytest.raises(TypeError, match="concurrency has no environment variable"):
        settings.add_flags(argparse.ArgumentParser(), QueueOptions)
