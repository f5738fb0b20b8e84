"""Everything one simulator process holds: the providers' data, fault knobs and request counters."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from apptsync.simulator._acuity_data import AcuityStore
from apptsync.simulator._counters import RequestCounters
from apptsync.simulator._faults import FaultKnobs, FaultState

ACUITY = "acuity"
# One name per simulated provider API; Calendly and Google Calendar join here with their modules.
PROVIDERS = (ACUITY,)


@dataclass
class ProviderState:
    faults: FaultState = field(default_factory=lambda: FaultState(FaultKnobs()))
    counters: RequestCounters = field(default_factory=RequestCounters)


@dataclass
class SimulatorState:
    acuity: AcuityStore
    anchor: date
    providers: dict[str, ProviderState] = field(default_factory=lambda: {p: ProviderState() for p in PROVIDERS})

    @classmethod
    def seeded(cls, *, seed: int, accounts: int, appointments_per_account: int, anchor: date) -> SimulatorState:
        store = AcuityStore(
            seed=seed, accounts=accounts, appointments_per_account=appointments_per_account, anchor=anchor
        )
        return cls(acuity=store, anchor=anchor)
