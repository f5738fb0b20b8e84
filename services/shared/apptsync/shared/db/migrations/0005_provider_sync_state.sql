-- Provider state a connection keeps between jobs (e.g. Google Calendar sync tokens per calendar),
-- keyed by (tenant, connection, scope_key); removed with its connection. Tenant-owned like every
-- table with a tenant_id: row-level security as in 0004 (set app.tenant_id per transaction).
CREATE TABLE provider_sync_state (
    tenant_id     uuid        NOT NULL,
    connection_id text        NOT NULL,
    scope_key     text        NOT NULL,
    state         jsonb       NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, connection_id, scope_key),
    FOREIGN KEY (tenant_id, connection_id) REFERENCES connections (tenant_id, connection_id) ON DELETE CASCADE
);

ALTER TABLE provider_sync_state ENABLE ROW LEVEL SECURITY;
ALTER TABLE provider_sync_state FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON provider_sync_state
    USING (tenant_id = apptsync_current_tenant()) WITH CHECK (tenant_id = apptsync_current_tenant());
GRANT SELECT, INSERT, UPDATE, DELETE ON provider_sync_state TO apptsync_service;
