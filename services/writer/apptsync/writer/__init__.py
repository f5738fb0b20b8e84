"""apptsync writer: consumes AppointmentPages, upserts them exactly once, reports PageResults."""

from apptsync.writer.service import run_writer

__all__ = ["run_writer"]
