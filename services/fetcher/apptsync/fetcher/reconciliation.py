"""When a finished job may mark the stored rows it did not see as deleted (pure).

A provider deletes records without telling a poller: an Acuity appointment or a Calendly booking
that was removed simply stops being listed. Absence is evidence only after a walk that saw
everything: a job whose walk covered its whole window (`JobProgress.walked_whole_window`) over a
listing that returns every record of the window. The job's rows of that connection inside the window
that no page carried are then marked deleted (`appointments.deleted_at`), in the transaction that
finishes the job; a record that comes back later is revived by the writer.

Google Calendar is left out on purpose: its sync-token pass lists only what changed (absence there
proves nothing), and Google reports every deletion in that feed as a cancelled event, which the
writer applies as a cancellation.
"""

from __future__ import annotations

from apptsync.fetcher.progress import JobProgress
from apptsync.shared.appointments import Source

# Sources whose job listing returns every record of the window, canceled ones included.
SOURCES_LISTED_IN_FULL = frozenset({Source.ACUITY, Source.CALENDLY})


# The kind of job the webhook receiver queues (import_jobs.kind, migration 0012): it fetches only the
# records notifications named, so it never saw "everything" whatever its progress says.
TARGETED_KIND = "targeted"


def reconciles(source: Source, progress: JobProgress, *, kind: str = "sync") -> bool:
    """Whether the finishing job marks the rows of its window that it did not see as deleted: only a
    window-walking job (not a targeted one) of a source listed in full that walked its whole window."""
    return kind != TARGETED_KIND and source in SOURCES_LISTED_IN_FULL and progress.walked_whole_window
