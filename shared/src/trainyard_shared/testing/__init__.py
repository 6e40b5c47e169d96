"""Test helpers: ``fixtures`` (a pytest plugin: a real nats-server, a prefix per test) and
``helpers`` (a bus client for tests, waiting on a condition with a deadline)."""
