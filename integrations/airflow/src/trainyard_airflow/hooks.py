"""The Trainyard connection type and its hook: a URL and an API token."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseHook

from trainyard_airflow.api import ApiSettings, AsyncTrainyardApi, TrainyardApi

DEFAULT_CONN_ID = "trainyard_default"


def settings_from_connection(conn: Any, timeout: float = 30.0) -> ApiSettings:
    """The API's URL and token from an Airflow connection.

    The URL is the ``url`` extra if set, else the host when it is a whole URL
    (``http://trainyard:8700``), else ``<schema or http>://host[:port]``; the token is the password.
    """
    extra = conn.extra_dejson or {}
    host = (conn.host or "").strip()
    if extra.get("url"):
        url = str(extra["url"])
    elif "://" in host:
        url = host
    elif host:
        url = f"{conn.schema or 'http'}://{host}" + (f":{conn.port}" if conn.port else "")
    else:
        raise ValueError(f"connection {conn.conn_id!r}: no host (the Trainyard API's URL)")
    return ApiSettings(url=url.rstrip("/"), token=conn.password or None, timeout=timeout)


class TrainyardHook(BaseHook):
    """Trainyard's HTTP API through an Airflow connection (type ``trainyard``)."""

    conn_name_attr = "trainyard_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = "trainyard"
    hook_name = "Trainyard"

    def __init__(self, trainyard_conn_id: str = DEFAULT_CONN_ID, timeout: float = 30.0) -> None:
        super().__init__()
        self.trainyard_conn_id = trainyard_conn_id
        self.timeout = timeout

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["login", "schema", "port", "extra"],
            "relabeling": {"host": "API URL", "password": "API token"},
            "placeholders": {"host": "http://127.0.0.1:8700", "password": "a team or admin token"},
        }

    def settings(self) -> ApiSettings:
        return settings_from_connection(self.get_connection(self.trainyard_conn_id), self.timeout)

    async def asettings(self) -> ApiSettings:
        """The same from a trigger (the triggerer's event loop must not block on a lookup)."""
        return settings_from_connection(await self.aget_connection(self.trainyard_conn_id), self.timeout)

    def get_conn(self) -> TrainyardApi:
        return TrainyardApi(self.settings())

    async def aget_conn(self) -> AsyncTrainyardApi:
        return AsyncTrainyardApi(await self.asettings())

    def test_connection(self) -> tuple[bool, str]:
        """The UI's "Test" button: is the API there, and does it take the token?"""
        try:
            with self.get_conn() as api:
                api._request("GET", "/v1/jobs", params={"limit": 1})
        except Exception as exc:
            return False, str(exc)
        return True, "the Trainyard API answered and accepted the token"
