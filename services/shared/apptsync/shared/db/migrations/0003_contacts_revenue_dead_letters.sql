-- Contacts (invariant 8), per-contact revenue, and the records of a page the writer dead-lettered.

-- A tenant's contacts per provider, matched by one key: the normalized email, else the phone, else
-- the provider's client id (see writer/accounting.py contact_match_key), e.g. 'email:ada@example.org'.
CREATE TABLE contacts (
    contact_id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id           uuid        NOT NULL,
    external_source     text        NOT NULL,
    match_key           text        NOT NULL CHECK (match_key <> ''),
    name                text        NOT NULL,
    email               text        NOT NULL,
    phone               text        NOT NULL,
    provider_client_id  text        NOT NULL,
    first_seen_at       timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, external_source, match_key)
);

-- Nullable on purpose: an appointment without a matchable contact is stored, never dropped. The
-- appointment keeps its own contact_* columns (what the provider said about this booking).
-- No foreign key: its check takes a FOR KEY SHARE lock on the contact of every inserted row, measured
-- at ~40% of a first load's upsert. The writer resolves contact_id inside the upsert, by the same
-- tenant and source (and row-level security), so a link never crosses tenants; the trigger below
-- does what ON DELETE SET NULL would.
ALTER TABLE appointments ADD COLUMN contact_id bigint;
CREATE INDEX appointments_by_contact ON appointments (tenant_id, contact_id) WHERE contact_id IS NOT NULL;

CREATE FUNCTION unlink_deleted_contacts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE appointments AS a SET contact_id = NULL
    FROM deleted_contacts AS d
    WHERE a.tenant_id = d.tenant_id AND a.contact_id = d.contact_id;
    RETURN NULL;
END;
$$;

CREATE TRIGGER contacts_deleted
    AFTER DELETE ON contacts
    REFERENCING OLD TABLE AS deleted_contacts
    FOR EACH STATEMENT EXECUTE FUNCTION unlink_deleted_contacts();

-- Per-contact revenue, computed from the stored appointments at query time, so it is right after
-- any re-import or update (nothing to keep in step). amount_paid_minor_by_currency maps an ISO
-- currency to the sum of amount_paid_minor (integer minor units) of the contact's appointments in
-- it; last_visit_at is the latest start of a past appointment that was not canceled.
-- security_invoker: the caller's row-level security applies, not the view owner's.
CREATE VIEW contact_revenue WITH (security_invoker = true) AS
SELECT c.tenant_id,
       c.external_source,
       c.contact_id,
       c.name,
       c.email,
       c.phone,
       c.provider_client_id,
       COALESCE(v.appointments, 0) AS appointments,
       v.last_visit_at,
       COALESCE(p.amount_paid_minor_by_currency, '{}'::jsonb) AS amount_paid_minor_by_currency
FROM contacts AS c
LEFT JOIN LATERAL (
    SELECT count(*) AS appointments,
           max(a.starts_at) FILTER (WHERE a.status <> 'canceled' AND a.starts_at <= now()) AS last_visit_at
    FROM appointments AS a
    WHERE a.tenant_id = c.tenant_id AND a.contact_id = c.contact_id
) AS v ON true
LEFT JOIN LATERAL (
    SELECT jsonb_object_agg(t.currency, t.total) AS amount_paid_minor_by_currency
    FROM (
        SELECT a.amount_paid_currency AS currency, sum(a.amount_paid_minor)::bigint AS total
        FROM appointments AS a
        WHERE a.tenant_id = c.tenant_id AND a.contact_id = c.contact_id
          AND a.amount_paid_minor IS NOT NULL AND a.amount_paid_currency IS NOT NULL
        GROUP BY a.amount_paid_currency
    ) AS t
) AS p ON true;

-- The records of a page that PostgreSQL refused (their copies went to the dead-letter topic),
-- written in the page's transaction: a redelivered page reports them again.
CREATE TABLE import_job_dead_letters (
    job_id       uuid        NOT NULL,
    page_no      integer     NOT NULL,
    external_id  text        NOT NULL,
    tenant_id    uuid        NOT NULL,
    error        text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, page_no, external_id),
    FOREIGN KEY (job_id, page_no) REFERENCES import_job_pages (job_id, page_no) ON DELETE CASCADE
);
