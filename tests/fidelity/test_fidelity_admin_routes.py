"""The simulator's fidelity routes over HTTP (an in-process simulator on 127.0.0.1 with a fixed clock):
seeded mutations answer what they applied, stamped at the simulator's clock, and the truth follows."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest

from apptsync.shared.settings import SimulatorSettings
from apptsync.simulator import running_simulator

pytestmark = pytest.mark.fidelity

NOW = datetime(2024, 6, 15, 10, 0, tzinfo=UTC)


async def test_mutations_are_seeded_stamped_at_the_clock_and_reach_the_truth() -> None:
    settings = SimulatorSettings(
        listen_address="127.0.0.1:0", seed=3, appointments_per_tenant=40, accounts_per_provider=1,
        anchor_date=date(2024, 6, 15),
    )  # fmt: skip
    async with (
        running_simulator(settings, clock=lambda: NOW) as simulator,
        httpx.AsyncClient(base_url=simulator.base_url, timeout=30, trust_env=False) as client,
    ):
        before: Any = (await client.get("/_admin/calendly/truth/1")).json()
        answer: Any = (await client.post("/_admin/mutations", json={"seed": 9, "count": 30})).json()
        assert answer["now"] == NOW.isoformat() and len(answer["applied"]) == 30
        assert {m["provider"] for m in answer["applied"]} == {"acuity", "calendly", "google"}
        truth: dict[str, Any] = {}
        for provider, account in (("acuity", 1001), ("calendly", 1), ("google", 1)):
            records = (await client.get(f"/_admin/{provider}/truth/{account}")).json()
            truth[provider] = {r["external_id"]: r for r in records}
        contacts = (await client.get("/_admin/acuity/truth/1001/contacts")).json()["contacts"]
        client_keys = {key for c in contacts for key in [*c["emails"], *c["phones"]]}
        for mutation in answer["applied"]:
            if mutation["kind"] == "new_client":  # a client is no booking: its key is its contact's identity
                assert mutation["key"] in client_keys
                continue
            assert all(key in truth[mutation["provider"]] for key in [mutation["key"], *mutation["related_keys"]])
        assert (await client.get("/_admin/calendly/truth/1")).json() != before
        bookings: Any = (await client.get("/_admin/calendly/accounts/1/bookings")).json()
        assert max(b["invitee"]["updated_at"] for b in bookings) <= "2024-06-15T10:00:00.000000Z"
        for bad in ({"count": 5}, {"seed": 1, "count": -1}, {"seed": 1, "providers": ["nope"]}, {"seed": "x"}):
            assert (await client.post("/_admin/mutations", json=bad)).status_code == 400
        assert (await client.get("/_admin/acuity/truth/9999")).status_code == 404
        assert (await client.get("/_admin/nope/truth/1")).status_code == 404


async def test_clients_payments_and_the_contacts_truth_of_the_legacy_account_over_http() -> None:
    settings = SimulatorSettings(
        listen_address="127.0.0.1:0", seed=3, appointments_per_tenant=40, accounts_per_provider=1,
        anchor_date=date(2024, 6, 15),
    )  # fmt: skip
    auth = ("1100", "acuity-key-1100")
    async with (
        running_simulator(settings, clock=lambda: NOW) as simulator,
        httpx.AsyncClient(base_url=simulator.base_url, timeout=30, trust_env=False) as client,
    ):
        api = "/acuity/api/v1"
        clients: Any = (await client.get(f"{api}/clients", auth=auth)).json()
        assert len(clients) == 650
        assert all(set(c) == {"firstName", "lastName", "email", "phone", "notes"} for c in clients)
        found: Any = (await client.get(f"{api}/clients", params={"search": clients[0]["phone"]}, auth=auth)).json()
        assert clients[0] in found and len(found) < 650
        assert (await client.get(f"{api}/clients")).status_code == 401

        listed: Any = (await client.get(f"{api}/appointments", params={"max": "500"}, auth=auth)).json()
        paid = next(a for a in listed if a["amountPaid"] != "0.00")
        payments: Any = (await client.get(f"{api}/appointments/{paid['id']}/payments", auth=auth)).json()
        assert payments and all(set(p) == {"transactionID", "created", "processor", "amount"} for p in payments)
        assert all(isinstance(p["amount"], str) for p in payments)
        assert sum(Decimal(p["amount"]) for p in payments) == Decimal(paid["amountPaid"])
        assert (await client.get(f"{api}/appointments/1/payments", auth=auth)).status_code == 404

        truth: Any = (await client.get("/_admin/acuity/truth/1100/contacts")).json()
        assert (truth["contacts_total"], truth["paying_contacts"], truth["revenue_minor"]) == (650, 17, 585_600)
        assert truth["currency"] == "USD" and len(truth["contacts"]) == 650
        admin = f"/_admin/acuity/accounts/1100/appointments/{paid['id']}/payments"
        refund = await client.post(admin, json={"amount": "-10.00"})
        assert refund.status_code == 201 and refund.json()["payment"]["amount"] == "-10.00"
        assert refund.json()["appointment"]["amountPaid"] == str(Decimal(paid["amountPaid"]) - 10)
        after: Any = (await client.get("/_admin/acuity/truth/1100/contacts")).json()
        assert after["revenue_minor"] == 585_600 - 1000
        for bad in ({"amount": "x"}, {"amount": "0"}, {}):
            assert (await client.post(admin, json=bad)).status_code == 400

        answer: Any = (
            await client.post("/_admin/mutations", json={"seed": 4, "count": 12, "kinds": ["refund", "paid_invitee"]})
        ).json()
        assert {m["kind"] for m in answer["applied"]} <= {"refund", "paid_invitee"}
        assert (await client.post("/_admin/mutations", json={"seed": 4, "kinds": ["nope"]})).status_code == 400
        impossible = {"seed": 4, "kinds": ["new_series"], "providers": ["acuity"]}
        assert (await client.post("/_admin/mutations", json=impossible)).status_code == 400
        calendly: Any = (await client.get("/_admin/calendly/truth/1/contacts")).json()
        assert calendly["contacts_total"] > 0 and calendly["currency"] == "USD"
        assert (await client.get("/_admin/acuity/truth/9999/contacts")).status_code == 404
        assert (await client.get("/_admin/nope/truth/1/contacts")).status_code == 404
