"""``atmfleet dashboards``: generate the Grafana dashboards' JSON, or check it is current."""

from __future__ import annotations

from pathlib import Path

import click

from atmfleet.errors import UsageError

#: Where the generated JSON is committed (``dashboards.build.DEFAULT_DIR``; not imported
#: here so that ``atmfleet`` starts without the dashboard SDK, a development dependency).
DEFAULT_DIR = Path(__file__).resolve().parent / "json"


@click.group("dashboards")
def dashboards() -> None:
    """Grafana dashboards generated as code."""


@dashboards.command("build")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_DIR,
    show_default="dashboards/json",
    help="Folder the JSON files are written to.",
)
@click.option("--check", is_flag=True, help="Write nothing; fail if the folder is not current.")
def build_command(out: Path, check: bool) -> None:
    """Write every dashboard as sorted, indented JSON (stable uids)."""
    try:
        from dashboards.build import differences, rendered, write
    except ImportError as exc:
        raise UsageError(
            f"dashboards build needs grafana-foundation-sdk ({exc}); "
            "install the development extras: pip install -e '.[dev]'"
        ) from None
    files = rendered()
    if check:
        stale = differences(out, files)
        if stale:
            raise UsageError(
                f"{out}: not generated from the current code: {', '.join(stale)} "
                "(run 'atmfleet dashboards build')"
            )
        click.echo(f"{len(files)} dashboards in {out} are current")
        return
    for path in write(out, files):
        click.echo(str(path))
