"""A URL's credentials: masked in what is shown, removed from what is stored or logged."""

from __future__ import annotations

import pytest

from trainyard_contracts.spec import redact_url, strip_url_credentials, url_credentials

pytestmark = pytest.mark.unit

CASES = [
    # url, its secret, shown masked, stripped
    (
        "https://tok3n@github.com/o/r.git",
        "tok3n",
        "https://***@github.com/o/r.git",
        "https://github.com/o/r.git",
    ),
    (
        "https://user:pa55@host/r.git",
        "user:pa55",
        "https://***@host/r.git",
        "https://host/r.git",
    ),
    ("ssh://git:pa55@host/r.git", "pa55", "ssh://git:***@host/r.git", "ssh://git@host/r.git"),
    ("ssh://git@host/r.git", None, "ssh://git@host/r.git", "ssh://git@host/r.git"),
    ("https://host/r.git", None, "https://host/r.git", "https://host/r.git"),
    ("/srv/repos/r", None, "/srv/repos/r", "/srv/repos/r"),
]


@pytest.mark.parametrize(("url", "secret", "shown", "stripped"), CASES)
def test_a_urls_secret_is_masked_when_shown_and_removed_when_stripped(
    url: str, secret: str | None, shown: str, stripped: str
) -> None:
    assert url_credentials(url) == secret
    assert redact_url(url) == shown
    assert strip_url_credentials(url) == stripped
    if secret is not None:
        assert secret not in redact_url(url) and secret not in strip_url_credentials(url)
