-- The partial index that makes "what is due" cheap: on the soft-delete
-- flag and deleted_at, under the flag's deleted value (is_active false,
-- is_deleted true), or on deleted_at alone where it is set. Skipped when
-- the table already has an equivalent one (Django's migration 0004
-- creates it). Built CONCURRENTLY; on a partitioned table, ON ONLY the
-- parent, then concurrently on each partition, attached one by one.
CREATE INDEX {{.Concurrently}} IF NOT EXISTS {{.DueIndex}}
    ON {{.Only}}{{.Table}} ({{.DueColumns}})
    WHERE {{.DuePredicate}};
