-- Demo data for scripts/demo.sh: 3010 attachments of a Django forum, on the
-- table of internal/testdb/django_attachment.sql. Everything is relative to
-- now(), so with the default 30-day retention exactly 1001 rows are due:
--
--   1500  active uploads                                  (kept)
--      5  restored: soft-deleted once, then restored      (kept)
--   1500  soft-deleted, deleted_at spread over 90 days:
--           500 deleted less than 30 days ago             (kept, not yet due)
--          1000 deleted 30-90 days ago                    (due: purged)
--      2  sharing one key: one active, one deleted 45 days ago
--           (the row is purged, the file stays: the active row still uses it)
--      3  inconsistent: is_active = false, deleted_at NULL (never due)
--
-- Keys look like Django's: forum/attachments/YYYY/MM/DD/<name>_<7 hex>.jpg,
-- the date being the upload date; original_filename like leaf-123.jpg.
\set ON_ERROR_STOP 1

CREATE TEMP TABLE demo_names (i int PRIMARY KEY, name text NOT NULL);
INSERT INTO demo_names
SELECT g - 1, n
FROM unnest(ARRAY['leaf', 'maple', 'oak', 'fern', 'moss', 'bark', 'acorn',
                  'birch', 'pine', 'willow', 'lichen', 'seedling']) WITH ORDINALITY AS t(n, g);

-- kind, n, uploaded_at, is_active, deleted_at, name
CREATE TEMP TABLE demo_rows AS
-- active uploads, within the last 2 years
SELECT 'active' AS kind, n,
       now() - make_interval(days => 1 + (n * 7919) % 700, secs => (n * 104729) % 86400) AS uploaded_at,
       true AS is_active, NULL::timestamptz AS deleted_at
FROM generate_series(1, 1500) AS n
UNION ALL
-- soft-deleted: deleted (n - 0.5) * 0.06 days ago, n = 1..1500, so 0..90 days;
-- due at 30 days from n = 501 on: 1000 rows. Uploaded 1..400 days before that.
SELECT 'deleted', 10000 + n,
       now() - make_interval(days => 1 + (n * 613) % 400) - (n - 0.5) * interval '0.06 day',
       false, now() - (n - 0.5) * interval '0.06 day'
FROM generate_series(1, 1500) AS n
UNION ALL
-- restored: active again, deleted_at cleared
SELECT 'restored', 20000 + n, now() - make_interval(days => 100 + n * 20), true, NULL
FROM generate_series(1, 5) AS n
UNION ALL
-- inconsistent: soft-deleted without a deletion time
SELECT 'inconsistent', 30000 + n, now() - make_interval(days => 200 + n), false, NULL
FROM generate_series(1, 3) AS n;

INSERT INTO forum_attachment (id, image, original_filename, is_active, deleted_at, uploaded_at)
SELECT gen_random_uuid(),
       'forum/attachments/' || to_char(r.uploaded_at AT TIME ZONE 'UTC', 'YYYY/MM/DD') || '/'
           || d.name || '_' || substr(md5(r.n::text), 1, 7) || '.jpg',
       d.name || '-' || r.n || '.jpg',
       r.is_active, r.deleted_at, r.uploaded_at
FROM demo_rows r
JOIN demo_names d ON d.i = r.n % 12;

-- Two rows, one key: a user re-posted the same upload. One copy was deleted
-- 45 days ago (due), the other is still shown.
INSERT INTO forum_attachment (id, image, original_filename, is_active, deleted_at, uploaded_at)
VALUES
  (gen_random_uuid(), 'forum/attachments/2025/06/01/shared-fern_abc1234.jpg', 'shared-fern.jpg',
   true, NULL, now() - interval '120 days'),
  (gen_random_uuid(), 'forum/attachments/2025/06/01/shared-fern_abc1234.jpg', 'shared-fern-copy.jpg',
   false, now() - interval '45 days', now() - interval '119 days');

ANALYZE forum_attachment;
