"""Bearer tokens: digests in the file, tenants per token, clear failures."""

import pytest

from apptsync.gateway.auth import PermissionDeniedError, TokenTable, UnauthenticatedError, token_digest
from apptsync.shared.errors import InvalidArgumentError

pytestmark = pytest.mark.unit
TENANT_A = "7d3c9a64-5f43-4c1c-9a53-0f5b2c1e8e10"
TENANT_B = "0b1f5c2e-8a8e-4f7e-9d6f-2c1b3a4d5e6f"
TABLE = TokenTable.parse({"tokens": [
    {"name": "clinic", "sha256": token_digest("clinic-token"), "tenants": [TENANT_A]},
    {"name": "cronjob", "sha256": token_digest("cron-token"), "tenants": ["*"]},
]})


def test_a_token_acts_only_for_its_tenants() -> None:
    clinic = TABLE.authenticate([("authorization", "Bearer clinic-token")])
    clinic.require(TENANT_A)
    with pytest.raises(PermissionDeniedError):
        clinic.require(TENANT_B)
    TABLE.authenticate([("authorization", "bearer cron-token")]).require(TENANT_B)


@pytest.mark.parametrize("metadata", [[], [("authorization", "Basic abc")], [("authorization", "Bearer nope")],
                                      [("authorization", "Bearer ")]])
def test_missing_malformed_or_unknown_tokens_are_unauthenticated(metadata: list[tuple[str, str]]) -> None:
    with pytest.raises(UnauthenticatedError):
        TABLE.authenticate(metadata)


@pytest.mark.parametrize("document", [{}, {"tokens": [{"name": "x"}]},
                                      {"tokens": [{"name": "x", "sha256": "0" * 64, "tenants": ["not-a-uuid"]}]},
                                      {"tokens": [{"name": "x", "sha256": "0" * 64, "tenants": []}]}])
def test_malformed_token_files_are_rejected(document: object) -> None:
    with pytest.raises(InvalidArgumentError):
        TokenTable.parse(document)
