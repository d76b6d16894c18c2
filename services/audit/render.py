"""How `kubectl memcached` prints: tables for people, JSON and YAML for programs.

Every verb builds plain data (dicts and lists, JSON-ready) and hands it here with the columns a
person reads. ``-o table`` prints those columns, ``-o wide`` adds the wide ones, ``-o json`` and
``-o yaml`` print the data itself, so a script never parses a table. Colour (a bold header, red
for failures, green for successes) is added only when the output is a terminal and
``NO_COLOR`` is unset, as kubectl and most CLIs do. Times on the command line are either a
duration back from now (``10m``) or an RFC 3339 time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import yaml

from memcached_operator.audit.command import parse_duration

OUTPUTS = ("table", "wide", "json", "yaml")

_BOLD, _RED, _GREEN, _YELLOW, _RESET = "\x1b[1m", "\x1b[31m", "\x1b[32m", "\x1b[33m", "\x1b[0m"
# Words that colour a cell: failures red, successes green, waiting yellow.
_BAD = ("error", "deadlettered", "false", "stalled", "failed", "notready", "degraded")
_GOOD = ("success", "true", "complete", "ready", "available")
_WAIT = ("pending", "progressing", "held", "queued")


def parse_time(text: str) -> dt.datetime:
    """``--since``/``--until``: a duration back from now (``90s``, ``10m``, ``2h``, ``7d``) or an
    RFC 3339 time; raises argparse.ArgumentTypeError otherwise."""
    try:
        return dt.datetime.now(dt.UTC) - parse_duration(text)
    except argparse.ArgumentTypeError:
        pass
    try:
        when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a duration or an RFC 3339 time: {text!r} (e.g. 10m, 2h, 2026-12-02T10:00:00Z)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def parse_stamp(text: str) -> dt.datetime | None:
    """A recorded time (RFC 3339) as an aware datetime, None when it is not one."""
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def within(stamp: str, since: dt.datetime | None, until: dt.datetime | None) -> bool:
    when = parse_stamp(stamp)
    if when is None:
        return since is None and until is None
    return (since is None or when >= since) and (until is None or when <= until)


def use_colour(out: TextIO) -> bool:
    return not os.environ.get("NO_COLOR") and hasattr(out, "isatty") and out.isatty()


def _paint(text: str, width: int, colour: bool) -> str:
    padded = text.ljust(width) if width else text
    if not colour:
        return padded
    low = text.lower()
    for words, code in ((_BAD, _RED), (_GOOD, _GREEN), (_WAIT, _YELLOW)):
        if any(low.startswith(w) for w in words):
            return f"{code}{padded}{_RESET}"
    return padded


@dataclass(frozen=True)
class Column:
    """One column: its header, the row field it shows, and whether only ``-o wide`` has it."""

    header: str
    field: str
    wide: bool = False


def cell(value: Any) -> str:
    if value is None or value == "" or value == []:
        return "-"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return " ".join(str(value).split())  # one line per row, whatever the text held


def table(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[Column],
    *,
    wide: bool,
    out: TextIO,
    limit: int = 80,
) -> None:
    """Aligned columns with a header; a cell longer than ``limit`` is cut (wide: never)."""
    shown = [c for c in columns if wide or not c.wide]
    texts = [[cell(row.get(c.field)) for c in shown] for row in rows]
    if not wide:
        texts = [[t if len(t) <= limit else t[: limit - 3] + "..." for t in r] for r in texts]
    widths = [max([len(c.header)] + [len(r[i]) for r in texts]) for i, c in enumerate(shown)]
    colour = use_colour(out)
    header = "   ".join(c.header.ljust(w) for c, w in zip(shown, widths, strict=True)).rstrip()
    out.write((f"{_BOLD}{header}{_RESET}" if colour else header) + "\n")
    for r in texts:
        last = len(r) - 1
        line = "   ".join(
            _paint(t, 0 if i == last else w, colour)
            for i, (t, w) in enumerate(zip(r, widths, strict=True))
        )
        out.write(line.rstrip() + "\n")


def document(data: Any, output: str, out: TextIO) -> None:
    """``data`` as JSON (indented) or YAML."""
    if output == "yaml":
        out.write(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))
    else:
        out.write(json.dumps(data, indent=2) + "\n")


def lines(texts: Sequence[tuple[str, str]], out: TextIO) -> None:
    """``label: text`` lines with the labels aligned (``explain``'s human form)."""
    width = max((len(label) for label, _ in texts), default=0)
    colour = use_colour(out)
    for label, text in texts:
        shown = f"{_BOLD}{label.ljust(width)}{_RESET}" if colour else label.ljust(width)
        out.write(f"{shown}  {text}\n")
