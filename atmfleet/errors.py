"""Errors a user can act on. The CLI prints their message and exits 2, never a traceback."""

from __future__ import annotations


class AtmfleetError(Exception):
    """Base class: the message is for the user."""


class ConfigError(AtmfleetError):
    """A setting, rules file or inventory file is wrong; the message names the field."""


class UsageError(AtmfleetError):
    """A command was called with values it cannot work with."""


class Forbidden(AtmfleetError):
    """The actor may not do this (role or organisational scope); nothing was changed."""


class Conflict(AtmfleetError):
    """Someone else changed the object first; nothing was changed. Reload and retry."""
