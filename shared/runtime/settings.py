"""Typed settings of a process: one pydantic-settings model per process, read from the
environment, with one command-line flag per field.

A field is a setting: its type and bounds are the validation, its ``validation_alias`` is the
environment variable it is read from (exact case, as deploy/ sets them), its name in
kebab-case is its flag (``ack_wait`` -> ``--ack-wait``) and its description is the flag's
help. :func:`add_flags` adds those flags to a subcommand's parser; :func:`from_args` builds
the settings from the flags given, so the precedence is flag > environment > default
(pydantic-settings ranks init arguments above the environment). A value that does not
validate, from a flag or from the environment, is an argparse usage error: the message names
the flag or the variable, and the process exits 2.

pydantic-settings' own CLI source is not used: it names a flag after the alias, and here the
environment names are not the flags' (``--resync`` is ``RESYNC_PERIOD``, ``--concurrency`` is
``RECONCILE_CONCURRENCY`` in the reconciler and ``STATUS_CONCURRENCY`` in the status service).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TypeVar

from pydantic import Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

from memcached_operator.shared.bus.connection import DEFAULT_URL

S = TypeVar("S", bound="Settings")

# Where add_flags leaves the model and the parser for from_args (argparse keeps set_defaults
# values of a subparser in the namespace it returns).
_LOADER = "_settings_loader"


class Settings(BaseSettings):
    """Base of every process's settings: environment names exact, an empty variable counts as
    unset (a Deployment's ``value: ""`` means "the default"), and no change after start."""

    model_config = SettingsConfigDict(
        case_sensitive=True,
        populate_by_name=True,
        env_ignore_empty=True,
        frozen=True,
    )


def setting(default: Any, *, env: str, help: str, **constraints: Any) -> Any:
    """A settings field read from ``env``, with ``help`` for its flag and pydantic's
    constraints (``ge=1``, ...)."""
    return Field(default, validation_alias=env, description=help, **constraints)


class NatsSettings(Settings):
    """The NATS server to talk to. The credentials (NATS_USER/NATS_PASSWORD, NATS_TOKEN,
    NATS_CREDS) and the CA (NATS_CA) are read where the connection is made
    (shared/bus/connection.py), never from a flag, so they stay out of ``ps``."""

    nats_url: str = setting(
        DEFAULT_URL,
        env="NATS_URL",
        help="NATS server URL(s), comma-separated; credentials from NATS_USER/NATS_PASSWORD, "
        "NATS_TOKEN or NATS_CREDS, TLS from NATS_CA",
    )


class ServiceSettings(NatsSettings):
    """What every service process (watcher, reconciler, status) takes: NATS, the API server,
    the health endpoint. Each service redeclares ``health_port`` with its own default."""

    kubeconfig: str | None = setting(
        None, env="KUBECONFIG", help="kubeconfig file; unset for in-cluster or ~/.kube/config"
    )
    health_port: int = setting(
        0,
        env="HEALTH_PORT",
        ge=0,
        le=65535,
        help="port of /healthz, /readyz and /metrics; 0 picks a free one",
    )
    liveness_stall: float = setting(
        120.0,
        env="LIVENESS_STALL_SECONDS",
        ge=0,
        help="seconds that work may wait without progress before /healthz fails; 0 turns "
        "the check off",
    )


def health_port(default: int) -> Any:
    """A service's ``health_port`` field: ServiceSettings' with the service's own default."""
    inherited = ServiceSettings.model_fields["health_port"]
    return setting(
        default,
        env="HEALTH_PORT",
        ge=0,
        le=65535,
        help=inherited.description or "",
    )


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _env(name: str, field: FieldInfo) -> str:
    if not isinstance(field.validation_alias, str):
        raise TypeError(f"setting {name} has no environment variable (use setting(..., env=))")
    return field.validation_alias


def help_text(name: str, field: FieldInfo) -> str:
    """The flag's help: the description, the environment variable and the default."""
    where = f"env {_env(name, field)}"
    if field.default not in (None, "", ()):
        where += f", default {field.default}"
    return f"{field.description or ''} ({where})".strip()


def add_flags(parser: argparse.ArgumentParser, model: type[Settings]) -> None:
    """One flag per field of ``model``; the values stay strings for the model to validate.

    A flag not given is absent from the namespace (``argparse.SUPPRESS``), so that the
    environment and then the default decide it in :func:`from_args`."""
    for name, field in model.model_fields.items():
        parser.add_argument(
            flag(name),
            dest=name,
            default=argparse.SUPPRESS,
            help=help_text(name, field),
        )
    parser.set_defaults(**{_LOADER: (model, parser)})


def from_args(model: type[S], args: argparse.Namespace) -> S:
    """The settings of ``model`` from the flags in ``args`` (parsed by a parser that
    :func:`add_flags` prepared), the environment and the defaults; exits 2 with a usage error
    when a value does not validate."""
    loader = getattr(args, _LOADER, None)
    parser = loader[1] if loader is not None else None
    given = {name: getattr(args, name) for name in model.model_fields if hasattr(args, name)}
    try:
        return model(**given)
    except ValidationError as err:
        message = describe(err, model, given)
    if parser is not None:
        parser.error(message)  # exits 2, as for any other bad argument
    sys.stderr.write(f"error: {message}\n")
    raise SystemExit(2)


def describe(err: ValidationError, model: type[Settings], given: dict[str, Any]) -> str:
    """The errors of ``err``, each naming where its value came from: ``argument --flag`` for a
    flag, ``env VAR`` for the environment."""
    by_env = {_env(name, field): name for name, field in model.model_fields.items()}
    lines = []
    for error in err.errors():
        loc = str(error["loc"][0]) if error["loc"] else ""
        name = by_env.get(loc, loc)
        field = model.model_fields.get(name)
        if field is None:
            source = loc or model.__name__
        elif name in given:
            source = f"argument {flag(name)}"
        else:
            source = f"env {_env(name, field)}"
        lines.append(f"{source}: {error['msg']} (got {error.get('input')!r})")
    return "; ".join(lines)
