"""The web console's settings, from ``ATMFLEET_WEB_*`` variables (one pydantic-settings
model, validated once at start-up; an error names the field).

Every number the console works by is here with its default; docs/web.md lists them.
"""

from __future__ import annotations

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from atmfleet.errors import ConfigError
from atmfleet.settings import format_validation_error


class WebSettings(BaseSettings):
    """How the console serves, keeps sessions and limits logins."""

    model_config = SettingsConfigDict(env_prefix="ATMFLEET_WEB_", extra="ignore")

    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8080, ge=1, le=65535)
    session_hours: float = Field(
        8.0, gt=0, le=24 * 30, description="A session ends this long after its last use."
    )
    cookie_secure: bool = Field(
        True,
        description="Send the session cookie only over HTTPS (browsers also accept it on "
        "http://localhost and 127.0.0.1). Turn off only behind a TLS-terminating proxy "
        "that speaks plain HTTP to a non-loopback address.",
    )
    login_max_failures: int = Field(
        5, ge=1, le=1000, description="Failed logins per user and address within the window."
    )
    login_window_s: int = Field(
        900, ge=1, description="The window of the login rate limit, seconds."
    )
    refresh_s: float = Field(
        5.0, ge=1, le=10, description="How often the wall and the board refresh, seconds."
    )
    state_refresh_s: float = Field(
        4.0, gt=0, le=60, description="How often the server reads new device states."
    )
    inventory_refresh_s: float = Field(
        60.0, gt=0, description="How often the server rereads the inventory, seconds."
    )
    page_size: int = Field(200, ge=10, le=5000, description="Rows or tiles per page.")
    pool_size: int = Field(6, ge=1, le=64, description="Database connections of the console.")
    commands: bool = Field(
        True,
        description="Send remote commands through the broker of ATMFLEET_MQTT_* (off: the "
        "console shows commands but its buttons say that no broker is configured).",
    )
    command_poll_s: float = Field(
        1.0, ge=0.2, le=10, description="How often a command's page asks for its state, seconds."
    )
    device_commands: int = Field(
        10, ge=1, le=200, description="Recent commands listed on a device's page."
    )
    cash_forecast_ttl_s: float = Field(
        300.0, ge=1, description="How long the fleet's cash-out forecast is reused, seconds."
    )
    cash_plan_days_ahead: int = Field(
        31, ge=1, le=366, description="How far ahead a replenishment plan may be asked for, days."
    )


def load_web_settings() -> WebSettings:
    try:
        return WebSettings()
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, prefix="ATMFLEET_WEB_")) from None
