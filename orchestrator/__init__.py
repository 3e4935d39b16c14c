"""orchestrator: the sweep service. Reads a sweep spec, runs its trials on Ray Tune, aggregates and reports.

The only package that imports Ray (and only inside the commands that need it, so `validate` and `plan` stay fast).
"""
