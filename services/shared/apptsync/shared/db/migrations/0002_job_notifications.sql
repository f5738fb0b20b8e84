-- WatchJob streams job snapshots driven by change notifications instead of polling: every change to
-- a job row notifies its id on one channel; the gateway fans the notifications out to its watchers.
CREATE FUNCTION notify_import_job_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('apptsync_job_changed', NEW.job_id::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER import_jobs_changed
    AFTER INSERT OR UPDATE ON import_jobs
    FOR EACH ROW EXECUTE FUNCTION notify_import_job_changed();
