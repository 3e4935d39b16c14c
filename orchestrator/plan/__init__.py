"""The plan: what a sweep will train, evaluate and reuse, the claim on its folder, preflight, resources and
the estimate."""
