"""Shared pytest configuration: registers the project's fixture plugins."""

pytest_plugins = ["tests.cluster.fixtures"]
