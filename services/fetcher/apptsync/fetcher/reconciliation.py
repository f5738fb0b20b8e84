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


def reconciles(source: Source, progress: JobProgress) -> bool:
    """Whether the finishing job marks the rows of its window that it did not see as deleted."""
    return source in SOURCES_LISTED_IN_FULL and progress.walked_whole_window
