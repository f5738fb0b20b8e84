"""apptsync simulator: provider-shaped HTTP APIs (Acuity today) with seeded data and fault knobs.

Acuity lives under `/acuity/api/v1/` (an Acuity connection's `base_url` is
`http://HOST:PORT/acuity/api/v1`). Seeded accounts have fixed credentials: user ids 1001, 1002, ...;
the demo account is `user_id=1001`, `api_key=demo-acuity-key` (Bearer `demo-acuity-token`), the others
`api_key=acuity-key-<user_id>` (Bearer `acuity-token-<user_id>`). Admin endpoints (no auth, JSON):

- `GET /_admin/health` (`{"status": "ok", "providers": [...], "anchor_date": "YYYY-MM-DD"}`)
- `GET /_admin/acuity/accounts`; `GET /_admin/acuity/accounts/{user_id}/appointments[?excludeForms=true]`
  (a JSON array: the full data set, canceled ones included, newest first, rendered as the API does)
- `POST /_admin/acuity/accounts/{user_id}/appointments` `{"datetime": "...+0200", ...}` (add),
  `POST .../appointments/{id}/cancel` `{"no_show": false}`, `POST .../appointments/{id}/reschedule`
  `{"datetime": "..."}`
- `GET|PUT|DELETE /_admin/{provider}/faults` (see FaultKnobs; PUT merges fields)
- `GET|DELETE /_admin/{provider}/counters` (requests, statuses, `max_requests_per_second`,
  `max_concurrent`)
"""

from apptsync.simulator._acuity_data import (
    DEMO_ACCESS_TOKEN,
    DEMO_API_KEY,
    DEMO_USER_ID,
    AcuityAccount,
    AcuityAppointment,
    account_for,
    select_appointments,
)
from apptsync.simulator._faults import FaultKnobs
from apptsync.simulator._server import RunningSimulator, build_app, build_state, running_simulator, serve
from apptsync.simulator._state import SimulatorState

__all__ = [
    "DEMO_ACCESS_TOKEN",
    "DEMO_API_KEY",
    "DEMO_USER_ID",
    "AcuityAccount",
    "AcuityAppointment",
    "FaultKnobs",
    "RunningSimulator",
    "SimulatorState",
    "account_for",
    "build_app",
    "build_state",
    "running_simulator",
    "select_appointments",
    "serve",
]
