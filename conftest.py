pytest_plugins = ["trainyard_shared.testing.fixtures"]
