"""The ground package imports none of the parts, and no part imports the composition root.

``atmfleet/`` (protocol, inventory, settings, store) is what every part stands on; ``app/``
(the ``atmfleet`` command, the demo) is the roof that puts the parts together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Top-level folders that are parts of the system (each one a package of its own).
PARTS = sorted(
    p.name
    for p in ROOT.iterdir()
    if p.is_dir() and (p / "__init__.py").exists() and p.name not in {"atmfleet", "app", "tests"}
)


def imported_tops(path: Path) -> set[str]:
    """The top-level package of every import in a file, function-local ones included."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    tops: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            tops.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            tops.add(node.module.split(".")[0])
    return tops


def test_there_are_parts() -> None:
    assert {"collector", "rules", "exporters", "simulator"} <= set(PARTS)


@pytest.mark.parametrize("path", sorted((ROOT / "atmfleet").rglob("*.py")), ids=str)
def test_ground_imports_no_part(path: Path) -> None:
    bad = imported_tops(path) & (set(PARTS) | {"app"})
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize(
    "path", sorted(f for part in PARTS for f in (ROOT / part).rglob("*.py")), ids=str
)
def test_no_part_imports_the_roof(path: Path) -> None:
    assert "app" not in imported_tops(path), f"{path.relative_to(ROOT)} imports app"


def test_a_command_loads_only_its_own_part() -> None:
    """`atmfleet collect` does not import the web console, the cash forecast (numpy) or any
    other part it does not use: each part's command is loaded when it runs."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from app.cli import cli\n"
        "try:\n"
        "    cli.main(['collect', '--help'], standalone_mode=False)\n"
        "finally:\n"
        "    print(sorted(m for m in ('web', 'cash', 'numpy', 'fastapi', 'notify', 'incidents')"
        " if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    assert out.strip().splitlines()[-1] == "[]", out
