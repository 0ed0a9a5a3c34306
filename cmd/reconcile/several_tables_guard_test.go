package main

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// Regressions of the review of several tables.

// a forum row's file lies under the imagekit location of a live blog
// image (a thumbnail model that names a generated file). The README
// promises: "nor a derived file that any table's patterns map a remaining
// row to". The purge of the due forum row must keep it.
func TestPurgeKeepsAFileUnderAPeersDerivedLocation(t *testing.T) {
	f := newForum(t)
	severalTables(t, f, true, "1h", "1h", "")
	t.Setenv("RECONCILE_TABLES", `[
		{"name": "forum_attachment"},
		{"name": "blog_image", "derived": ["imagekit"], "columns": {"key": ["file", "cover"], "is_active": "", "is_deleted": "is_deleted"}}]`)
	f.blog("blog/b1.jpg", "", -1) // live: owns CACHE/images/blog/b1/
	f.writeOld("CACHE/images/blog/b1/thumb.jpg")
	thumb := f.add("CACHE/images/blog/b1/thumb.jpg", 3) // due: names the live image's derived file
	f.migrate()
	code, out, stderr := reconcile("--rescan")
	if code != exitOK {
		t.Fatalf("exit %d\n%s\n%s", code, out, stderr)
	}
	if f.rowExists("forum_attachment", thumb) {
		t.Fatalf("due row not purged\n%s", out)
	}
	if f.fileGone("CACHE/images/blog/b1/thumb.jpg") {
		t.Errorf("removed a file a live blog image's derived location (imagekit) owns\n%s\n%s", out, stderr)
	}
}

// the same within one table (before issue 10 as well).
func TestPurgeKeepsAFileUnderItsOwnDerivedLocation(t *testing.T) {
	f := newForum(t)
	t.Setenv("RECONCILE_TABLE_DERIVED", "imagekit")
	f.add("forum/a.jpg", -1) // live: owns CACHE/images/forum/a/
	thumb := f.add("CACHE/images/forum/a/thumb.jpg", 3)
	f.migrate()
	code, out, stderr := reconcile("--rescan")
	if code != exitOK {
		t.Fatalf("exit %d\n%s\n%s", code, out, stderr)
	}
	if f.exists(thumb) {
		t.Fatalf("due row not purged\n%s", out)
	}
	if f.fileGone("CACHE/images/forum/a/thumb.jpg") {
		t.Errorf("removed a file a live row's derived location owns\n%s\n%s", out, stderr)
	}
}

// a table that left the configuration while its outbox held a file
// (kept in the index as its description), added back: its soft-deleted
// rows must reach the index again. The operator runs migrate at each
// change, as the README says (migrate drops the table from the
// publication, so what happens meanwhile is not streamed).
func TestServiceRescansARetiredTableAddedBack(t *testing.T) {
	f := newForum(t)
	serviceEnv(t, f, "1h")
	t.Setenv("RECONCILE_ORPHANS_GRACE", "1h") // the outbox stays full
	severalTables(t, f, true, "1h", "", "1s")
	f.migrate()
	s := startService(t, false)
	gone := f.avatar("avatars/gone.jpg", -1)
	f.exec(`DELETE FROM avatar WHERE id = $1`, gone)
	eventually(t, 20*time.Second, func() bool { return f.count(`SELECT count(*) FROM reconcile_avatar_outbox`) == 1 },
		func() string { return "not queued:\n" + s.logs.String() })
	if err := s.stop(); err != nil {
		t.Fatal(err)
	}

	severalTables(t, f, false, "1h", "", "")
	f.migrate()
	s = startService(t, false)
	s.waitLog("a table left the configuration", 1)
	// Soft-deleted while avatar is not served.
	old := f.avatar("avatars/old.jpg", 5)
	time.Sleep(time.Second)
	if err := s.stop(); err != nil {
		t.Fatal(err)
	}

	severalTables(t, f, false, "1h", "", "1s")
	f.migrate()
	s = startService(t, false)
	eventually(t, 15*time.Second, func() bool { return !f.rowExists("avatar", old) },
		func() string {
			return "a due avatar row is never purged once its table is added back (its index part stays empty):\n" + s.logs.String()
		})
}

// one table whose files the storage does not hold (the probe fails)
// must not stop the purge of the others, nor the service.
func TestServiceGoesOnWhileOneTableFails(t *testing.T) {
	f := newForum(t)
	serviceEnv(t, f, "1h")
	t.Setenv("RECONCILE_TABLES", `[
		{"name": "avatar", "columns": {"key": "photo", "is_active": ""}, "retention": "1h"},
		{"name": "forum_attachment", "retention": "1s"}]`)
	if _, err := f.pool.Exec(t.Context(), otherTablesSQL); err != nil {
		t.Fatal(err)
	}
	// Avatars whose files are elsewhere (or removed by hand): none due.
	for i := range 3 {
		f.exec(`INSERT INTO avatar (id, photo) VALUES (gen_random_uuid(), $1)`, fmt.Sprintf("avatars/%d.jpg", i))
	}
	f.migrate()
	s := startService(t, false)
	row := f.add("forum/a.jpg", -1)
	f.softDelete(row)
	eventually(t, 20*time.Second, func() bool { return !f.exists(row) },
		func() string { return "a due forum row is not purged while avatar's probe fails:\n" + s.logs.String() })
}

// A table with a soft-delete flag its configuration does not name is
// warned of: the configured shape decides, whatever the flag says.
func TestAnUnnamedFlagIsWarnedOf(t *testing.T) {
	f := newForum(t)
	severalTables(t, f, true, "1h", "", "")
	t.Setenv("RECONCILE_TABLES", `[
		{"name": "forum_attachment"},
		{"name": "blog_image", "columns": {"key": ["file", "cover"], "is_active": ""}}]`)
	f.migrate()
	code, out, stderr := reconcile("--rescan", "--dry-run")
	if code != exitOK || !strings.Contains(stderr, `has a boolean column \"is_deleted\" that tables[1].columns does not name`) {
		t.Fatalf("exit %d; want the unnamed is_deleted warned of:\n%s\n%s", code, out, stderr)
	}
}

// A row deleted outright whose file a live row of another table names:
// once its grace is over, the file stays, and leaves the outbox.
func TestServiceKeepsAFileOfARowDeletedOutrightThatAnotherTableUses(t *testing.T) {
	f := newForum(t)
	serviceEnv(t, f, "1h")
	t.Setenv("RECONCILE_ORPHANS_GRACE", "1s")
	t.Setenv("RECONCILE_SWEEP_MAX_WAIT", "500ms")
	severalTables(t, f, true, "1h", "", "1h")
	f.migrate()
	s := startService(t, false)
	f.add("shared/both.jpg", -1) // live forum row
	gone := f.avatar("shared/both.jpg", -1)
	f.exec(`DELETE FROM avatar WHERE id = $1`, gone)
	s.waitLog("Queued the file of a row deleted outright", 1)
	eventually(t, 20*time.Second, func() bool { return f.count(`SELECT count(*) FROM reconcile_avatar_outbox`) == 0 },
		func() string { return "the key never left the outbox:\n" + s.logs.String() })
	if f.fileGone("shared/both.jpg") {
		t.Fatalf("the file a live forum row names was removed:\n%s", s.logs)
	}
}

// A former table's outbox is drained by the same rules: a key one of its
// rows names again keeps its file.
func TestServiceDrainingAFormerTableKeepsAFileItsRowUsesAgain(t *testing.T) {
	f := newForum(t)
	serviceEnv(t, f, "1h")
	t.Setenv("RECONCILE_ORPHANS_GRACE", "3s")
	t.Setenv("RECONCILE_SWEEP_MAX_WAIT", "500ms")
	severalTables(t, f, true, "1h", "", "1h")
	f.migrate()
	s := startService(t, false)
	gone := f.avatar("avatars/back.jpg", -1)
	f.exec(`DELETE FROM avatar WHERE id = $1`, gone)
	eventually(t, 20*time.Second, func() bool { return f.count(`SELECT count(*) FROM reconcile_avatar_outbox`) == 1 },
		func() string { return "not queued:\n" + s.logs.String() })
	if err := s.stop(); err != nil {
		t.Fatal(err)
	}
	// Put back, under the same key, while avatar leaves the configuration.
	f.exec(`INSERT INTO avatar (id, photo) VALUES (gen_random_uuid(), 'avatars/back.jpg')`)
	severalTables(t, f, false, "1h", "", "")
	s = startService(t, false)
	eventually(t, 20*time.Second, func() bool { return f.count(`SELECT count(*) FROM reconcile_avatar_outbox`) == 0 },
		func() string { return "the former table's outbox was not drained:\n" + s.logs.String() })
	if f.fileGone("avatars/back.jpg") {
		t.Fatalf("the file of a row put back was removed while draining a former table:\n%s", s.logs)
	}
}

// Rows each shape must never purge: a flag that says deleted without a
// deleted_at, a deleted_at whose flag says live, a deleted_at the index
// cannot order.
func TestRescanLeavesRowsTheirShapeDoesNotHoldDue(t *testing.T) {
	f := newForum(t)
	severalTables(t, f, true, "1h", "1h", "1h")
	inactive := f.add("forum/no-time.jpg", -1)
	f.exec(`UPDATE forum_attachment SET is_active = false WHERE id = $1`, inactive)
	flagged := f.blog("blog/flag-only.jpg", "", -1)
	f.exec(`UPDATE blog_image SET is_deleted = true WHERE id = $1`, flagged)
	restored := f.blog("blog/restored.jpg", "", 5)
	f.exec(`UPDATE blog_image SET is_deleted = false WHERE id = $1`, restored) // deleted_at kept
	infinite := f.avatar("avatars/infinite.jpg", -1)
	f.exec(`UPDATE avatar SET deleted_at = '-infinity' WHERE id = $1`, infinite)
	due := f.avatar("avatars/due.jpg", 2)
	f.migrate()
	code, out, stderr := reconcile("--rescan")
	if code != exitOK {
		t.Fatalf("exit %d\n%s\n%s", code, out, stderr)
	}
	for _, r := range []struct{ table, id string }{
		{"forum_attachment", inactive}, {"blog_image", fmt.Sprint(flagged)},
		{"blog_image", fmt.Sprint(restored)}, {"avatar", infinite},
	} {
		if !f.rowExists(r.table, r.id) {
			t.Errorf("%s row %s purged\n%s", r.table, r.id, out)
		}
	}
	for _, key := range []string{"forum/no-time.jpg", "blog/flag-only.jpg", "blog/restored.jpg", "avatars/infinite.jpg"} {
		if f.fileGone(key) {
			t.Errorf("%s removed", key)
		}
	}
	if f.rowExists("avatar", due) || !f.fileGone("avatars/due.jpg") {
		t.Errorf("the due avatar was not purged\n%s", out)
	}
}
