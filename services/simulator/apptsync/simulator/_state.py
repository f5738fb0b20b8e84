"""Everything one simulator process holds: the providers' data, fault knobs and request counters."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import date

from apptsync.simulator._acuity_data import DATA_SPREAD_DAYS, DEFAULT_PAID_SHARE, AcuityStore
from apptsync.simulator._calendly_data import CalendlyStore
from apptsync.simulator._clock import Clock
from apptsync.simulator._counters import RequestCounters
from apptsync.simulator._faults import FaultKnobs, FaultState
from apptsync.simulator._google_data import GoogleStore
from apptsync.simulator._legacy_account import legacy_account
from apptsync.simulator._rate_window import RateWindows
from apptsync.simulator._webhooks import WebhookHub

ACUITY = "acuity"
CALENDLY = "calendly"
GOOGLE = "google"
# One name per simulated provider API (the `{provider}` of the admin fault and counter routes).
PROVIDERS = (ACUITY, CALENDLY, GOOGLE)


@dataclass
class ProviderState:
    faults: FaultState = field(default_factory=lambda: FaultState(FaultKnobs()))
    counters: RequestCounters = field(default_factory=RequestCounters)


@dataclass
class SimulatorState:
    acuity: AcuityStore
    anchor: date
    calendly: CalendlyStore
    google: GoogleStore
    providers: dict[str, ProviderState] = field(default_factory=lambda: {p: ProviderState() for p in PROVIDERS})
    calendly_rates: RateWindows = field(default_factory=RateWindows)
    webhooks: WebhookHub = field(default_factory=WebhookHub)

    @classmethod
    def seeded(
        cls,
        *,
        seed: int,
        accounts: int,
        appointments_per_account: int,
        anchor: date,
        seeded_providers: Collection[str] = PROVIDERS,
        acuity_spread_days: int = DATA_SPREAD_DAYS,
        clock: Clock | None = None,
        legacy_acuity_account: bool = False,
        acuity_paid_share: float = DEFAULT_PAID_SHARE,
    ) -> SimulatorState:
        """Every provider's accounts, each with `appointments_per_account` appointments (Acuity
        appointments, Calendly invitees, Google events); the accounts of providers not in
        `seeded_providers` start empty. Acuity's start within +-`acuity_spread_days` of `anchor`.
        `clock` (default: noon UTC of `anchor`) is the stores' now: no record is stamped later.
        `legacy_acuity_account` adds Acuity's legacy-shaped account (see _legacy_account);
        `acuity_paid_share` of the seeded Acuity appointments paid at booking."""

        def count(provider: str) -> int:
            return appointments_per_account if provider in seeded_providers else 0

        acuity = AcuityStore(
            seed=seed,
            accounts=accounts,
            appointments_per_account=count(ACUITY),
            anchor=anchor,
            spread_days=acuity_spread_days,
            clock=clock,
            paid_share=acuity_paid_share,
        )
        if legacy_acuity_account:
            legacy = legacy_account(seed=seed, now=acuity.clock())
            acuity.install(legacy.account, legacy.appointments, clients=legacy.clients, payments=legacy.payments)
        return cls(
            acuity=acuity,
            anchor=anchor,
            calendly=CalendlyStore(
                seed=seed, accounts=accounts, invitees_per_account=count(CALENDLY), anchor=anchor, clock=clock
            ),
            google=GoogleStore(
                seed=seed, accounts=accounts, events_per_account=count(GOOGLE), anchor=anchor, clock=clock
            ),
        )
