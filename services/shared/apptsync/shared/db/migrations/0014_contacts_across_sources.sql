-- One contact per person within a tenant, across sources (docs/design.md invariant 12), every
-- identity a contact was seen with, payments and refunds (invariant 13), and the per-stream counters
-- of the clients and payments streams. Matching rules: apptsync.writer.contacts and README "Contacts".

-- Every identity a contact was seen with; an identity belongs to one contact of the tenant.
-- kind: 'email' (case-folded), 'phone' (E.164), 'client' ('<source>:<provider client id>'),
-- 'name' ('<source>:<case-folded name>', only for a listed client with none of the others).
CREATE TABLE contact_identities (
    tenant_id      uuid        NOT NULL,
    kind           text        NOT NULL CHECK (kind IN ('email', 'phone', 'client', 'name')),
    value          text        NOT NULL CHECK (value <> ''),
    contact_id     bigint      NOT NULL,
    first_seen_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, kind, value)
);
CREATE INDEX contact_identities_by_contact ON contact_identities (tenant_id, contact_id);

-- Contacts are now the tenant's people, whatever source saw them first: external_source names that
-- source, match_key the identity the contact was created with ('person:<kind>:<value>'), unique in
-- the tenant. Contacts stored before are kept with their per-source key, prefixed by the source so
-- the keys stay unique across sources, and merged below.
ALTER TABLE contacts DROP CONSTRAINT contacts_tenant_id_external_source_match_key_key;
UPDATE contacts SET match_key = external_source || ':' || match_key;
ALTER TABLE contacts ADD CONSTRAINT contacts_tenant_match_key UNIQUE (tenant_id, match_key);

-- Backfill: the identities the per-source keys name (email and client id; their phones were kept
-- as digits, not E.164, and are read again with the next import of each contact). Contacts of one
-- tenant with the same email are one person: merged into the lowest id.
-- Row security is forced on these tables for their owner too (0004), and the migration runs as
-- the owner: lifted for the backfill, which spans tenants, and forced again right after.
ALTER TABLE contacts NO FORCE ROW LEVEL SECURITY;
ALTER TABLE appointments NO FORCE ROW LEVEL SECURITY;
CREATE TEMPORARY TABLE contact_backfill ON COMMIT DROP AS
SELECT c.tenant_id, c.contact_id,
       CASE WHEN c.email LIKE '%@%' THEN 'email' WHEN c.provider_client_id <> '' THEN 'client' END AS kind,
       CASE WHEN c.email LIKE '%@%' THEN lower(btrim(c.email))
            WHEN c.provider_client_id <> '' THEN c.external_source || ':' || btrim(c.provider_client_id) END AS value
FROM contacts AS c;
CREATE TEMPORARY TABLE contact_backfill_winner ON COMMIT DROP AS
SELECT b.tenant_id, b.contact_id, min(b.contact_id) OVER (PARTITION BY b.tenant_id, b.kind, b.value) AS winner
FROM contact_backfill AS b WHERE b.kind IS NOT NULL;
UPDATE appointments AS a SET contact_id = w.winner
FROM contact_backfill_winner AS w
WHERE a.tenant_id = w.tenant_id AND a.contact_id = w.contact_id AND w.winner <> w.contact_id;
DELETE FROM contacts AS c USING contact_backfill_winner AS w
WHERE c.tenant_id = w.tenant_id AND c.contact_id = w.contact_id AND w.winner <> w.contact_id;
INSERT INTO contact_identities (tenant_id, kind, value, contact_id)
SELECT DISTINCT b.tenant_id, b.kind, b.value, w.winner
FROM contact_backfill AS b JOIN contact_backfill_winner AS w USING (tenant_id, contact_id)
WHERE b.kind IS NOT NULL
ON CONFLICT DO NOTHING;
ALTER TABLE contacts FORCE ROW LEVEL SECURITY;
ALTER TABLE appointments FORCE ROW LEVEL SECURITY;

-- Payments and refunds of appointments, one row per provider transaction. They belong to their
-- appointment (tenant, source, appointment external id), so merging two contacts needs no update
-- here: a payment's contact is its appointment's. amount_minor is signed: a refund entry is negative.
CREATE TABLE payments (
    tenant_id                uuid        NOT NULL,
    external_source          text        NOT NULL,
    transaction_id           text        NOT NULL CHECK (transaction_id <> ''),
    appointment_external_id  text        NOT NULL,
    amount_minor             bigint      NOT NULL,
    currency                 text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    processor                text        NOT NULL,
    paid_at                  timestamptz,
    successful               boolean     NOT NULL,
    refunded                 boolean     NOT NULL,
    last_job_id              uuid,
    first_seen_at            timestamptz NOT NULL DEFAULT now(),
    updated_at               timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, external_source, transaction_id)
);
CREATE INDEX payments_by_appointment ON payments (tenant_id, external_source, appointment_external_id);

CREATE TYPE apptsync_payment_row AS (
    external_source          text,
    appointment_external_id  text,
    transaction_id           text,
    amount_minor             bigint,
    currency                 text,
    processor                text,
    paid_at                  timestamptz,
    successful               boolean,
    refunded                 boolean,
    last_job_id              uuid
);

-- Revenue per contact = its appointments' successful payments that were not refunded, plus refund
-- entries (negative), per currency. A canceled and refunded booking adds nothing; an appointment
-- marked deleted (a complete walk no longer found it) counts no more. Computed at query time.
-- security_invoker: the caller's row-level security applies, not the view owner's.
DROP VIEW contact_revenue;
CREATE VIEW contact_revenue_by_currency WITH (security_invoker = true) AS
SELECT a.tenant_id, a.contact_id, p.currency,
       sum(p.amount_minor) FILTER (WHERE p.successful AND NOT p.refunded)::bigint AS revenue_minor,
       count(*) FILTER (WHERE p.successful AND NOT p.refunded AND p.amount_minor > 0) AS payments,
       count(*) FILTER (WHERE p.refunded OR p.amount_minor < 0) AS refunds
FROM payments AS p
JOIN appointments AS a
  ON a.tenant_id = p.tenant_id AND a.external_source = p.external_source
 AND a.external_id = p.appointment_external_id
WHERE a.contact_id IS NOT NULL AND a.deleted_at IS NULL
GROUP BY a.tenant_id, a.contact_id, p.currency;

-- The product's view of a contact: who, every source and identity, visits, revenue per currency.
CREATE VIEW contact_revenue WITH (security_invoker = true) AS
SELECT c.tenant_id,
       c.external_source AS first_source,
       c.contact_id,
       c.name,
       c.email,
       c.phone,
       COALESCE(v.appointments, 0) AS appointments,
       v.last_visit_at,
       COALESCE(r.revenue_minor_by_currency, '{}'::jsonb) AS revenue_minor_by_currency,
       COALESCE(r.revenue_minor_by_currency, '{}'::jsonb) <> '{}'::jsonb
           AND EXISTS (SELECT 1 FROM jsonb_each_text(r.revenue_minor_by_currency) AS e WHERE e.value::bigint > 0)
           AS paying
FROM contacts AS c
LEFT JOIN LATERAL (
    SELECT count(*) AS appointments,
           max(a.starts_at) FILTER (WHERE a.status <> 'canceled' AND a.starts_at <= now()) AS last_visit_at
    FROM appointments AS a
    WHERE a.tenant_id = c.tenant_id AND a.contact_id = c.contact_id AND a.deleted_at IS NULL
) AS v ON true
LEFT JOIN LATERAL (
    SELECT jsonb_object_agg(x.currency, x.revenue_minor) AS revenue_minor_by_currency
    FROM contact_revenue_by_currency AS x
    WHERE x.tenant_id = c.tenant_id AND x.contact_id = c.contact_id AND x.revenue_minor IS NOT NULL
) AS r ON true;

-- The per-stream counters (apptsync.shared.counts.STREAM_COUNTERS), per page and per job.
ALTER TABLE import_job_pages
    ADD COLUMN contacts_fetched integer NOT NULL DEFAULT 0,
    ADD COLUMN payments_fetched integer NOT NULL DEFAULT 0;
ALTER TABLE import_jobs
    ADD COLUMN contacts_fetched bigint NOT NULL DEFAULT 0,
    ADD COLUMN payments_fetched bigint NOT NULL DEFAULT 0;

-- Row-level security as for every tenant table (0004_tenant_isolation.sql).
ALTER TABLE contact_identities ENABLE ROW LEVEL SECURITY;
ALTER TABLE contact_identities FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON contact_identities
    USING (tenant_id = apptsync_current_tenant()) WITH CHECK (tenant_id = apptsync_current_tenant());
ALTER TABLE payments ENABLE ROW LEVEL SECURITY;
ALTER TABLE payments FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON payments
    USING (tenant_id = apptsync_current_tenant()) WITH CHECK (tenant_id = apptsync_current_tenant());
GRANT SELECT, INSERT, UPDATE, DELETE ON contact_identities, payments TO apptsync_service;
GRANT SELECT ON contact_revenue, contact_revenue_by_currency TO apptsync_service;
GRANT USAGE ON TYPE apptsync_payment_row TO apptsync_service;
