"""Which notifications a change to the simulated data sends (pure: reads the stores after the change;
the moment of the change is an argument), and `publish`, which queues them on the state's hub.

What fires, as the providers document it:
- Acuity: a booking `appointment.scheduled`, a reschedule `.rescheduled`, a cancellation (or a
  no-show, which the simulator models as a cancellation) `.canceled`, and every change, a payment
  included, `appointment.changed` to the catch-all webhooks. A deletion sends nothing (Acuity has no
  such event: polling finds it).
- Calendly: a booking `invitee.created` per invitee; a cancellation `invitee.canceled`; a reschedule
  `invitee.canceled` for the old invitee (`rescheduled: true`) and then `invitee.created` for the new
  one; a no-show `invitee_no_show.created`. Payment changes and data deletions send nothing.
- Google: any change to a calendar's events sends `exists` once per change to every live channel
  watching that calendar (a series made at once is one change)."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime

from apptsync.simulator._calendly_data import calendly_time, render_event, render_invitee
from apptsync.simulator._mutations import NEAR_TERM_DAYS, AppliedMutation, Kind, apply_mutations
from apptsync.simulator._state import ACUITY, CALENDLY, GOOGLE, PROVIDERS, SimulatorState
from apptsync.simulator._webhooks import Delivery, Notification

# The Acuity action of each mutation kind; a kind not named here (added later) is `changed` only.
_ACUITY_ACTIONS = {Kind.NEW: "scheduled", Kind.RESCHEDULE: "rescheduled", Kind.CANCEL: "canceled",
                   Kind.NO_SHOW: "canceled", Kind.PAYMENT: "changed"}  # fmt: skip


def _json_bytes(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def acuity_appointment_changed(
    state: SimulatorState, user_id: int, appointment_id: int, action: str, *, at: datetime
) -> list[Notification]:
    """Notifications of a change to a live appointment (`action`: scheduled, rescheduled, canceled or
    changed); none for an appointment no longer served (deleted)."""
    appointment = state.acuity.of(user_id).get(appointment_id)
    if appointment is None:
        return []
    return state.webhooks.acuity_changed(
        account=user_id,
        api_key=state.acuity.accounts[user_id].api_key,
        action=action,
        appointment_id=appointment.id,
        calendar_id=appointment.calendar_id,
        appointment_type_id=appointment.type_id,
        mutation_at=at,
    )


def calendly_invitee_changed(
    state: SimulatorState, number: int, invitee_uuid: str, event_name: str, *, at: datetime
) -> list[Notification]:
    """Notifications of `event_name` for one invitee: its resource with its `scheduled_event`."""
    store = state.calendly
    invitee = store.invitees[number].get(invitee_uuid)
    if invitee is None or not state.webhooks.calendly_subscriptions(number):
        return []  # nothing to render for (a benchmark without subscriptions pays nothing)
    event = store.events[number][invitee.event_uuid]
    payload = {**render_invitee(invitee), "scheduled_event": render_event(event, store.invitees_of(number, event.uuid))}
    return state.webhooks.calendly_changed(
        account=number, event_name=event_name, payload=payload, record=invitee.uuid, mutation_at=at,
        created_at_text=calendly_time(at), encode=_json_bytes,
    )  # fmt: skip


def google_calendar_changed(
    state: SimulatorState, number: int, calendar_id: str, *, at: datetime
) -> list[Notification]:
    return state.webhooks.google_changed(account=number, calendar_id=calendar_id, now=at)


def notifications_for(state: SimulatorState, applied: Sequence[AppliedMutation], *, at: datetime) -> list[Notification]:
    """The notifications of `/_admin/mutations`' applied changes, in their order."""
    made: list[Notification] = []
    for mutation in applied:
        if mutation.provider == ACUITY:
            made += _acuity_mutation(state, mutation, at)
        elif mutation.provider == CALENDLY:
            made += _calendly_mutation(state, mutation, at)
        elif mutation.provider == GOOGLE:
            calendars = dict.fromkeys(key.rpartition("/")[0] for key in mutation.keys)
            for calendar_id in calendars:
                made += google_calendar_changed(state, mutation.account, calendar_id, at=at)
    return made


def _acuity_mutation(state: SimulatorState, mutation: AppliedMutation, at: datetime) -> list[Notification]:
    if mutation.kind == Kind.DELETE or not mutation.key.isdigit():
        return []
    action = _ACUITY_ACTIONS.get(mutation.kind, "changed")
    return acuity_appointment_changed(state, mutation.account, int(mutation.key), action, at=at)


def _calendly_mutation(state: SimulatorState, mutation: AppliedMutation, at: datetime) -> list[Notification]:
    number = mutation.account
    if mutation.kind == Kind.NEW:
        return [
            n for key in mutation.keys for n in calendly_invitee_changed(state, number, key, "invitee.created", at=at)
        ]
    if mutation.kind == Kind.RESCHEDULE:
        old = calendly_invitee_changed(state, number, mutation.key, "invitee.canceled", at=at)
        new = [
            n
            for k in mutation.related_keys
            for n in calendly_invitee_changed(state, number, k, "invitee.created", at=at)
        ]
        return old + new
    if mutation.kind == Kind.CANCEL:
        return calendly_invitee_changed(state, number, mutation.key, "invitee.canceled", at=at)
    if mutation.kind == Kind.NO_SHOW:
        return calendly_invitee_changed(state, number, mutation.key, "invitee_no_show.created", at=at)
    return []


def apply_mutations_notifying(
    state: SimulatorState,
    *,
    rng: random.Random,
    now: datetime,
    count: int,
    near_term_days: int = NEAR_TERM_DAYS,
    accounts: Mapping[str, int],
    providers: Sequence[str] = PROVIDERS,
) -> list[AppliedMutation]:
    """`apply_mutations`, one mutation at a time (the same draws from `rng`, so the same mutations),
    publishing each one's notifications right after it: their bodies show the record as that change
    left it, as a provider's would, even when a later mutation of the batch changes it again."""
    applied: list[AppliedMutation] = []
    for _ in range(count):
        one = apply_mutations(
            state, rng=rng, now=now, count=1, near_term_days=near_term_days, accounts=accounts, providers=providers
        )
        applied += one
        publish(state, notifications_for(state, one, at=now))
    return applied


def publish(
    state: SimulatorState,
    notifications: Sequence[Notification],
    *,
    monotonic: Callable[[], float] = time.monotonic,
    wall: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> list[Delivery]:
    """Queues `notifications` (through the fault knobs) and wakes the sender."""
    if not notifications:
        return []
    deliveries = state.webhooks.enqueue(notifications, monotonic=monotonic(), wall=wall())
    state.webhooks.wake()
    return deliveries
