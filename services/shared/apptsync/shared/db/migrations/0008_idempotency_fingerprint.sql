-- An idempotency key names one StartImport request, not just one job: a later call with the same key
-- gets that job only when it asks for the same thing, and is refused otherwise (see
-- apptsync.shared.db.jobs.request_differences). The request's window and options are kept as the
-- client sent them (a JSON object keyed by proto field path, e.g. "options.page_size"); its source
-- and connection are the job's own columns. NULL for a job started without a key, and for a job
-- started before this migration: such a job's key is compared on source and connection alone.
ALTER TABLE import_jobs ADD COLUMN request_fingerprint jsonb;
