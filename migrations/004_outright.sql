-- Rows deleted outright (a CASCADE, the admin, a raw DELETE) leave their
-- files: the service queues them in the outbox from the DELETE it streams,
-- to be removed only after orphans.grace (not_before), so that a row put
-- back meanwhile keeps its file.
ALTER TABLE {{.Outbox}} ADD COLUMN IF NOT EXISTS not_before timestamptz;

-- The table's REPLICA IDENTITY FULL, which makes each DELETE carry the key
-- of the file, is set by reconcile migrate after this file, one relation
-- at a time (reconciler/migrate.go).
