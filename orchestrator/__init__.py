"""orchestrator: the sweep service. Reads a sweep spec, runs its trials on Ray Tune, aggregates and reports.

The only package that imports Ray (and only inside the commands that need it, so `validate` and `plan` stay fast).
"""


def load(path, **kwargs):
    """A sweep folder's tables as DataFrames, for notebooks: `orchestrator.load("results/mnist_grid").trials`.

    The work is `orchestrator.analysis.load.load`; this name is the public entry, imported lazily so that
    `import orchestrator` stays cheap."""
    from orchestrator.analysis.load import load as load_tables

    return load_tables(path, **kwargs)
