"""Shared pytest fixtures for every tier live in tests/fixtures; this loads them everywhere."""

pytest_plugins = [
    "tests.fixtures.postgres",
    "tests.fixtures.smtp",
    "tests.fixtures.kafka",
]
