"""Errors a user can fix. Jobs print their message as one line (no traceback) and exit non-zero."""


class UserError(Exception):
    """Bad input: a missing dataset, a wrong checkpoint, too many workers... Exit code 1."""

    exit_code = 1


class ConfigError(UserError):
    """An unknown config key or a bad value. Exit code 2, like a usage error."""

    exit_code = 2


class TrackingUnavailable(UserError):
    """The MLflow tracking server did not answer, after MLflow's own retries. Exit code 1."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, once a job has said what it stopped (its MLflow run marked KILLED, how to resume).
    Jobs print "interrupted: <message>" and exit 130 (128 + SIGINT), as a shell does."""
