"""The exception types a user ever sees: a one-line message, exit code 2 (exporters raise their own,
``exporters.files.ExportError``, which the CLI reports the same way)."""


class HsconasError(Exception):
    """Bad input or an unusable environment, reported as one line (exit code 2) by the CLI."""


class Interrupted(HsconasError):
    """Long work stopped by Ctrl-C after saving what it had; the message says how to resume."""
