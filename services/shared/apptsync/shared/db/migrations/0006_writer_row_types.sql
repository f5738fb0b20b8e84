-- Row types the writer sends a batch in: one array parameter of composite values per statement
-- (`unnest($2::apptsync_appointment_row[])`) instead of one array per column. asyncpg checks every
-- element of an array parameter against collections.abc, two dozen per row; a composite element's
-- fields are encoded without those checks (measured, 800 rows of ~1.5 KB: ~29 us of the writer's CPU
-- per row with one array per column, ~16 us with one composite array). A COPY into a session's
-- temporary table encodes cheaper still (~11 us) but the service role would own that relation and
-- the staged rows would depend on one connection's session state.
-- No table has these types: they carry no rows, hence no tenant and no row-level security.

CREATE TYPE apptsync_appointment_row AS (
    external_source      text,
    external_id          text,
    connection_id        text,
    starts_at            timestamptz,
    ends_at              timestamptz,
    timezone             text,
    status               text,
    title                text,
    appointment_type     text,
    calendar             text,
    contact_name         text,
    contact_email        text,
    contact_phone        text,
    provider_client_id   text,
    price_minor          bigint,
    price_currency       text,
    amount_paid_minor    bigint,
    amount_paid_currency text,
    external_url         text,
    raw                  text,       -- the provider's JSON as text: cast to jsonb by the insert
    content_hash         bytea,
    observed_at          timestamptz,
    last_job_id          uuid,
    contact_key          text,       -- writer/accounting.py contact_match_key; NULL: no contact
    contact_id           bigint      -- the contact the contacts upsert returned for contact_key
);

CREATE TYPE apptsync_contact_row AS (
    external_source      text,
    match_key            text,
    name                 text,
    email                text,
    phone                text,
    provider_client_id   text
);

GRANT USAGE ON TYPE apptsync_appointment_row, apptsync_contact_row TO apptsync_service;
