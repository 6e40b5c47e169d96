#!/opt/trainyard/bin/python
"""HEALTHCHECK of a Trainyard service image: GET /healthz on the service's own HTTP port.

The port is the one the service listens on (TRAINYARD_<SERVICE>_PORT, set in the image and
overridable at run time), so a changed port never makes a healthy container look sick.
"""

import os
import sys
import urllib.request

service = os.environ.get("TRAINYARD_SERVICE", "")
port = os.environ.get(f"TRAINYARD_{service.upper()}_PORT", "")
if not port.isdigit():
    sys.exit(f"healthcheck: TRAINYARD_{service.upper()}_PORT is not a port: {port!r}")
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=4) as response:
        sys.exit(0 if 200 <= response.status < 300 else f"healthcheck: HTTP {response.status}")
except Exception as exc:  # any failure is "unhealthy"; say why in `docker inspect`
    sys.exit(f"healthcheck: {exc}")
