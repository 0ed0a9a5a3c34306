package reconciler_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/reconcile/reconcile/internal/testdb"
	"github.com/reconcile/reconcile/reconciler"
)

// Rule 3: a file still used by a row that stays is never removed; rows that
// share a file and are purged together free it.
func TestSharedKeys(t *testing.T) {
	b := setup(t)
	ids := b.seed(
		due("shared/with-active.jpg"),
		row{key: "shared/with-active.jpg", active: true},
		due("shared/with-recent.jpg"),
		row{key: "shared/with-recent.jpg", deletedAt: ago(retention / 2)},
		due("shared/both-due.jpg"),
		due("shared/both-due.jpg"),
		due("shared/three-due.jpg"),
		due("shared/three-due.jpg"),
		due("shared/three-due.jpg"),
	)
	s := b.run()
	if s.Purged != 7 || s.Failed != 0 {
		t.Fatalf("summary = %+v, want 7 purged", s)
	}
	for _, i := range []int{0, 2, 4, 5, 6, 7, 8} {
		if b.rowExists(ids[i]) {
			t.Errorf("due row %d survived", i)
		}
	}
	if !b.rowExists(ids[1]) || !b.rowExists(ids[3]) {
		t.Error("a row that is not due was purged")
	}
	if !b.fileExists("shared/with-active.jpg") || !b.fileExists("shared/with-recent.jpg") {
		t.Error("a file still used by a remaining row was removed")
	}
	if b.fileExists("shared/both-due.jpg") || b.fileExists("shared/three-due.jpg") {
		t.Error("a file whose rows were all purged stayed")
	}
	if n := b.count(`SELECT count(*) FROM reconcile_forum_attachment_outbox`); n != 0 {
		t.Errorf("outbox holds %d entries", n)
	}
}

// Rule 3, the second check: a key that a row uses again by the time its file
// is to be removed leaves the outbox and keeps its file.
func TestOutboxKeyUsedAgainKeepsFile(t *testing.T) {
	b := setup(t)
	b.writeFile("again/leaf.jpg")
	if _, err := b.pool.Exec(b.ctx, `INSERT INTO reconcile_forum_attachment_outbox (storage_key, attachment_id) VALUES ('again/leaf.jpg', 'gone')`); err != nil {
		t.Fatal(err)
	}
	b.seed(row{key: "again/leaf.jpg", active: true, noFile: true})
	s, err := b.r.DrainOutbox(b.ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if s.FilesKept != 1 || s.FilesRemoved != 0 || !b.fileExists("again/leaf.jpg") {
		t.Fatalf("summary = %+v, file exists = %v: want the file kept", s, b.fileExists("again/leaf.jpg"))
	}
	if n := b.count(`SELECT count(*) FROM reconcile_forum_attachment_outbox`); n != 0 {
		t.Errorf("outbox holds %d entries, want the kept key dropped", n)
	}
}

// Rule 4: a row the database refuses to delete is reported alone; the rest
// of its batch is purged, and the run ends.
func TestRefusedRowFailsAloneAndTheRestIsPurged(t *testing.T) {
	b := setup(t)
	if _, err := b.pool.Exec(b.ctx, `CREATE TABLE forum_post_image (
		id serial PRIMARY KEY,
		attachment_id uuid NOT NULL REFERENCES forum_attachment (id) ON DELETE RESTRICT)`); err != nil {
		t.Fatal(err)
	}
	var rows []row
	for i := range 30 {
		rows = append(rows, due(fmt.Sprintf("fk/%02d.jpg", i)))
	}
	ids := b.seed(rows...)
	blocked := []int{3, 4, 17}
	for _, i := range blocked {
		if _, err := b.pool.Exec(b.ctx, `INSERT INTO forum_post_image (attachment_id) VALUES ($1)`, ids[i]); err != nil {
			t.Fatal(err)
		}
	}
	s := b.run()
	if s.Purged != 27 || s.Failed != 3 {
		t.Fatalf("summary = %+v, want 27 purged and 3 failed", s)
	}
	for i, id := range ids {
		kept := slices.Contains(blocked, i)
		if b.rowExists(id) != kept || b.fileExists(rows[i].key) != kept {
			t.Errorf("row %d: exists=%v file=%v, want both %v", i, b.rowExists(id), b.fileExists(rows[i].key), kept)
		}
	}
}

// Rule 2: a file the storage refuses to remove stays in the outbox, with its
// error, and holds nothing else back; the next run removes it.
func TestStorageRefusingOneKeyKeepsItInOutbox(t *testing.T) {
	b := setup(t)
	var rows []row
	for i := range 12 {
		rows = append(rows, due(fmt.Sprintf("refuse/%02d.jpg", i)))
	}
	ids := b.seed(rows...)
	stuck := rows[5].key
	unstick := makeUnremovable(t, filepath.Join(b.root, stuck))

	s := b.run()
	if s.Purged != 12 || s.FilesRemoved != 11 || s.FilesPending != 1 {
		t.Fatalf("summary = %+v, want 12 purged, 11 files removed, 1 pending", s)
	}
	for i, id := range ids {
		if b.rowExists(id) {
			t.Errorf("row %d survived", i)
		}
		if rows[i].key != stuck && b.fileExists(rows[i].key) {
			t.Errorf("file %s was held back", rows[i].key)
		}
	}
	var attempts int
	var lastError string
	err := b.pool.QueryRow(b.ctx, `SELECT attempts, last_error FROM reconcile_forum_attachment_outbox WHERE storage_key = $1`, stuck).Scan(&attempts, &lastError)
	if err != nil || attempts != 1 || lastError == "" {
		t.Fatalf("outbox entry of %s: attempts=%d last_error=%q err=%v", stuck, attempts, lastError, err)
	}
	if n := b.count(`SELECT count(*) FROM reconcile_forum_attachment_outbox`); n != 1 {
		t.Fatalf("outbox holds %d entries, want 1", n)
	}

	unstick()
	s = b.run()
	if s.FilesRemoved != 1 || s.FilesPending != 0 || b.fileExists(stuck) {
		t.Fatalf("second run: summary = %+v, file exists = %v", s, b.fileExists(stuck))
	}
	if n := b.count(`SELECT count(*) FROM reconcile_forum_attachment_outbox`); n != 0 {
		t.Fatalf("outbox holds %d entries after the retry", n)
	}
}

// makeUnremovable makes the file's removal fail for real: immutable as root
// (root ignores permissions), a read-only directory otherwise.
func makeUnremovable(t *testing.T, path string) (undo func()) {
	t.Helper()
	if os.Geteuid() == 0 {
		if out, err := exec.Command("chattr", "+i", path).CombinedOutput(); err != nil {
			t.Fatalf("chattr +i: %v: %s", err, out)
		}
		undo = func() { _ = exec.Command("chattr", "-i", path).Run() }
	} else {
		dir := filepath.Dir(path)
		if err := os.Chmod(dir, 0o555); err != nil {
			t.Fatal(err)
		}
		undo = func() { _ = os.Chmod(dir, 0o755) }
	}
	t.Cleanup(undo)
	return undo
}

// Rule 7: keys that could reach outside the root are refused and reported,
// their rows stay, and nothing outside the root is touched.
func TestUnsafeKeysAreRefusedAndRowsKept(t *testing.T) {
	b := setup(t)
	outside := t.TempDir()
	victim := filepath.Join(outside, "victim.txt")
	if err := os.WriteFile(victim, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, filepath.Join(b.root, "link.jpg")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(b.root, "linkdir")); err != nil {
		t.Fatal(err)
	}
	rel, err := filepath.Rel(b.root, victim)
	if err != nil {
		t.Fatal(err)
	}
	unsafe := []string{rel, victim, "link.jpg", "linkdir/victim.txt", "a/../../" + filepath.Base(outside) + "/victim.txt"}
	var rows []row
	for _, k := range unsafe {
		rows = append(rows, row{key: k, deletedAt: ago(2 * retention), noFile: true})
	}
	rows = append(rows, due("fine/ok.jpg"))
	ids := b.seed(rows...)

	s := b.run()
	if s.Purged != 1 || s.Failed != len(unsafe) {
		t.Fatalf("summary = %+v, want 1 purged and %d failed", s, len(unsafe))
	}
	for i := range unsafe {
		if !b.rowExists(ids[i]) {
			t.Errorf("row with unsafe key %q was purged", unsafe[i])
		}
	}
	if data, err := os.ReadFile(victim); err != nil || string(data) != "keep me" {
		t.Fatalf("file outside the root was touched: %q, %v", data, err)
	}
	if _, err := os.Lstat(filepath.Join(b.root, "link.jpg")); err != nil {
		t.Errorf("the symbolic link itself was removed: %v", err)
	}
	if n := b.count(`SELECT count(*) FROM reconcile_forum_attachment_outbox`); n != 0 {
		t.Errorf("outbox holds %d entries", n)
	}
}

// Rules 3 and 7 together: a key through a directory link inside the root
// names another row's file; it is refused, and that file stays.
func TestKeyThroughLinkedDirectoryIsRefused(t *testing.T) {
	b := setup(t)
	b.writeFile("real/leaf.jpg")
	if err := os.Symlink("real", filepath.Join(b.root, "alias")); err != nil {
		t.Fatal(err)
	}
	ids := b.seed(
		row{key: "alias/leaf.jpg", deletedAt: ago(2 * retention), noFile: true},
		row{key: "real/leaf.jpg", active: true, noFile: true},
	)
	s := b.run()
	if s.Purged != 0 || s.Failed != 1 || !b.rowExists(ids[0]) || !b.fileExists("real/leaf.jpg") {
		t.Fatalf("summary = %+v; the aliased row or the active row's file is gone", s)
	}
}

// Rule 3 across batches: with one row per batch and many lanes, rows that
// share a file still free it once all of them are purged.
func TestSharedKeysAcrossBatches(t *testing.T) {
	b := setup(t, func(c *reconciler.Config) { c.BatchSize, c.Concurrency = 1, 8 })
	var rows []row
	for i := range 40 {
		key := fmt.Sprintf("pairs/%02d.jpg", i/2)
		rows = append(rows, due(key))
	}
	ids := b.seed(rows...)
	s := b.run()
	if s.Purged != 40 || s.FilesRemoved != 20 {
		t.Fatalf("summary = %+v, want 40 purged and 20 files removed", s)
	}
	for i, id := range ids {
		if b.rowExists(id) || b.fileExists(rows[i].key) {
			t.Fatalf("row %d or its file survived", i)
		}
	}
	if n := b.count(`SELECT count(*) FROM reconcile_forum_attachment_outbox`); n != 0 {
		t.Fatalf("outbox holds %d entries", n)
	}
}

// An error that would refuse every row alike (here a permission error
// raised by a trigger) ends the run at once instead of splitting every
// batch down to single rows.
func TestErrorForEveryRowEndsThePurge(t *testing.T) {
	b := setup(t)
	_, err := b.pool.Exec(b.ctx, `
		CREATE FUNCTION deny() RETURNS trigger LANGUAGE plpgsql AS
		$$ BEGIN RAISE EXCEPTION 'no deletes here' USING ERRCODE = '42501'; END $$;
		CREATE TRIGGER deny BEFORE DELETE ON forum_attachment FOR EACH ROW EXECUTE FUNCTION deny()`)
	if err != nil {
		t.Fatal(err)
	}
	var rows []row
	for i := range 40 {
		rows = append(rows, due(fmt.Sprintf("deny/%02d.jpg", i)))
	}
	b.seed(rows...)
	s, err := b.runErr()
	if err == nil || !strings.Contains(err.Error(), "no deletes here") {
		t.Fatalf("run error = %v, want the trigger's error", err)
	}
	if s.Purged != 0 || s.Failed > 10 {
		t.Fatalf("summary = %+v: rows were split and reported one by one", s)
	}
	if n := b.count(`SELECT count(*) FROM forum_attachment`); n != 40 {
		t.Fatalf("%d rows left, want 40", n)
	}
}

// A deleted_at without time zone holds the session's wall time. East of
// UTC it would look hours younger than it is if the index took it for UTC
// and the cutoff were an instant: due rows would wait.
func TestWallClockDeletedAtIsDueOnTime(t *testing.T) {
	ctx := context.Background()
	url, admin := testdb.NewDjango(t)
	if _, err := admin.Exec(ctx, `
		DROP INDEX forum_attac_is_acti_8d0ac7_idx;
		ALTER TABLE forum_attachment ALTER COLUMN deleted_at TYPE timestamp`); err != nil {
		t.Fatal(err)
	}
	pool := poolOn(t, url, func(c *pgxpool.Config) {
		c.ConnConfig.RuntimeParams["TimeZone"] = "Asia/Tokyo" // UTC+9, no daylight saving
	})
	b := setupOn(t, pool)

	// Due by an hour, in the forum's own wall time.
	ids := b.seed(row{key: "wall/due.jpg"}, row{key: "wall/recent.jpg"})
	if _, err := pool.Exec(ctx, `
		UPDATE forum_attachment SET is_active = false,
		       deleted_at = localtimestamp - CASE WHEN id = $1 THEN $3 + interval '1 hour' ELSE $3 - interval '1 hour' END
		WHERE id IN ($1, $2)`, ids[0], ids[1], retention); err != nil {
		t.Fatal(err)
	}
	if s := b.run(); s.Purged != 1 || b.rowExists(ids[0]) || !b.rowExists(ids[1]) {
		t.Fatalf("purge: %+v; want the row due by an hour purged and the other kept", s)
	}
}
