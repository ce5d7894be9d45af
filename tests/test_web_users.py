"""``atmfleet users``: the first admin bootstraps, then only an admin adds, disables and
sets passwords; tokens are shown once and kept hashed; every change is audited; and the
console's strings exist in both languages."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from app.cli import cli
from web import i18n

PW = "a long enough password"


def run(db: str, *args: str, user: str = "root", **env: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        cli, ["users", *args],
        env={"ATMFLEET_DATABASE_URL": db, "ATMFLEET_USER": user, "PW": PW, **env},
    )  # fmt: skip
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


@pytest.mark.integration
class TestUsersCommand:
    def test_bootstrap_then_only_an_admin_acts(self, db: str) -> None:
        code, out = run(db, "add", "root", "--role", "admin", "--password-env", "PW")
        assert code == 0, out
        code, out = run(db, "add", "eve", "--role", "viewer", "--password-env", "PW", user="eve")
        assert code == 2 and "not registered" in out  # no second bootstrap
        with psycopg.connect(db) as conn:
            conn.execute("INSERT INTO subbranches VALUES ('S1', '赤峰', '2')")
            conn.commit()
        code, out = run(db, "add", "li", "--role", "operator", "--scope", "subbranch:S1",
                        "--password-env", "PW")  # fmt: skip
        assert code == 0, out
        code, out = run(db, "add", "x", "--role", "viewer", "--scope", "subbranch:NOPE",
                        "--no-password")  # fmt: skip
        assert code == 2 and "no subbranch 'NOPE'" in out
        code, out = run(db, "passwd", "li", "--password-env", "PW", user="li")
        assert code == 0, out  # one's own password
        code, out = run(db, "disable", "root", user="li")
        assert code == 2 and "is a operator" in out
        code, out = run(db, "disable", "li")
        assert code == 0 and "disabled" in out
        code, out = run(db, "list")
        assert re.search(r"li\s+operator\s+subbranch:S1\s+disabled", out), out
        with psycopg.connect(db) as conn:
            hashed = conn.execute("SELECT password_hash FROM users WHERE username = 'li'")
            assert hashed.fetchone()[0].startswith("$argon2id$")
            actions = [r[0] for r in conn.execute("SELECT action FROM audit_log ORDER BY id")]
        assert actions == ["user.add", "user.add", "user.passwd", "user.disable"]

    def test_a_token_is_shown_once_and_kept_hashed(self, db: str) -> None:
        run(db, "add", "root", "--role", "admin", "--password-env", "PW")
        code, out = run(db, "token", "add", "root", "--name", "ticketing", "--days", "30")
        assert code == 0, out
        token = out.strip().splitlines()[-1]
        assert token.startswith("atf_")
        with psycopg.connect(db) as conn:
            stored = conn.execute("SELECT token_hash, prefix FROM api_tokens").fetchone()
        assert token not in stored[0] and stored[1] == token[:10]
        code, out = run(db, "token", "list")
        assert "ticketing" in out and token not in out
        code, out = run(db, "token", "revoke", "1")
        assert code == 0
        code, out = run(db, "token", "revoke", "1")
        assert code == 2

    def test_a_short_password_is_refused(self, db: str) -> None:
        code, out = run(db, "add", "root", "--role", "admin", "--password-env", "SHORT",
                        SHORT="short")  # fmt: skip
        assert code == 2 and "too short" in out


class TestLanguages:
    def test_every_string_has_both_languages(self) -> None:
        for key, (zh, en) in i18n.M.items():
            assert zh.strip() and en.strip(), key

    def test_every_key_a_template_names_exists(self) -> None:
        folder = Path(i18n.__file__).parent / "templates"
        used: set[str] = set()
        for f in folder.glob("*.html"):
            used |= set(re.findall(r"\bt\('([a-z_.\-]+)'\s*[),]", f.read_text(encoding="utf-8")))
        missing = sorted(k for k in used if k not in i18n.M)
        assert not missing, missing

    def test_every_state_and_action_is_named(self) -> None:
        from web.fleet import STATES

        for s in STATES:
            assert f"state.{s}" in i18n.M
        for a in ("ack", "dispatch", "arrive", "suspend", "resume", "restore", "close", "reopen"):
            assert f"act.{a}" in i18n.M
