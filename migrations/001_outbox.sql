-- Storage keys whose rows were hard-deleted and whose files are still to be
-- removed. The purge inserts them in the statement that deletes the rows;
-- each leaves once its file is gone. A key appears once however many purged
-- rows shared it.
CREATE TABLE IF NOT EXISTS {{.Outbox}} (
    storage_key       text PRIMARY KEY,
    attachment_id     text NOT NULL,
    original_filename text NOT NULL DEFAULT '',
    enqueued_at       timestamptz NOT NULL DEFAULT now(),
    attempts          integer NOT NULL DEFAULT 0,
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    last_error        text
);
