"""The host's HTTP API (FastAPI): the signed terminal API, the operator, auditor and
merchant API, health, readiness and metrics."""

from tallypurse.host.api.app import create_app

__all__ = ["create_app"]
