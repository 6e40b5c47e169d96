"""The model-alias stack (modelstack.py) as fixtures: one MLflow store per test module."""

from __future__ import annotations

import pytest

from services.registry.tests.modelstack import model_stack, new_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    # creating a store runs MLflow's migrations (seconds): once per module; tests use their own names
    return new_store(tmp_path_factory.mktemp("mlflow"))


@pytest.fixture
def stack(nats_server, prefix, tmp_path, store):
    """``async with stack as s``: NATS, the registry on ``store``, the API with an admin token."""
    return model_stack(nats_server.url, prefix, tmp_path, store)
