package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Rows deleted outright: their files go after orphans.grace, through the
// outbox and its shared-file check; a row put back within the grace keeps
// its file; the purge's own deletes are not queued twice.
func TestServiceRemovesTheFilesOfRowsDeletedOutright(t *testing.T) {
	f := newForum(t)
	serviceEnv(t, f, "2s")
	t.Setenv("RECONCILE_ORPHANS_GRACE", "3s")
	t.Setenv("RECONCILE_SWEEP_MAX_WAIT", "500ms")
	t.Setenv("RECONCILE_TABLE_DERIVED", "imagekit")
	f.migrate()
	s := startService(t, false)
	ctx := context.Background()
	gone := f.add("forum/attachments/gone.jpg", -1)
	thumb := "CACHE/images/forum/attachments/gone/0123456789abcdef0123456789abcdef.jpg"
	f.writeOld(thumb)
	putBack := f.add("forum/attachments/put-back.jpg", -1)
	shared := f.add("forum/attachments/shared.jpg", -1)
	sharer := f.add("forum/attachments/shared.jpg", -1)
	purged := f.add("forum/attachments/purged.jpg", -1)
	f.softDelete(purged)

	deleted := time.Now()
	if _, err := f.pool.Exec(ctx, `DELETE FROM forum_attachment WHERE id = ANY($1::uuid[])`, []string{gone, putBack, shared}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, func() bool { return s.logs.count("Queued the file of a row deleted outright") == 3 },
		func() string { return fmt.Sprintf("deletes never queued:\n%s", s.logs) })
	// Put back, with its key, within the grace.
	if _, err := f.pool.Exec(ctx, `INSERT INTO forum_attachment (id, image, original_filename, is_active) VALUES (gen_random_uuid(), 'forum/attachments/put-back.jpg', 'p.jpg', true)`); err != nil {
		t.Fatal(err)
	}
	if f.fileGone("forum/attachments/gone.jpg") {
		t.Fatalf("the file went before orphans.grace")
	}
	eventually(t, 15*time.Second, func() bool { return f.fileGone("forum/attachments/gone.jpg") && f.fileGone(thumb) },
		func() string { return fmt.Sprintf("file or thumbnail of a row deleted outright left:\n%s", s.logs) })
	if early := time.Since(deleted); early < 3*time.Second {
		t.Errorf("removed %s after the DELETE, before orphans.grace", early)
	}
	eventually(t, 10*time.Second, func() bool { return !f.exists(purged) && f.fileGone("forum/attachments/purged.jpg") },
		func() string { return fmt.Sprintf("due row never purged:\n%s", s.logs) })
	eventually(t, 10*time.Second, func() bool {
		return f.count(`SELECT count(*) FROM reconcile_forum_attachment_outbox`) == 0
	}, func() string { return fmt.Sprintf("outbox never emptied:\n%s", s.logs) })
	for _, key := range []string{"forum/attachments/put-back.jpg", "forum/attachments/shared.jpg"} {
		if f.fileGone(key) {
			t.Errorf("%s removed: a row uses it", key)
		}
	}
	if !f.exists(sharer) {
		t.Fatal("the row sharing a file was deleted")
	}
	if n := s.logs.count("Queued the file of a row deleted outright"); n != 3 {
		t.Errorf("%d rows queued as deleted outright; want 3, not the purged one:\n%s", n, s.logs)
	}
}

// writeOld writes a file uploaded an hour ago.
func (f *forum) writeOld(key string) {
	f.t.Helper()
	path := filepath.Join(f.root, key)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		f.t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("thumb"), 0o644); err != nil {
		f.t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(path, old, old); err != nil {
		f.t.Fatal(err)
	}
}

// Without REPLICA IDENTITY FULL a DELETE carries no key: the service says
// so at start, and queues nothing.
func TestServiceWarnsWithoutFullReplicaIdentity(t *testing.T) {
	f := newForum(t)
	serviceEnv(t, f, "1h")
	f.migrate()
	if _, err := f.pool.Exec(context.Background(), `ALTER TABLE forum_attachment REPLICA IDENTITY DEFAULT`); err != nil {
		t.Fatal(err)
	}
	s := startService(t, false)
	if s.logs.count("is not FULL") != 1 {
		t.Fatalf("no warning of the replica identity:\n%s", s.logs)
	}
	id := f.add("forum/attachments/gone.jpg", -1)
	if _, err := f.pool.Exec(context.Background(), `DELETE FROM forum_attachment WHERE id = $1`, id); err != nil {
		t.Fatal(err)
	}
	// A soft-delete after it: once indexed, the DELETE was streamed.
	marker := f.add("forum/attachments/marker.jpg", -1)
	f.softDelete(marker)
	eventually(t, 10*time.Second, func() bool { _, ok := entries(t, s.idx)[marker]; return ok },
		func() string { return fmt.Sprintf("marker never indexed:\n%s", s.logs) })
	if n := f.count(`SELECT count(*) FROM reconcile_forum_attachment_outbox`); n != 0 || s.logs.count("Queued the file") != 0 {
		t.Fatalf("queued %d keys without the key in the DELETE:\n%s", n, s.logs)
	}
	if s.logs.count("carries only its primary key") != 1 {
		t.Errorf("the DELETE without the key was not warned of:\n%s", s.logs)
	}
}

// A DELETE of more rows than the stream applies one by one (the index is
// then rebuilt by a rescan) still queues every key.
func TestServiceQueuesTheRowsOfALargeDelete(t *testing.T) {
	f, s := bulkService(t)
	if _, err := f.pool.Exec(context.Background(), `DELETE FROM forum_attachment WHERE image LIKE 'forum/bulk/%'`); err != nil {
		t.Fatal(err)
	}
	s.waitLog("a transaction changes more than", 1)
	eventually(t, 60*time.Second, func() bool {
		return f.count(`SELECT count(*) FROM reconcile_forum_attachment_outbox WHERE not_before > now()`) == 25000
	}, func() string {
		return fmt.Sprintf("%d keys queued of 25000", f.count(`SELECT count(*) FROM reconcile_forum_attachment_outbox`))
	})
}
