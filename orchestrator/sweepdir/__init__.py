"""The sweep folder as the only state: its tables, resume, the launch lock, blocked rows."""
