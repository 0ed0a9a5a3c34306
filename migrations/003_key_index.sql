-- Lets the shared-key check ("does another row still use this file?") find
-- rows by storage key; Django creates no index for a FileField. Skipped when
-- an index already leads with the key column.
CREATE INDEX {{.Concurrently}} IF NOT EXISTS {{.KeyIndex}}
    ON {{.Only}}{{.Table}} ({{.Key}});
