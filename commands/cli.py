"""``atmfleet command``: send remote commands to devices, follow and list them, fetch
journals, and run the listener that records the devices' answers (docs/commands.md).

The CLI acts as ``ATMFLEET_USER`` (else the login name), who must be a registered user:
``list``/``show`` need a viewer, ``send``/``journal`` an operator, inside their scope.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import click
import psycopg

from atmfleet.errors import UsageError
from atmfleet.settings import Settings, load_settings
from atmfleet.store.audit import cli_actor
from atmfleet.store.connect import connect
from atmfleet.store.migrate import require_current
from commands import service
from commands.messages import LANGUAGES, messages, reason
from commands.mqtt import BrokerPublisher, CommandListener
from commands.protocol import DISRUPTIVE, FINAL, CommandKind, State
from rules.config import Rules, load_rules


@contextmanager
def _opened() -> Iterator[tuple[Settings, Rules, psycopg.Connection[Any]]]:
    settings = load_settings()
    rules = load_rules(settings.rules_file)
    with connect(
        settings.require_database_url(), application_name="atmfleet-command", autocommit=True
    ) as conn:
        require_current(conn)
        yield settings, rules, conn


def _local(at: datetime | None, tz: ZoneInfo) -> str:
    return "–" if at is None else at.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S")


def _lang_option(f: Any) -> Any:
    return click.option(
        "--lang",
        type=click.Choice(LANGUAGES),
        default="zh-CN",
        show_default=True,
        help="zh-CN (Chinese) or en (English).",
    )(f)


@click.group("command")
def command() -> None:
    """Remote commands: restart, out of / back in service, refresh, journal (docs/commands.md)."""


@command.command("send")
@click.argument("device_id")
@click.argument("kind", type=click.Choice([k.value for k in CommandKind]))
@click.option("--since", default=None, help="journal: start of the range (RFC 3339, with zone).")
@click.option("--until", default=None, help="journal: end of the range (RFC 3339, with zone).")
@click.option(
    "--what", type=click.Choice(["journal", "logs"]), default=None, help="journal: EJ or logs."
)
@click.option("--expires", "expires_s", type=int, default=None, help="Seconds (rules default).")
@click.option("--yes", is_flag=True, help="Confirm a disruptive command without a prompt.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Follow it to the end.")
@_lang_option
def send_cmd(
    device_id: str,
    kind: str,
    since: str | None,
    until: str | None,
    what: str | None,
    expires_s: int | None,
    yes: bool,
    wait: bool,
    lang: str,
) -> None:
    """Send KIND to DEVICE_ID; with --wait print each state until it ends."""
    text = messages(lang)
    params: dict[str, Any] = {}
    if kind == CommandKind.JOURNAL:
        params = {k: v for k, v in {"since": since, "until": until, "what": what}.items() if v}
    elif since or until or what:
        raise UsageError("--since/--until/--what are for journal only")
    confirm = yes
    if CommandKind(kind) in DISRUPTIVE and not yes:
        if not os.isatty(0):
            raise UsageError(f"{kind} interrupts the service of {device_id}: confirm it (--yes)")
        confirm = click.confirm(text["confirm"].format(kind=text[kind], device=device_id))
        if not confirm:
            raise UsageError("not confirmed; nothing sent")
    actor = cli_actor()
    with _opened() as (settings, rules, conn), BrokerPublisher(settings) as publisher:
        cmd = service.send(
            conn,
            actor,
            device_id,
            kind,
            publisher=publisher,
            rules=rules.commands,
            params=params,
            confirm=confirm,
            expires_s=expires_s,
        )
        click.echo(f"{text['h.id']} {cmd.id}  {device_id}  {text[kind]}")
        _follow(conn, actor, cmd, rules, text, wait)


def _follow(
    conn: psycopg.Connection[Any],
    actor: Any,
    cmd: service.Command,
    rules: Rules,
    text: dict[str, str],
    wait: bool,
) -> None:
    printed = 0
    tz = rules.tz
    if wait and cmd.state not in FINAL:
        click.echo(text["waiting"].format(at=_local(cmd.expires_at, tz)), err=True)
    while True:
        cmd = service.show(conn, actor, cmd.id)
        for event in cmd.history[printed:]:
            why = reason(text, (event.detail or {}).get("reason"))
            late = " (late)" if (event.detail or {}).get("late") else ""
            line = f"{_local(event.at, tz)}  {text.get(event.state, event.state)}{late}"
            click.echo(line + (f"  {why}" if why else ""))
        printed = len(cmd.history)
        if not wait or cmd.state in FINAL:
            break
        time.sleep(0.1)  # polling the database: the listener writes what devices answer
    if cmd.result and cmd.state in FINAL:
        click.echo(f"{text['h.result']}: {json.dumps(cmd.result, ensure_ascii=False)}")
    if cmd.journal_bytes is not None:
        click.echo(f"atmfleet command journal {cmd.id} --out FILE")
    if wait and cmd.state != State.DONE:
        raise SystemExit(1)


@command.command("list")
@click.option("--device", "device_id", default=None)
@click.option("--state", default=None, type=click.Choice([s.value for s in State]))
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@_lang_option
def list_cmd(
    device_id: str | None, state: str | None, limit: int, as_json: bool, lang: str
) -> None:
    """The latest commands of the devices in your scope, newest first."""
    text = messages(lang)
    with _opened() as (_settings, rules, conn):
        cmds = service.list_commands(
            conn, cli_actor(), device_id=device_id, state=state, limit=limit
        )
    if as_json:
        click.echo(json.dumps([_plain(c) for c in cmds], ensure_ascii=False, indent=2))
        return
    if not cmds:
        click.echo(text["none"])
        return
    head = ("h.id", "h.device", "h.kind", "h.state", "h.by", "h.created", "h.reason")
    rows = [[text[h] for h in head]]
    for c in cmds:
        rows.append(
            [c.id, c.device_id, text[c.kind], text[c.state], c.requested_by,
             _local(c.created_at, rules.tz), reason(text, c.reason)]
        )  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for r in rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def _plain(c: service.Command) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in vars(c).items():
        if isinstance(value, datetime):
            value = value.astimezone(UTC).isoformat()
        if key == "history":
            value = [
                {"at": e.at.astimezone(UTC).isoformat(), "state": e.state, "source": e.source,
                 "detail": e.detail}
                for e in value
            ]  # fmt: skip
        out[key] = value
    return out


@command.command("show")
@click.argument("command_id")
@click.option("--json", "as_json", is_flag=True)
@_lang_option
def show_cmd(command_id: str, as_json: bool, lang: str) -> None:
    """One command and its state history (times in the bank's local time)."""
    text = messages(lang)
    with _opened() as (_settings, rules, conn):
        c = service.show(conn, cli_actor(), command_id)
    if as_json:
        click.echo(json.dumps(_plain(c), ensure_ascii=False, indent=2))
        return
    tz = rules.tz
    click.echo(f"{text['h.id']}: {c.id}")
    click.echo(f"{text['h.device']}: {c.device_id}")
    shown = dict(c.params)
    for key in ("since", "until"):  # the range in the bank's local time
        if key in shown:
            shown[key] = _local(datetime.fromisoformat(shown[key]), tz)
    click.echo(f"{text['h.kind']}: {text[c.kind]} {json.dumps(shown) if shown else ''}".rstrip())
    click.echo(f"{text['h.state']}: {text[c.state]}")
    click.echo(f"{text['h.by']}: {c.requested_by} ({c.surface})")
    click.echo(f"{text['h.created']}: {_local(c.created_at, tz)}")
    click.echo(f"{text['h.expires']}: {_local(c.expires_at, tz)}")
    if c.reason:
        click.echo(f"{text['h.reason']}: {reason(text, c.reason)}")
    if c.result:
        click.echo(f"{text['h.result']}: {json.dumps(c.result, ensure_ascii=False)}")
    if c.journal_bytes is not None:
        click.echo(f"{text['h.journal']}: {c.journal_bytes} B")
    click.echo(f"{text['h.history']}:")
    for e in c.history:
        detail = f"  {json.dumps(e.detail, ensure_ascii=False)}" if e.detail else ""
        click.echo(f"  {_local(e.at, tz)}  {text.get(e.state, e.state)}  [{e.source}]{detail}")


@command.command("journal")
@click.argument("command_id")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@_lang_option
def journal_cmd(command_id: str, out: Path, lang: str) -> None:
    """Write the journal a journal command fetched to --out (atomically)."""
    text = messages(lang)
    with _opened() as (_settings, _rules, conn):
        data = service.journal(conn, cli_actor(), command_id)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, out)
    click.echo(text["saved"].format(n=len(data), path=out))


@command.command("listen")
def listen_cmd() -> None:
    """Record what devices answer and enforce expiry (a service; run one, as the
    ``atmfleet-commands`` broker identity)."""
    settings = load_settings()
    rules = load_rules(settings.rules_file)
    url = settings.require_database_url()
    with connect(url, application_name="atmfleet-commands", autocommit=True) as conn:
        require_current(conn)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_a: stop.set())
    CommandListener(settings, url, rules.commands).run_forever(stop)
