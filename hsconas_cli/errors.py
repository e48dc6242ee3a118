"""The one exception type a user ever sees: a one-line message, exit code 2."""


class HsconasError(Exception):
    """Bad input or an unusable environment, reported as one line (exit code 2) by the CLI."""

    exit_code = 2


class Interrupted(HsconasError):
    """Long work stopped by Ctrl-C after saving what it had; the message says how to resume."""
