"""Similarity targets: the target registry, the builders, pair ranges, pair sampling."""
