"""The webhook receiver (`apptsync webhook-receiver`): provider notifications in, targeted-sync jobs out.

Its own process and Deployment, apart from the gRPC gateway: it is the one surface the internet
reaches, so it holds no gRPC API, no bearer tokens and no client of the import API; it only verifies a
notification and hands it on to the jobs table (import-linter keeps `apptsync.gateway.server` out of
this package). The decisions are `apptsync.shared.webhooks` (pure); this package is the HTTP adapter.
"""

from apptsync.gateway.webhooks.receiver import build_receiver_app, run_webhook_receiver

__all__ = ["build_receiver_app", "run_webhook_receiver"]
