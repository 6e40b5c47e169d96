"""The integration tests' harness: the shared test kit (``trainyard_shared.testing.helpers``)."""

from trainyard_shared.testing.helpers import Bus, common_settings, eventually, running

__all__ = ["Bus", "common_settings", "eventually", "running"]
