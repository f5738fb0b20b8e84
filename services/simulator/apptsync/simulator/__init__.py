"""apptsync simulator."""
