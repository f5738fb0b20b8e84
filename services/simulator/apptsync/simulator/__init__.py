"""apptsync simulator: Acuity-, Calendly- and Google-Calendar-shaped HTTP APIs with seeded data and
fault knobs.

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
- Contacts and money (see _acuity_clients): `GET /acuity/api/v1/clients[?search=...]` (`[{firstName,
  lastName, email, phone, notes}]`, no id), `GET /acuity/api/v1/appointments/{id}/payments`
  (`[{transactionID, created, processor, amount}]`, amounts as strings, a refund a negative entry:
  Acuity documents no refund shape); admin `GET|POST /_admin/acuity/accounts/{user_id}/clients`,
  `GET|POST .../appointments/{id}/payments` `{"amount": "-10.00"}`. Account 1100 (`legacy_acuity_account`
  setting, on by default) is shaped like the legacy tenant (see _legacy_account): 650 contacts,
  2,000 appointments within 85 days of now, 99 ahead, 17 paying contacts, $5,856.00 of revenue.
- `GET|PUT|DELETE /_admin/{provider}/faults` (see FaultKnobs; PUT merges fields)
- `GET|DELETE /_admin/{provider}/counters` (requests, statuses, `max_requests_per_second`,
  `max_concurrent`); `{provider}` is `acuity`, `calendly` or `google`

Calendly lives under `/calendly` (a connection's `base_url`; its token endpoint is
`/calendly/oauth/token`): `GET /scheduled_events` (`organization` | `user` scope, `count` <= 100,
`page_token`, `min_start_time` / `max_start_time`, `status`, `sort`), `GET
/scheduled_events/{uuid}/invitees`; every answer carries `X-RateLimit-Limit/Remaining/Reset` and a
user past the knob `rate_limit_requests` per `rate_limit_window_seconds` gets 429. Account n has the
user `https://api.calendly.com/users/USER<n:012>`, access token `calendly-access-<n>-0` and refresh
token `calendly-refresh-<n>-0`; refresh tokens are single-use and rotate (a reused one is
`invalid_grant`). Admin: `GET /_admin/calendly/accounts` (current tokens, client id/secret),
`GET .../accounts/{n}/bookings` (every invitee with its event, as the API renders them),
`POST .../accounts/{n}/events` `{"start_time", "invitees": k}`, `POST
.../accounts/{n}/invitees/{uuid}/cancel|reschedule|no_show` (`reschedule`: `{"start_time"}`, the old
invitee canceled with `rescheduled`/`new_invitee`, a new event and invitee with `old_invitee`),
`POST /_admin/calendly/oauth/expire-access-tokens`, `GET /_admin/calendly/oauth` (refreshes,
invalid grants, rate-limited requests).

Google Calendar lives under `/google/calendar/v3` (`GET /calendars/{calendarId}/events`: `timeMin`,
`timeMax`, `showDeleted`, `singleEvents`, `maxResults` <= 2500, `pageToken`, `syncToken`), tokens at
`/google/oauth2/token` (the `token_url` connection setting). Account n has two calendars in different
zones and the tokens `google-access-<n>-0` / `google-refresh-<n>-0`. Cancelled events are listed
only with `showDeleted=true` in a full listing, and always in an incremental one: there as id and
status only unless `showDeleted=true` (deleted events always so). Quirks: knob `empty_page_every`
(empty pages mid-listing), sync tokens that expire (410 `fullSyncRequired`), 403 `rateLimitExceeded`
(knob `fail_next_403_rate_limit`). Admin: `GET /_admin/google/accounts`, `GET
.../accounts/{n}/events`, `POST .../accounts/{n}/calendars/{calendarId}/events` `{"start" | "date"}`,
`POST .../events/{eventId}/cancel` (`{"delete": true}`: rendered as a deleted event) and
`.../reschedule` `{"start" | "date"}`, `POST /_admin/google/sync-tokens/expire`,
`POST /_admin/google/oauth/expire-access-tokens`, `GET /_admin/google/oauth`. Google events may be
instances of a recurring series (`recurringEventId`, `originalStartTime`, ids
`<series>_<YYYYMMDDTHHMMSSZ>`); a deleted instance is a cancelled stub that still names both.

Mirror fidelity (see _mutations and _truth): `POST /_admin/mutations` `{"seed", "count",
"near_term_days", "providers", "accounts"}` applies seeded new bookings, reschedules, cancellations,
deletions, no-shows, payment changes (and Google series / instance deletions) at the simulator's
clock and answers what it applied (new Acuity clients, refunds and paid Calendly invitees too;
`"kinds"` draws only some); `GET /_admin/{provider}/truth/{account}` answers, per record the
account has or had, the fields a mirror must hold, and `GET .../truth/{account}/contacts` the
account's contacts, paying contacts and revenue by the merge rules of _contacts_truth. No record is
ever stamped later than the simulator's clock (real time when served).
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
