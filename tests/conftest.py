"""Shared pytest configuration. Fixture modules are registered as plugins here so every
test directory can use them without importing anything."""

pytest_plugins = ["tests.s3_server", "tests.s3_faults", "tests.speech_corpus"]
