from __future__ import annotations

from trainyard_registry.app import create_app
from trainyard_registry.settings import RegistrySettings
from trainyard_shared.runner import run_service


def main() -> None:
    run_service("registry", create_app, RegistrySettings)


if __name__ == "__main__":
    main()
