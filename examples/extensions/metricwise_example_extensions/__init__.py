"""CONTRIBUTING.md's four recipes as a metricwise plugin package (see ../pyproject.toml)."""
