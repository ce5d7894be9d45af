"""What Grafana does to a query before sending it: variables and macros expanded.

Only the forms the atmfleet dashboards use are supported, and anything else left in a
query (``$name``, ``${...}``, ``$__macro``) is an error naming it: a query this module cannot
expand is a query the proofs cannot vouch for. Semantics follow Grafana 11:

- ``${var:regex}``: one value escaped as a regex, several as ``(a|b)``;
- ``${var:sqlstring}``: each value single-quoted (quotes doubled), comma-separated;
- PostgreSQL ``$__timeFilter(expr)`` → ``expr BETWEEN '<from>' AND '<to>'``,
  ``$__timeFrom()``/``$__timeTo()`` → the quoted instants,
  ``$__timeGroupAlias(expr, '5m')`` → ``floor(extract(epoch from expr)/300)*300 AS "time"``;
- PromQL ``$__rate_interval``, ``$__interval``, ``$__range`` → the durations given.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime

from atmfleet.errors import UsageError

_VAR = re.compile(r"\$\{(\w+):(\w+)\}")
_LEFT = re.compile(r"\$\{[^}]*\}|\$__\w+|\$\w+")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def format_values(values: Sequence[str], fmt: str) -> str:
    if fmt == "regex":
        escaped = [re.escape(v) for v in values]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
    if fmt == "sqlstring":
        return ",".join("'" + v.replace("'", "''") + "'" for v in values)
    raise UsageError(f"variable format {fmt!r} is not supported (regex, sqlstring)")


def substitute(text: str, variables: Mapping[str, Sequence[str]]) -> str:
    def one(match: re.Match[str]) -> str:
        name, fmt = match[1], match[2]
        if name not in variables:
            raise UsageError(f"variable {name!r} has no value (known: {sorted(variables)})")
        if not variables[name]:
            raise UsageError(f"variable {name!r} has no values")
        return format_values(variables[name], fmt)

    return _VAR.sub(one, text)


def _leftovers(text: str) -> str:
    left = _LEFT.findall(text)
    if left:
        raise UsageError(f"cannot expand {left[0]!r} in: {text}")
    return text


def expand_promql(expr: str, variables: Mapping[str, Sequence[str]], interval: str) -> str:
    """``expr`` with variables and ``$__rate_interval``/``$__interval``/``$__range`` given."""
    out = substitute(expr, variables)
    for macro in ("$__rate_interval", "$__interval", "$__range"):
        out = out.replace(macro, interval)
    return _leftovers(out)


def _seconds(duration: str) -> int:
    match = re.fullmatch(r"'?(\d+)([smhd])'?", duration.strip())
    if not match:
        raise UsageError(f"$__timeGroupAlias: interval {duration!r} is not like '5m'")
    return int(match[1]) * _UNITS[match[2]]


def _args(text: str, start: int) -> tuple[list[str], int]:
    """The comma-separated arguments of the call whose '(' is at ``start``; index after ')'."""
    depth, args, current = 0, [], []
    i = start
    while i < len(text):
        c = text[i]
        if c == "(":
            depth += 1
            if depth > 1:
                current.append(c)
        elif c == ")":
            depth -= 1
            if depth == 0:
                args.append("".join(current).strip())
                return [a for a in args if a], i + 1
            current.append(c)
        elif c == "," and depth == 1:
            args.append("".join(current).strip())
            current = []
        else:
            current.append(c)
        i += 1
    raise UsageError(f"unbalanced parentheses after {text[:start]!r}")


def expand_sql(
    text: str, variables: Mapping[str, Sequence[str]], start: datetime, end: datetime
) -> str:
    """``text`` as Grafana's PostgreSQL data source sends it for the range start–end."""
    t_from = "'" + start.isoformat() + "'"
    t_to = "'" + end.isoformat() + "'"
    out = substitute(text, variables)
    pieces: list[str] = []
    pos = 0
    for match in re.finditer(r"\$__(\w+)\(", out):
        if match.start() < pos:
            continue  # inside an argument already expanded
        name = match[1]
        args, after = _args(out, match.end() - 1)
        if name == "timeFilter" and len(args) == 1:
            repl = f"{args[0]} BETWEEN {t_from} AND {t_to}"
        elif name == "timeFrom" and not args:
            repl = t_from
        elif name == "timeTo" and not args:
            repl = t_to
        elif name == "timeGroupAlias" and len(args) == 2:
            n = _seconds(args[1])
            repl = f'floor(extract(epoch from {args[0]})/{n})*{n} AS "time"'
        else:
            raise UsageError(f"macro $__{name}({', '.join(args)}) is not supported")
        pieces.append(out[pos : match.start()] + repl)
        pos = after
    pieces.append(out[pos:])
    return _leftovers("".join(pieces))
