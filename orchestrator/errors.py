"""The orchestrator's one error type for mistakes a user can fix."""


class UserError(Exception):
    """Printed by the CLI as one line ("error: <message>"), exit code 2. Name the file/field and the fix."""
