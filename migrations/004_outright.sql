-- Rows deleted outright (a CASCADE, the admin, a raw DELETE) leave their
-- files: the service queues them in the outbox from the DELETE it streams,
-- to be removed only after orphans.grace (not_before), so that a row put
-- back meanwhile keeps its file.
ALTER TABLE {{.Outbox}} ADD COLUMN IF NOT EXISTS not_before timestamptz;

-- A DELETE carries only the primary key under the default replica
-- identity: FULL makes it carry the key of the file too. Set on the table
-- and each of its partitions, and only where it is not set yet: the ALTER
-- takes a short ACCESS EXCLUSIVE lock.
DO $$
DECLARE
    rel regclass;
BEGIN
    FOR rel IN
        SELECT c.oid::regclass FROM pg_class c
        WHERE (c.oid = {{.TableLiteral}}::regclass
               OR c.oid IN (SELECT relid FROM pg_partition_tree({{.TableLiteral}}::regclass)))
          AND c.relkind IN ('r', 'p') AND c.relreplident <> 'f'
    LOOP
        EXECUTE format('ALTER TABLE %s REPLICA IDENTITY FULL', rel);
    END LOOP;
END
$$;
