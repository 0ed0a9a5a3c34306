-- The table as Django creates it for the forum's Attachment model, with the
-- partial index of its migration 0004. Tests, the demo and the benchmark
-- build on this shape; reconcile itself reads names from configuration.
CREATE TABLE IF NOT EXISTS forum_attachment (
    id uuid PRIMARY KEY,
    image varchar(100) NOT NULL,
    original_filename varchar(255) NOT NULL DEFAULT '',
    is_active boolean NOT NULL DEFAULT true,
    deleted_at timestamptz NULL,
    uploaded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS forum_attac_is_acti_8d0ac7_idx
    ON forum_attachment (is_active, deleted_at) WHERE NOT is_active;
