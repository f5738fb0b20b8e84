-- Change events for downstream services (docs/design.md invariant 11): a transactional outbox.
--
-- Every committed change of an appointment leaves one row in `appointment_changes`, written by
-- triggers in the transaction that changed the appointment: the change and its event commit or roll
-- back together, so no event exists for an uncommitted change and none is lost by a crash between the
-- commit and the send. The writer's relay (apptsync.writer.change_relay) publishes the rows in order
-- per key to the change-events topic and deletes them once the broker acknowledged them.
--
-- Triggers rather than statements in the writer: every path that changes a row is covered without
-- touching its SQL (the writer's insert and upsert, the cancellation of stubs, the reconciliation's
-- deletion marks in apptsync_reconcile_job, a revival), and a future path cannot forget the event.
--
-- What counts as a real change (one event, one version): the content hash changed (the writer's
-- "updated", including a cancellation), the row was marked deleted or revived, or its contact or
-- connection changed. Anything else is not: the retention prune empties `raw` and touches nothing
-- else (apptsync.shared.db.retention), so it bumps no version and emits no event. A statement that
-- matches a row without changing it (none of the writer's do) emits nothing either.

-- Bumped on every real change (starts at 1 on insert): a consumer keeps the highest version per key it
-- applied and drops an event whose version is not higher (redeliveries carry the same version).
ALTER TABLE appointments ADD COLUMN row_version bigint NOT NULL DEFAULT 1;

CREATE TABLE appointment_changes (
    change_id       bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- the relay's unit of work (apptsync_change_shard): one relay at a time per shard keeps each key's
    -- events in order however many writers run
    shard           smallint    NOT NULL,
    tenant_id       uuid        NOT NULL,
    external_source text        NOT NULL,
    external_id     text        NOT NULL,
    row_version     bigint      NOT NULL,
    -- apptsync_appointment_state of the row before (NULL: inserted) and after the change
    previous        jsonb,
    state           jsonb       NOT NULL,
    -- the provider payload changed (it is not part of the state: see apptsync_appointment_state)
    raw_changed     boolean     NOT NULL
);
-- The relay reads a shard oldest first.
CREATE INDEX appointment_changes_by_shard ON appointment_changes (shard, change_id);

ALTER TABLE appointment_changes ENABLE ROW LEVEL SECURITY;
ALTER TABLE appointment_changes FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON appointment_changes
    USING (tenant_id = apptsync_current_tenant()) WITH CHECK (tenant_id = apptsync_current_tenant());
-- The relay is cross-tenant: it reaches the outbox only through the definer functions below.
DO $$
BEGIN
    EXECUTE format('CREATE POLICY owner_functions ON appointment_changes TO %I USING (true) WITH CHECK (true)',
                   current_user);
END
$$;
-- The services' role only inserts (through the triggers, as the writer's transaction).
GRANT INSERT ON appointment_changes TO apptsync_service;
DO $$
BEGIN
    EXECUTE format('GRANT USAGE ON SEQUENCE %s TO apptsync_service',
                   pg_get_serial_sequence('appointment_changes', 'change_id'));
END
$$;

-- The shard of an appointment key: 16 shards, so up to 16 relays work at once.
CREATE FUNCTION apptsync_change_shard(p_tenant_id uuid, p_external_source text, p_external_id text)
    RETURNS smallint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT (hashtext(p_tenant_id::text || '/' || p_external_source || '/' || p_external_id) & 15)::smallint $$;

-- What a change event carries of the row: every column but the provider payload (`raw`, pruned by
-- retention, kept in PostgreSQL) and the writer's bookkeeping that says nothing about the booking.
CREATE FUNCTION apptsync_appointment_state(a appointments)
    RETURNS jsonb
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$
        SELECT jsonb_build_object(
            'connection_id', a.connection_id, 'starts_at', a.starts_at, 'ends_at', a.ends_at,
            'timezone', a.timezone, 'status', a.status, 'title', a.title,
            'appointment_type', a.appointment_type, 'calendar', a.calendar,
            'contact_name', a.contact_name, 'contact_email', a.contact_email,
            'contact_phone', a.contact_phone, 'provider_client_id', a.provider_client_id,
            'contact_id', a.contact_id,
            'price_minor', a.price_minor, 'price_currency', a.price_currency,
            'amount_paid_minor', a.amount_paid_minor, 'amount_paid_currency', a.amount_paid_currency,
            'external_url', a.external_url,
            'rescheduled_to_external_id', a.rescheduled_to_external_id,
            'rescheduled_from_external_id', a.rescheduled_from_external_id,
            'deleted_at', a.deleted_at, 'observed_at', a.observed_at, 'updated_at', a.updated_at,
            'last_job_id', a.last_job_id)
    $$;

-- Row level, BEFORE: the one place a new row value can be set. The WHEN clause is evaluated without
-- calling the function, so a statement that changes nothing real (the prune) pays almost nothing.
CREATE FUNCTION apptsync_bump_row_version()
    RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    NEW.row_version := OLD.row_version + 1;
    RETURN NEW;
END
$$;
CREATE TRIGGER appointments_row_version
    BEFORE UPDATE ON appointments
    FOR EACH ROW
    WHEN (OLD.content_hash IS DISTINCT FROM NEW.content_hash
          OR (OLD.deleted_at IS NULL) IS DISTINCT FROM (NEW.deleted_at IS NULL)
          OR OLD.contact_id IS DISTINCT FROM NEW.contact_id
          OR OLD.connection_id IS DISTINCT FROM NEW.connection_id)
    EXECUTE FUNCTION apptsync_bump_row_version();

-- Statement level with transition tables: one INSERT ... SELECT per statement, however many rows it
-- changed (a writer batch is up to ~800), instead of one trigger call per row. An upsert
-- (INSERT ... ON CONFLICT DO UPDATE) fires both: its inserted rows here, its updated rows below.
CREATE FUNCTION apptsync_record_inserted_appointments()
    RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    INSERT INTO appointment_changes (shard, tenant_id, external_source, external_id, row_version, previous,
                                     state, raw_changed)
    SELECT apptsync_change_shard(n.tenant_id, n.external_source, n.external_id), n.tenant_id,
        n.external_source, n.external_id, n.row_version, NULL, apptsync_appointment_state(n), true
    FROM inserted_appointments AS n
    ORDER BY n.appointment_id;
    RETURN NULL;
END
$$;
CREATE TRIGGER appointments_inserted_changes
    AFTER INSERT ON appointments
    REFERENCING NEW TABLE AS inserted_appointments
    FOR EACH STATEMENT
    EXECUTE FUNCTION apptsync_record_inserted_appointments();

-- Only rows whose version the row trigger bumped are events.
CREATE FUNCTION apptsync_record_updated_appointments()
    RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    INSERT INTO appointment_changes (shard, tenant_id, external_source, external_id, row_version, previous,
                                     state, raw_changed)
    SELECT apptsync_change_shard(n.tenant_id, n.external_source, n.external_id), n.tenant_id,
        n.external_source, n.external_id, n.row_version, apptsync_appointment_state(o),
        apptsync_appointment_state(n), o.raw IS DISTINCT FROM n.raw
    FROM updated_appointments_new AS n
    JOIN updated_appointments_old AS o ON o.appointment_id = n.appointment_id
    WHERE n.row_version <> o.row_version
    ORDER BY n.appointment_id;
    RETURN NULL;
END
$$;
CREATE TRIGGER appointments_updated_changes
    AFTER UPDATE ON appointments
    REFERENCING OLD TABLE AS updated_appointments_old NEW TABLE AS updated_appointments_new
    FOR EACH STATEMENT
    EXECUTE FUNCTION apptsync_record_updated_appointments();

-- The relay's claim: the oldest `p_limit` changes of one shard that no other relay holds, trying the
-- shards from `p_first_shard` on (relays start at different shards). The shard stays locked (a
-- transaction-level advisory lock) until the caller's transaction ends: the caller publishes the rows,
-- deletes them with apptsync_delete_changes, then commits. Empty when every shard with changes is held.
CREATE FUNCTION apptsync_claim_changes(p_limit integer, p_first_shard integer)
    RETURNS SETOF appointment_changes
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
DECLARE
    s smallint;
BEGIN
    FOR i IN 0..15 LOOP
        s := ((p_first_shard + i) & 15)::smallint;
        -- Look before locking: a lock on an empty shard would keep other relays from it meanwhile.
        IF EXISTS (SELECT 1 FROM appointment_changes AS c WHERE c.shard = s)
           AND pg_try_advisory_xact_lock(1634758772, 1667785070 + s) THEN  -- 'appt', 'chan' + shard
            RETURN QUERY
                SELECT * FROM appointment_changes AS c WHERE c.shard = s ORDER BY c.change_id LIMIT p_limit;
            RETURN;
        END IF;
    END LOOP;
END
$$;

-- Deletes published changes; returns how many.
CREATE FUNCTION apptsync_delete_changes(p_change_ids bigint[])
    RETURNS bigint
    LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
        WITH gone AS (DELETE FROM appointment_changes WHERE change_id = ANY(p_change_ids) RETURNING 1)
        SELECT count(*) FROM gone
    $$;

-- Changes waiting to be published (a gauge: it grows while no relay runs or the broker is down).
CREATE FUNCTION apptsync_pending_changes()
    RETURNS bigint
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$ SELECT count(*) FROM appointment_changes $$;

DO $$
DECLARE
    definer regprocedure;
BEGIN
    FOREACH definer IN ARRAY ARRAY[
        'apptsync_claim_changes(integer, integer)',
        'apptsync_delete_changes(bigint[])',
        'apptsync_pending_changes()'
    ]::regprocedure[] LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', definer);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO apptsync_service', definer);
    END LOOP;
END
$$;
