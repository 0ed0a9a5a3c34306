-- The partial index that makes "what is due" cheap. Skipped when the table
-- already has an equivalent one (Django's migration 0004 creates it). Built
-- CONCURRENTLY; on a partitioned table, ON ONLY the parent, then
-- concurrently on each partition, attached one by one.
CREATE INDEX {{.Concurrently}} IF NOT EXISTS {{.DueIndex}}
    ON {{.Only}}{{.Table}} ({{.IsActive}}, {{.DeletedAt}})
    WHERE NOT {{.IsActive}};
