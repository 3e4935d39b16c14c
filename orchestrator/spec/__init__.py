"""The sweep spec: its models, which trial fields go where, YAML loading, expansion to trials."""
