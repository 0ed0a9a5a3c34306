-- Rows deleted outright (a CASCADE, the admin, a raw DELETE) leave their
-- files: the service queues them in the outbox from the DELETE it streams,
-- to be removed only after orphans.grace (not_before), so that a row put
-- back meanwhile keeps its file.
ALTER TABLE {{.Outbox}} ADD COLUMN IF NOT EXISTS not_before timestamptz;

-- A DELETE carries only the primary key under the default replica
-- identity: FULL makes it carry the key of the file too. Set on the table
-- and each of its partitions, and only where it is not set yet. The ALTER
-- takes an ACCESS EXCLUSIVE lock: waiting for it behind a long transaction
-- would queue the forum's own queries, so each try waits a second at most,
-- and after 30 tries migrate gives up, saying so.
DO $$
DECLARE
    rel regclass;
    tries int;
BEGIN
    PERFORM set_config('lock_timeout', '1s', true);
    FOR rel IN
        SELECT c.oid::regclass FROM pg_class c
        WHERE (c.oid = {{.TableLiteral}}::regclass
               OR c.oid IN (SELECT relid FROM pg_partition_tree({{.TableLiteral}}::regclass)))
          AND c.relkind IN ('r', 'p') AND c.relreplident <> 'f'
    LOOP
        tries := 0;
        LOOP
            BEGIN
                EXECUTE format('ALTER TABLE %s REPLICA IDENTITY FULL', rel);
                EXIT;
            EXCEPTION WHEN lock_not_available THEN
                tries := tries + 1;
                IF tries >= 30 THEN
                    RAISE EXCEPTION 'could not lock % to set REPLICA IDENTITY FULL: a long transaction holds it; run reconcile migrate again once it ends', rel
                        USING ERRCODE = 'lock_not_available';
                END IF;
                PERFORM pg_sleep(1);
            END;
        END LOOP;
    END LOOP;
END
$$;
