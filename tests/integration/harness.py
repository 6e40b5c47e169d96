"""The integration tests' harness: the shared test kit (``trainyard_shared.testkit``)."""

from trainyard_shared.testkit import Bus, common_settings, eventually, running

__all__ = ["Bus", "common_settings", "eventually", "running"]
