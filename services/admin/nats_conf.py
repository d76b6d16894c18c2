"""The NATS users of services/admin/nats_auth.py as nats-server configuration: the ``accounts``
block of nats.conf (``deploy/base/nats/auth.conf``, and the local nats-server's), and the
passwords: generated locally into the state directory, handed to the server as bcrypt hashes
in the environment variables the block names, never as text in it.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path

from memcached_operator.admin.nats_auth import (
    ACCOUNT,
    AUDIT_ACCOUNT,
    AUDIT_IMPORTS,
    USERS,
    User,
)

AUTH_CONF_PATH = "deploy/base/nats/auth.conf"
REGENERATE = f"python -m memcached_operator.admin.nats_auth > {AUTH_CONF_PATH}"
PASSWORDS_FILE = "nats-passwords.json"
# Work factor of the password hashes: each connection costs the server one comparison.
BCRYPT_COST = 11


def _subject_list(key: str, subjects: Iterable[str], indent: str) -> list[str]:
    unique = dict.fromkeys(subjects)  # keeps the order
    return [f"{indent}{key}: [", *(f"{indent}  {json.dumps(s)}" for s in unique), f"{indent}]"]


def _direction(name: str, allow: tuple[str, ...], deny: tuple[str, ...], indent: str) -> list[str]:
    lines = [f"{indent}{name}: {{", *_subject_list("allow", allow, indent + "  ")]
    if deny:
        lines += _subject_list("deny", deny, indent + "  ")
    lines.append(f"{indent}}}")
    return lines


def _user_lines(u: User, indent: str) -> list[str]:
    inner = indent + "  "
    lines = [
        f"{indent}# {u.name}: {u.purpose}",
        f"{indent}{{",
        f"{inner}user: {u.name}",
        f"{inner}password: ${u.password_variable}",
    ]
    if u.permissions is not None:
        p = u.permissions
        lines.append(f"{inner}permissions: {{")
        lines += _direction("publish", p.publish, p.publish_deny, inner + "  ")
        lines += _direction("subscribe", p.subscribe, p.subscribe_deny, inner + "  ")
        lines.append(f"{inner}}}")
    lines.append(f"{indent}}}")
    return lines


def _account_lines(account: str) -> list[str]:
    lines = [f"  {account}: {{"]
    if account == ACCOUNT:
        lines.append("    jetstream: enabled")
    lines.append("    users: [")
    for u in USERS:
        if u.account == account:
            lines += _user_lines(u, "      ")
    lines.append("    ]")
    if account == ACCOUNT:
        # Response type stream: a batched direct get answers with several messages.
        lines.append("    exports: [")
        only = f"accounts: [{AUDIT_ACCOUNT}]"
        lines += [
            f"      {{service: {json.dumps(s)}, response_type: stream, {only}}}"
            for s in AUDIT_IMPORTS
        ]
        lines.append("    ]")
    else:
        lines.append("    imports: [")
        lines += [
            f"      {{service: {{account: {ACCOUNT}, subject: {json.dumps(s)}}}}}"
            for s in AUDIT_IMPORTS
        ]
        lines.append("    ]")
    lines.append("  }")
    return lines


def authorization_block() -> str:
    """The ``accounts`` block of nats.conf for every user, password hashes as env variables."""
    lines = [
        "# Generated from services/admin/nats_auth.py; do not edit.",
        f"# {REGENERATE}",
        "accounts {",
    ]
    for account in (ACCOUNT, AUDIT_ACCOUNT):
        lines += _account_lines(account)
    lines += ["}", ""]
    return "\n".join(lines)


# -- local passwords -------------------------------------------------------------------------


def generate_password() -> str:
    # Letters first, then only hex digits: safe in a URL, a shell and a config value.
    return "mcop" + secrets.token_hex(16)


def password_hash(password: str, *, cost: int = BCRYPT_COST) -> str:
    """The bcrypt hash nats-server compares a client's password with."""
    import bcrypt  # only the server's side needs it

    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode()


def ensure_passwords(state_dir: Path) -> dict[str, str]:
    """The local users' passwords: generated into the state directory once, then reused."""
    existing = load_passwords(state_dir)
    if existing is not None and all(u.name in existing for u in USERS):
        return existing
    passwords = {u.name: generate_password() for u in USERS}
    passwords.update(existing or {})
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / PASSWORDS_FILE
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(passwords, out, indent=2)
    tmp.replace(path)
    return passwords


def load_passwords(state_dir: Path) -> dict[str, str] | None:
    """The passwords generated for this state directory, or None when it has none."""
    try:
        data = json.loads((state_dir / PASSWORDS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else None


def server_environment(passwords: Mapping[str, str], *, cost: int = BCRYPT_COST) -> dict[str, str]:
    """The variables nats-server resolves the passwords of the accounts block with: each
    user's bcrypt hash, quoted (nats-server parses a variable's value as a config value, and
    an unquoted ``$2b$...`` would read as another variable)."""
    known = {u.name: u for u in USERS}
    return {
        known[name].password_variable: json.dumps(password_hash(password, cost=cost))
        for name, password in passwords.items()
        if name in known
    }
