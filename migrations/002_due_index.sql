-- The partial index that makes "what is due" cheap. Skipped when the table
-- already has an equivalent one (Django's migration 0004 creates it).
CREATE INDEX CONCURRENTLY IF NOT EXISTS {{.DueIndex}}
    ON {{.Table}} ({{.IsActive}}, {{.DeletedAt}})
    WHERE NOT {{.IsActive}};
