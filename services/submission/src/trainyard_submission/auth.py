"""The bootstrap (admin) token: from the settings, or generated once into the data dir (mode 0600).

Team tokens and the checks live in tokens.py.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

TOKEN_FILE = "api-token"


def load_or_create_token(data_dir: Path, configured: str | None) -> str:
    if configured:
        return configured
    path = data_dir / TOKEN_FILE
    if path.exists():
        token = path.read_text().strip()
        if token:
            return token
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token
