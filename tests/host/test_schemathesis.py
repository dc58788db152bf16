"""Property-based tests of the host API from its own OpenAPI document (schemathesis):
every operation, random and boundary bodies, parameters and headers. Bounded and
deterministic. The host must never answer with a server error, every answer must be
one the document declares, and bad input must change nothing it should not."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error, status_code_conformance
from schemathesis.specs.openapi.checks import negative_data_rejection

from tallypurse.host.api import create_app
from tallypurse.host.api.auth import create_token
from tallypurse.host.config import HostSettings
from tallypurse.host.db.engine import Database
from tallypurse.host.db.migrate import upgrade
from tallypurse.host.service import Host
from tallypurse.lab import Lab


def _app(tmp: Path, lab: Lab) -> tuple[object, str]:
    db = Database.connect(f"sqlite:///{tmp / 'host.db'}")
    upgrade(db)
    host = Host(db, lab.keystore, settings=HostSettings(data_dir=tmp))
    host.registry.create_merchant("Canteen", iban="DE89370400440532013000", bic="COBADEFFXXX",
                                  merchant_id="canteen")
    token = create_token(host, "operator")
    return create_app(host), token


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, lab: Lab) -> tuple[object, str]:
    return _app(tmp_path_factory.mktemp("schemathesis"), lab)


def test_no_operation_of_the_host_api_answers_a_server_error_or_an_undeclared_status(
    api: tuple[object, str],
) -> None:
    app, token = api
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 20  # the whole API, not a corner of it
    failures: list[str] = []
    for operation in operations:

        @settings(max_examples=15, derandomize=True, deadline=None, database=None,
                  phases=[Phase.explicit, Phase.generate],  # report, do not shrink
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def exercise(case: schemathesis.Case) -> None:
            case.call_and_validate(
                headers={"authorization": f"Bearer {token}"},
                checks=[not_a_server_error, status_code_conformance, negative_data_rejection],
            )

        try:
            exercise()
        except Exception as exc:  # collect every failing operation, then report them all
            failures.append(f"{operation.label}: {str(exc)[:600]}")
    assert not failures, "\n\n".join(failures)


@pytest.mark.parametrize("signature_input", ["", "Sig=(", "tp=(\"@method\";x", "A=1"])
def test_malformed_signature_headers_get_a_problem_document_not_a_server_error(
    api: tuple[object, str], signature_input: str
) -> None:
    from fastapi.testclient import TestClient

    app, _ = api
    with TestClient(app) as client:  # type: ignore[arg-type]
        r = client.post("/v1/terminal/sync", content=b"{}", headers={
            "content-type": "application/json", "signature-input": signature_input,
            "signature": "tp=:AAAA:", "content-digest": "sha-256=:AAAA:"})
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] in (2101, 2102)
