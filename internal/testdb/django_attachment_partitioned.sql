-- forum_attachment as django_attachment.sql makes it, but partitioned by its
-- id, with one partition partitioned again: for the tests of partitioned
-- tables.
CREATE TABLE forum_attachment (
    id uuid PRIMARY KEY,
    image varchar(100) NOT NULL,
    original_filename varchar(255) NOT NULL DEFAULT '',
    is_active boolean NOT NULL DEFAULT true,
    deleted_at timestamptz NULL,
    uploaded_at timestamptz NOT NULL DEFAULT now()
) PARTITION BY HASH (id);
CREATE TABLE forum_attachment_p0 PARTITION OF forum_attachment FOR VALUES WITH (MODULUS 3, REMAINDER 0);
CREATE TABLE forum_attachment_p1 PARTITION OF forum_attachment FOR VALUES WITH (MODULUS 3, REMAINDER 1);
CREATE TABLE forum_attachment_p2 PARTITION OF forum_attachment FOR VALUES WITH (MODULUS 3, REMAINDER 2) PARTITION BY HASH (id);
CREATE TABLE forum_attachment_p2a PARTITION OF forum_attachment_p2 FOR VALUES WITH (MODULUS 6, REMAINDER 2);
CREATE TABLE forum_attachment_p2b PARTITION OF forum_attachment_p2 FOR VALUES WITH (MODULUS 6, REMAINDER 5);
