"""Errors a user can fix. Jobs print their message as one line (no traceback) and exit non-zero."""


class UserError(Exception):
    """Bad input: a missing dataset, a wrong checkpoint, too many workers... Exit code 1."""

    exit_code = 1


class ConfigError(UserError):
    """An unknown config key or a bad value. Exit code 2, like a usage error."""

    exit_code = 2
