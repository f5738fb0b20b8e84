-- The mirror follows the provider through cancellations, deletions and reschedules, and the counts
-- say so.
--
-- appointments.status is what the provider says (a Google cancelled stub makes a row 'canceled');
-- appointments.deleted_at says the provider no longer has the record at all: set when a job that
-- walked the connection's whole listing for its window did not see a stored row of that window,
-- cleared when the record is seen again. A deleted row is kept (its history is the user's data).
ALTER TABLE appointments
    ADD COLUMN deleted_at                   timestamptz,
    ADD COLUMN rescheduled_to_external_id   text NOT NULL DEFAULT '',
    ADD COLUMN rescheduled_from_external_id text NOT NULL DEFAULT '';

-- Reconciliation reads a connection's rows of one window.
CREATE INDEX appointments_by_connection_start
    ON appointments (tenant_id, external_source, connection_id, starts_at);

ALTER TYPE apptsync_appointment_row
    ADD ATTRIBUTE rescheduled_to_external_id text,
    ADD ATTRIBUTE rescheduled_from_external_id text;

-- The page ledger remembers what each page held: the keys it carried (a complete walk marks the
-- rest of its window deleted), the keys it inserted (a page fetched again with other content still
-- credits them as inserted) and a digest of its content (a redelivery with the same digest replays
-- the stored result; another digest is written).
ALTER TABLE import_job_pages
    ADD COLUMN stale                    integer NOT NULL DEFAULT 0,
    ADD COLUMN skipped_unknown_deletion integer NOT NULL DEFAULT 0,
    ADD COLUMN external_ids             text[]  NOT NULL DEFAULT '{}',
    ADD COLUMN inserted_ids             text[]  NOT NULL DEFAULT '{}',
    ADD COLUMN content_digest           bytea;

ALTER TABLE import_jobs
    ADD COLUMN stale                    bigint NOT NULL DEFAULT 0,
    ADD COLUMN skipped_unknown_deletion bigint NOT NULL DEFAULT 0,
    ADD COLUMN deleted                  bigint NOT NULL DEFAULT 0;

-- Marks deleted the rows of a finishing job's connection, inside its window, that none of its pages
-- carried; returns how many. Lease-guarded like apptsync_finish_job (only the fetcher that owns the
-- running job may), and idempotent: rows already marked are left alone. The caller decides whether
-- the job walked the whole listing (apptsync.fetcher.reconciliation); this only executes it.
CREATE FUNCTION apptsync_reconcile_job(p_job_id uuid, p_worker_id text, p_now timestamptz)
    RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    j import_jobs;
    marked bigint;
    caller_tenant text := current_setting('app.tenant_id', true);
BEGIN
    SELECT * INTO j FROM import_jobs
    WHERE job_id = p_job_id AND state = 'RUNNING' AND lease_owner = p_worker_id
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    -- appointments has no owner policy: act as the job's tenant (row-level security still binds the
    -- owner, so this statement can reach no other tenant's rows), then give the caller's setting back.
    PERFORM set_config('app.tenant_id', j.tenant_id::text, true);
    -- The keys seen, once, as a hash anti-join: probing every page's array per row would cost
    -- rows x pages.
    WITH seen AS MATERIALIZED (
        SELECT DISTINCT unnest(p.external_ids) AS external_id
        FROM import_job_pages AS p WHERE p.job_id = j.job_id
    )
    UPDATE appointments AS a SET deleted_at = p_now, last_job_id = j.job_id, updated_at = now()
    WHERE a.tenant_id = j.tenant_id
      AND a.external_source = j.external_source
      AND a.connection_id = j.connection_id
      AND a.starts_at >= j.window_start AND a.starts_at < j.window_end
      AND a.deleted_at IS NULL
      AND NOT EXISTS (SELECT 1 FROM seen WHERE seen.external_id = a.external_id);
    GET DIAGNOSTICS marked = ROW_COUNT;
    PERFORM set_config('app.tenant_id', COALESCE(caller_tenant, ''), true);
    UPDATE import_jobs SET deleted = deleted + marked, updated_at = now() WHERE job_id = j.job_id;
    RETURN marked;
END
$$;
REVOKE EXECUTE ON FUNCTION apptsync_reconcile_job(uuid, text, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION apptsync_reconcile_job(uuid, text, timestamptz) TO apptsync_service;

-- The recorded results of a job's pages, now with the records no page could store (unreadable or
-- refused): a job that left any of them behind did not see its whole window and must not mark
-- anything deleted.
DROP FUNCTION apptsync_job_page_results(uuid, integer[]);
CREATE FUNCTION apptsync_job_page_results(p_job_id uuid, p_page_nos integer[])
    RETURNS TABLE (page_no integer, records_fetched integer, inserted integer, updated integer,
                   unreadable integer)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
        SELECT p.page_no, p.records_fetched, p.inserted, p.updated,
            p.skipped_invalid + p.skipped_dead_letter
        FROM import_job_pages AS p
        WHERE p.job_id = p_job_id AND (p_page_nos IS NULL OR p.page_no = ANY(p_page_nos))
    $$;
REVOKE EXECUTE ON FUNCTION apptsync_job_page_results(uuid, integer[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION apptsync_job_page_results(uuid, integer[]) TO apptsync_service;
