-- Connections, import jobs with their per-page ledger, and appointments.

CREATE TABLE connections (
    tenant_id              uuid        NOT NULL,
    connection_id          text        NOT NULL,
    external_source        text        NOT NULL CHECK (external_source IN ('acuity', 'calendly', 'google_calendar')),
    base_url               text        NOT NULL DEFAULT '',
    settings               jsonb       NOT NULL DEFAULT '{}'::jsonb,
    -- AES-GCM ciphertext (key id, nonce, ciphertext) bound to tenant and connection; see shared/credentials.py
    credentials_ciphertext bytea       NOT NULL,
    credential_fields      text[]      NOT NULL DEFAULT '{}',
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, connection_id)
);

CREATE TABLE import_jobs (
    job_id                     uuid        PRIMARY KEY,
    tenant_id                  uuid        NOT NULL,
    external_source            text        NOT NULL,
    connection_id              text        NOT NULL,
    state                      text        NOT NULL DEFAULT 'QUEUED'
                                           CHECK (state IN ('QUEUED', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELED')),
    window_start               timestamptz NOT NULL,
    window_end                 timestamptz NOT NULL CHECK (window_end > window_start),
    page_size                  integer     NOT NULL CHECK (page_size > 0),
    max_pages                  integer     NOT NULL CHECK (max_pages > 0),
    max_in_flight_pages        integer     NOT NULL CHECK (max_in_flight_pages > 0),
    stop_policy                text        NOT NULL CHECK (stop_policy IN ('NO_NEW_RECORDS', 'NO_CHANGES', 'NEVER')),
    stop_after_pages           integer     NOT NULL CHECK (stop_after_pages > 0),
    deadline_at                timestamptz NOT NULL,
    first_import               boolean     NOT NULL,
    idempotency_key            text,
    -- provider paging state to resume from: the cursor of the next page to fetch, and its number
    cursor                     jsonb,
    next_page_no               integer     NOT NULL DEFAULT 1,
    pages_fetched              bigint      NOT NULL DEFAULT 0,
    -- counters below are only ever changed in the transaction that records a page in import_job_pages
    pages_written              bigint      NOT NULL DEFAULT 0,
    records_fetched            bigint      NOT NULL DEFAULT 0,
    inserted                   bigint      NOT NULL DEFAULT 0,
    updated                    bigint      NOT NULL DEFAULT 0,
    unchanged                  bigint      NOT NULL DEFAULT 0,
    skipped_out_of_window      bigint      NOT NULL DEFAULT 0,
    skipped_invalid            bigint      NOT NULL DEFAULT 0,
    skipped_dead_letter        bigint      NOT NULL DEFAULT 0,
    skipped_duplicate_in_page  bigint      NOT NULL DEFAULT 0,
    contacts_unmatched         bigint      NOT NULL DEFAULT 0,
    cancel_requested           boolean     NOT NULL DEFAULT false,
    stop_reason                text        NOT NULL DEFAULT '',
    error                      text        NOT NULL DEFAULT '',
    trace_id                   text        NOT NULL DEFAULT '',
    traceparent                text        NOT NULL DEFAULT '',
    lease_owner                text,
    lease_expires_at           timestamptz,
    created_at                 timestamptz NOT NULL DEFAULT now(),
    started_at                 timestamptz,
    finished_at                timestamptz,
    updated_at                 timestamptz NOT NULL DEFAULT now()
);

-- At most one active job per (tenant, source, connection): a second StartImport finds this one.
CREATE UNIQUE INDEX import_jobs_one_active
    ON import_jobs (tenant_id, external_source, connection_id)
    WHERE state IN ('QUEUED', 'RUNNING');
CREATE UNIQUE INDEX import_jobs_idempotency
    ON import_jobs (tenant_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- The claim query scans claimable jobs oldest first.
CREATE INDEX import_jobs_claimable ON import_jobs (created_at) WHERE state IN ('QUEUED', 'RUNNING');
CREATE INDEX import_jobs_by_tenant ON import_jobs (tenant_id, created_at DESC);

-- One row per written page: a redelivered page finds its row and replays the stored result.
CREATE TABLE import_job_pages (
    job_id                     uuid        NOT NULL REFERENCES import_jobs (job_id) ON DELETE CASCADE,
    page_no                    integer     NOT NULL,
    tenant_id                  uuid        NOT NULL,
    records_fetched            integer     NOT NULL,
    inserted                   integer     NOT NULL,
    updated                    integer     NOT NULL,
    unchanged                  integer     NOT NULL,
    skipped_out_of_window      integer     NOT NULL,
    skipped_invalid            integer     NOT NULL,
    skipped_dead_letter        integer     NOT NULL,
    skipped_duplicate_in_page  integer     NOT NULL,
    contacts_unmatched         integer     NOT NULL,
    written_at                 timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, page_no)
);

CREATE TABLE appointments (
    appointment_id       bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id            uuid        NOT NULL,
    external_source      text        NOT NULL,
    external_id          text        NOT NULL,
    connection_id        text        NOT NULL,
    starts_at            timestamptz NOT NULL,
    ends_at              timestamptz NOT NULL,
    timezone             text        NOT NULL,
    status               text        NOT NULL CHECK (status IN ('scheduled', 'canceled', 'completed', 'no_show')),
    title                text        NOT NULL,
    appointment_type     text        NOT NULL,
    calendar             text        NOT NULL,
    contact_name         text        NOT NULL,
    contact_email        text        NOT NULL,
    contact_phone        text        NOT NULL,
    provider_client_id   text        NOT NULL,
    price_minor          bigint,
    price_currency       text,
    amount_paid_minor    bigint,
    amount_paid_currency text,
    external_url         text        NOT NULL,
    raw                  jsonb       NOT NULL,
    content_hash         bytea       NOT NULL,
    observed_at          timestamptz NOT NULL,
    first_seen_at        timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    last_job_id          uuid        NOT NULL,
    UNIQUE (tenant_id, external_source, external_id)
);
CREATE INDEX appointments_by_start ON appointments (tenant_id, starts_at);
