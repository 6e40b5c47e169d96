"""The provider as Airflow finds it: the ``apache_airflow_provider`` entry point, its connection
type and hook, its extra links; and the connection's URL and token."""

from __future__ import annotations

import pytest
from airflow.sdk import Connection

from trainyard_airflow.hooks import TrainyardHook, settings_from_connection

pytestmark = pytest.mark.airflow


def test_airflow_finds_the_provider_its_connection_type_and_links():
    from airflow.providers_manager import ProvidersManager
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    manager = ProvidersManager()  # the API server's view: the form, the links
    assert manager.providers["airflow-provider-trainyard"].version == "0.1.0"
    assert "trainyard_airflow.links.TrainyardJobLink" in manager.extra_links_class_names
    assert manager.field_behaviours["trainyard"]["relabeling"]["password"] == "API token"
    hook = ProvidersManagerTaskRuntime().hooks["trainyard"]  # a worker's: connection type -> hook
    assert hook is not None and hook.hook_class_name == "trainyard_airflow.hooks.TrainyardHook"
    assert hook.connection_id_attribute_name == "trainyard_conn_id"


@pytest.mark.parametrize(
    ("fields", "url"),
    [
        ({"host": "http://trainyard.internal:8700/"}, "http://trainyard.internal:8700"),
        ({"host": "trainyard.internal", "port": 8700}, "http://trainyard.internal:8700"),
        ({"host": "trainyard.internal", "schema": "https"}, "https://trainyard.internal"),
        ({"host": "ignored", "extra": '{"url": "https://ty.example/api"}'}, "https://ty.example/api"),
    ],
)
def test_the_connection_names_the_api_url_and_the_token(fields, url):
    conn = Connection(conn_id="ty", conn_type="trainyard", password="s3cret", **fields)
    settings = settings_from_connection(conn)
    assert settings.url == url
    assert settings.headers()["Authorization"] == "Bearer s3cret"
    assert settings.job_page("j1") == f"{url}/ui/jobs/j1"


def test_a_connection_without_a_host_is_refused_by_name():
    with pytest.raises(ValueError, match="'ty': no host"):
        settings_from_connection(Connection(conn_id="ty", conn_type="trainyard"))


def test_the_connection_test_button_checks_the_token(stack, monkeypatch):
    assert TrainyardHook().test_connection() == (True, "the Trainyard API answered and accepted the token")
    bad = f'{{"conn_type": "trainyard", "host": "{stack.url}", "password": "wrong"}}'
    monkeypatch.setenv("AIRFLOW_CONN_TRAINYARD_BAD", bad)
    ok, message = TrainyardHook("trainyard_bad").test_connection()
    assert not ok and message.startswith("401")
