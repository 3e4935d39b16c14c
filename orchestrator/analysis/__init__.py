"""From rows to findings: curves, aggregate, statistics, figures, the HTML report."""
