"""Structured JSON logs on stderr, shipped to Logstash when LOGSTASH_HOST/LOGSTASH_PORT are set."""

from __future__ import annotations

import logging
import os
import sys

from pythonjsonlogger.json import JsonFormatter

_SECRET_WORDS = ("token", "password", "secret", "authorization")


class RedactSecrets(logging.Filter):
    """Never log a secret: values of fields whose name says secret are masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in list(record.__dict__.items()):
            if any(word in key.lower() for word in _SECRET_WORDS) and isinstance(value, str):
                setattr(record, key, "***")
        return True


def setup_logging(service: str, level: str = "INFO", fmt: str = "json") -> None:
    # MLflow otherwise gives its loggers their own plain-text handler when first imported: a
    # second format in the registry's log file
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(level.upper())
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                static_fields={"service": service},
            )
        )
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {service} %(levelname)s %(message)s"))
    handler.addFilter(RedactSecrets())
    root.addHandler(handler)

    host, port = os.environ.get("LOGSTASH_HOST"), os.environ.get("LOGSTASH_PORT")
    if host and port:
        import logstash  # python-logstash

        transport = os.environ.get("LOGSTASH_TRANSPORT", "tcp").lower()
        handler_cls = logstash.TCPLogstashHandler if transport == "tcp" else logstash.UDPLogstashHandler
        shipper = handler_cls(host, int(port), version=1, tags=["trainyard", service])
        shipper.addFilter(RedactSecrets())
        root.addHandler(shipper)
    own = logging.getLogger("mlflow")  # when MLflow was imported first, it set up its own handler
    if own.handlers:
        own.handlers.clear()
        own.propagate = True
    for noisy in ("httpx", "httpcore", "alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
