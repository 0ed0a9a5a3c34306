package reconciler_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/reconcile/reconcile/reconciler"
)

// later is a clock two hours ahead: a local file's status change time
// cannot be set back, and it counts in a file's age, so the test's files
// (written "3 hours ago") look old to it. A file written "now" for it is
// written at later().
func later() time.Time { return time.Now().Add(2 * time.Hour) }

// scan runs an orphan scan and returns the report's files by key.
func (b *bundle) scan(opts reconciler.OrphanOptions) (map[string]reconciler.Orphan, reconciler.OrphanTotals, error) {
	b.t.Helper()
	if opts.Grace == 0 {
		opts.Grace = time.Hour
	}
	if opts.Now == nil && b.root != "" {
		opts.Now = later
	}
	files := map[string]reconciler.Orphan{}
	totals, err := b.r.ScanOrphans(b.ctx, opts, func(o reconciler.Orphan) error {
		files[o.Key] = o
		return nil
	})
	return files, totals, err
}

func TestOrphanScanRemovesOnlyFilesNoRowOwns(t *testing.T) {
	b := setup(t)
	b.withDerived("imagekit")
	const day = "forum/attachments/2025/10/04/"
	b.seed(row{key: day + "live.jpg", active: true}, due(day+"soft.jpg"), row{key: "forum/attachments/2024/01/01/old.png", active: true})
	owned := append([]string{day + "live.jpg", day + "soft.jpg", "forum/attachments/2024/01/01/old.png"},
		imagekitFiles(day+"live.jpg", specs...)...)
	owned = append(owned, imagekitFiles(day+"soft.jpg", "thumbnail")...)
	orphans := append([]string{day + "failed-upload.jpg", "forum/attachments/2024/x/gone.pdf"},
		imagekitFiles(day+"deleted-outright.jpg", specs...)...)
	outside := []string{"other-app/file.jpg", "CACHE/images/other-app/x/0123.jpg", "forum/README"}
	for _, f := range slices.Concat(owned, orphans, outside) {
		b.writeFile(f)
	}
	// A fresh upload whose row has yet to commit.
	young := day + "uploading.jpg"
	if err := os.WriteFile(filepath.Join(b.root, young), []byte("new"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(filepath.Join(b.root, young), later(), later()); err != nil {
		t.Fatal(err)
	}
	// A link inside the prefix, to a file outside it: never followed or
	// removed.
	b.writeFile("secret/target.jpg")
	if err := os.Symlink(filepath.Join(b.root, "secret/target.jpg"), filepath.Join(b.root, day+"link.jpg")); err != nil {
		t.Fatal(err)
	}

	report, totals, err := b.scan(reconciler.OrphanOptions{DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"CACHE/images/forum/attachments/", "forum/attachments/"}
	if !slices.Equal(totals.Prefixes, want) {
		t.Errorf("default prefixes %q, want %q", totals.Prefixes, want)
	}
	for _, f := range orphans {
		if o, ok := report[f]; !ok || o.Action != "would remove" {
			t.Errorf("orphan %s reported as %+v", f, o)
		}
	}
	if o := report[imagekitFiles(day+"deleted-outright.jpg", "large")[0]]; !strings.HasPrefix(o.Reason, reconciler.ReasonDerived) {
		t.Errorf("derived orphan's reason %q", o.Reason)
	}
	if o := report[day+"failed-upload.jpg"]; o.Reason != reconciler.ReasonNoRow || o.Size == 0 {
		t.Errorf("orphan upload reported as %+v", o)
	}
	if o := report[day+"link.jpg"]; !strings.HasPrefix(o.Action, "kept: ") {
		t.Errorf("link reported as %+v, want kept", o)
	}
	for _, f := range slices.Concat(owned, outside, []string{young}) {
		if o, ok := report[f]; ok {
			t.Errorf("%s reported: %+v", f, o)
		}
	}
	if totals.Orphans != len(orphans) || totals.Young != 1 || totals.Removed != 0 {
		t.Errorf("dry-run totals %+v", totals)
	}
	for _, f := range orphans {
		if !b.fileExists(f) {
			t.Fatalf("dry run removed %s", f)
		}
	}

	report, totals, err = b.scan(reconciler.OrphanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if totals.Removed != len(orphans) {
		t.Errorf("removed %d, want %d: %+v", totals.Removed, len(orphans), report)
	}
	for _, f := range orphans {
		if b.fileExists(f) {
			t.Errorf("orphan %s left", f)
		}
	}
	for _, f := range slices.Concat(owned, outside, []string{young, "secret/target.jpg", day + "link.jpg"}) {
		if !b.fileExists(f) {
			t.Errorf("%s removed", f)
		}
	}
}

func TestOrphanScanAsksTheDatabaseAgainBeforeRemoving(t *testing.T) {
	b := setup(t)
	b.seed(row{key: "up/live.jpg", active: true})
	b.writeFile("up/b-committing.jpg")
	b.writeFile("up/c-orphan.jpg")
	b.writeFile("elsewhere/x.jpg")
	if err := os.Symlink(filepath.Join(b.root, "elsewhere/x.jpg"), filepath.Join(b.root, "up/a-link.jpg")); err != nil {
		t.Fatal(err)
	}
	committed := false
	totals, err := b.r.ScanOrphans(b.ctx, reconciler.OrphanOptions{Grace: time.Hour, Now: later}, func(o reconciler.Orphan) error {
		// The link is reported while its batch is judged, before the
		// database is asked again: a row now commits for b.
		if o.Key == "up/a-link.jpg" && !committed {
			committed = true
			b.seed(row{key: "up/b-committing.jpg", active: true, noFile: true})
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !committed || !b.fileExists("up/b-committing.jpg") || b.fileExists("up/c-orphan.jpg") || totals.Removed != 1 {
		t.Errorf("committed %v, totals %+v: the file of the row committed during the scan must stay, the orphan go", committed, totals)
	}
}

func TestOrphanScanRefusesWhenNoRowOwnsAnythingThere(t *testing.T) {
	b := setup(t)
	b.seed(row{key: "up/live.jpg", active: true, noFile: true})
	b.writeFile("media/a.jpg")
	_, _, err := b.scan(reconciler.OrphanOptions{Prefixes: []string{"media/"}})
	if !errors.Is(err, reconciler.ErrNoFiles) || !b.fileExists("media/a.jpg") {
		t.Fatalf("scan of a prefix no row owns anything under: %v; want ErrNoFiles and nothing removed", err)
	}
	// Keys that share no folder: no default prefix.
	b.seed(row{key: "top.jpg", active: true, noFile: true})
	if _, _, err := b.scan(reconciler.OrphanOptions{}); !errors.Is(err, reconciler.ErrSetup) {
		t.Fatalf("scan without a folder the keys share: %v, want ErrSetup", err)
	}
}

func TestOrphanScanHonoursTheBudgetAndResumes(t *testing.T) {
	b := setup(t)
	b.seed(row{key: "up/live.jpg", active: true})
	for _, f := range []string{"up/1.jpg", "up/2.jpg", "up/3.jpg", "up/4.jpg"} {
		b.writeFile(f)
	}
	_, totals, err := b.scan(reconciler.OrphanOptions{MaxDeletes: 2})
	if err != nil || totals.Removed != 2 || !totals.BudgetReached || !b.fileExists("up/3.jpg") {
		t.Fatalf("budget of 2: %+v, %v", totals, err)
	}
	report, _, err := b.scan(reconciler.OrphanOptions{StartAfter: "up/3.jpg"})
	if err != nil || len(report) != 1 || b.fileExists("up/4.jpg") || !b.fileExists("up/3.jpg") {
		t.Fatalf("resumed after up/3.jpg: %v, %v", report, err)
	}
}

// Under a shared prefix, a folder where no row owns any file is another
// model's (or the database is the wrong one): its files stay, named once.
func TestOrphanScanLeavesFoldersNoRowOwnsAFileIn(t *testing.T) {
	b := setup(t)
	b.seed(row{key: "uploads/2025/10/live.jpg", active: true}, row{key: "uploads/2024/01/old.jpg", active: true})
	for _, f := range []string{"uploads/avatars/alice.png", "uploads/2026/01/new-year.jpg", "uploads/2025/11/orphan.jpg"} {
		b.writeFile(f)
	}
	_, totals, err := b.scan(reconciler.OrphanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if totals.Removed != 1 || b.fileExists("uploads/2025/11/orphan.jpg") || !b.fileExists("uploads/avatars/alice.png") || !b.fileExists("uploads/2026/01/new-year.jpg") {
		t.Fatalf("totals %+v: want only the orphan of a folder the table owns files in removed", totals)
	}
	if totals.Foreign != 2 || !slices.Equal(totals.ForeignFolders, []string{"uploads/2026/", "uploads/avatars/"}) {
		t.Errorf("foreign files %d in %q", totals.Foreign, totals.ForeignFolders)
	}
}

// A transaction open since before the scan may insert the row of an old
// file: while it stays open, the file stays; once it ends, it is judged.
func TestOrphanScanWaitsForOlderTransactions(t *testing.T) {
	b := setup(t)
	b.seed(row{key: "up/live.jpg", active: true})
	b.writeFile("up/importing.jpg")
	tx, err := b.pool.Begin(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(b.ctx)
	if _, err := tx.Exec(b.ctx, `INSERT INTO forum_attachment (id, image, original_filename, is_active) VALUES (gen_random_uuid(), 'up/importing.jpg', 'i.jpg', true)`); err != nil {
		t.Fatal(err)
	}
	report, totals, err := b.scan(reconciler.OrphanOptions{})
	if err != nil || totals.Removed != 0 || !b.fileExists("up/importing.jpg") || !strings.Contains(report["up/importing.jpg"].Action, "may still commit a row") {
		t.Fatalf("with the import open: %+v, %+v, %v", report, totals, err)
	}
	if err := tx.Commit(b.ctx); err != nil {
		t.Fatal(err)
	}
	if _, totals, err = b.scan(reconciler.OrphanOptions{}); err != nil || totals.Removed != 0 || !b.fileExists("up/importing.jpg") {
		t.Fatalf("after the import committed: %+v, %v", totals, err)
	}
}

// A key that names its file by another path (Django cleans it when it
// serves the file) owns that file.
func TestOrphanScanKeepsFilesOfUncleanKeys(t *testing.T) {
	b := setup(t)
	b.seed(row{key: "up/live.jpg", active: true},
		row{key: "up/a//double.jpg", active: true, noFile: true},
		row{key: "up/./dot.jpg", active: true, noFile: true},
		row{key: "./up/lead.jpg", active: true, noFile: true},
		row{key: "up/x/../dotdot.jpg", active: true, noFile: true})
	files := []string{"up/a/double.jpg", "up/dot.jpg", "up/lead.jpg", "up/dotdot.jpg"}
	for _, f := range files {
		b.writeFile(f)
	}
	b.writeFile("up/orphan.jpg")
	_, totals, err := b.scan(reconciler.OrphanOptions{Prefixes: []string{"up/"}})
	if err != nil || totals.Removed != 1 || b.fileExists("up/orphan.jpg") {
		t.Fatalf("%+v, %v", totals, err)
	}
	for _, f := range files {
		if !b.fileExists(f) {
			t.Errorf("%s removed: a row names it by another path", f)
		}
	}
}

// A file copied with its old modification time kept (rsync -a, cp -p: an
// import whose rows are still to come) is as young as the copy.
func TestOrphanScanCountsACopysAgeFromTheCopy(t *testing.T) {
	b := setup(t)
	b.seed(row{key: "up/live.jpg", active: true})
	b.writeFile("up/copied.jpg") // modified "3 hours ago", changed now
	_, totals, err := b.scan(reconciler.OrphanOptions{Now: time.Now})
	if err != nil || totals.Removed != 0 || totals.Young != 1 || !b.fileExists("up/copied.jpg") {
		t.Fatalf("%+v, %v", totals, err)
	}
}

// While the service has not seen the DELETEs made before the scan began,
// a row deleted outright may yet be queued (and put back): the files
// judged stay. With its slot caught up, they go.
func TestOrphanScanWaitsForTheService(t *testing.T) {
	b := setup(t)
	slot := "orphan_scan_" + strings.ReplaceAll(uuid.NewString()[:8], "-", "")
	if _, err := b.pool.Exec(b.ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, slot); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = b.pool.Exec(context.Background(), `SELECT pg_drop_replication_slot($1)`, slot) })
	b.seed(row{key: "up/live.jpg", active: true}) // WAL the slot has not confirmed
	b.writeFile("up/orphan.jpg")
	report, totals, err := b.scan(reconciler.OrphanOptions{Slot: slot})
	if err != nil || totals.Removed != 0 || !strings.Contains(report["up/orphan.jpg"].Action, "is not running") {
		t.Fatalf("with the service behind: %+v, %+v, %v", report, totals, err)
	}
	// A service that keeps up: the slot follows the WAL, which other
	// tests write too.
	ctx, stop := context.WithCancel(b.ctx)
	following := make(chan struct{})
	go func() {
		defer close(following)
		for ctx.Err() == nil {
			_, _ = b.pool.Exec(ctx, `SELECT pg_replication_slot_advance($1, pg_current_wal_lsn())`, slot)
			time.Sleep(50 * time.Millisecond)
		}
	}()
	_, totals, err = b.scan(reconciler.OrphanOptions{Slot: slot})
	stop()
	<-following
	if err != nil || totals.Removed != 1 {
		t.Fatalf("with the service caught up: %+v, %v", totals, err)
	}
}

// The folder a derived file vouches for is its source's: under the whole
// root another model's thumbnails stay, and so does a file right under
// the root; in a flat upload folder, a gone source's thumbnails go.
func TestOrphanScanJudgesDerivedFilesByTheirSourcesFolder(t *testing.T) {
	b := setup(t)
	b.withDerived("imagekit")
	b.seed(row{key: "forum/attachments/2025/10/live.jpg", active: true}, row{key: "flat/live.jpg", active: true})
	ours := imagekitFiles("forum/attachments/2025/10/gone.jpg", "thumbnail")[0]
	flat := imagekitFiles("flat/gone.jpg", "thumbnail")[0]
	theirs := imagekitFiles("avatars/2025/alice.png", "thumbnail")[0]
	for _, f := range []string{ours, flat, theirs, "robots.txt"} {
		b.writeFile(f)
	}
	_, totals, err := b.scan(reconciler.OrphanOptions{Prefixes: []string{"/"}})
	if err != nil {
		t.Fatal(err)
	}
	if b.fileExists(ours) || b.fileExists(flat) || !b.fileExists(theirs) || !b.fileExists("robots.txt") {
		t.Errorf("ours %v, flat %v, theirs %v, robots.txt %v; want only ours and flat gone (%+v)",
			b.fileExists(ours), b.fileExists(flat), b.fileExists(theirs), b.fileExists("robots.txt"), totals)
	}
	if !slices.Contains(totals.ForeignFolders, "avatars/") || !slices.Contains(totals.ForeignFolders, "/") {
		t.Errorf("foreign folders %q", totals.ForeignFolders)
	}
}

// Prefixes named on purpose are the table's: a year where no row is left
// is cleaned there.
func TestOrphanScanTrustsPrefixesNamedOnPurpose(t *testing.T) {
	b := setup(t)
	b.seed(row{key: "up/2025/live.jpg", active: true})
	b.writeFile("up/2019/03/02/gone.jpg")
	if _, totals, err := b.scan(reconciler.OrphanOptions{}); err != nil || totals.Removed != 0 || totals.Foreign != 1 {
		t.Fatalf("with the default prefix: %+v, %v", totals, err)
	}
	if _, totals, err := b.scan(reconciler.OrphanOptions{Prefixes: []string{"up/"}}); err != nil || totals.Removed != 1 {
		t.Fatalf("with up/ named: %+v, %v", totals, err)
	}
}

// A key that spells its file's path otherwise owns the file, and its
// derived files, against a purge of the clean key as against the scan.
func TestUncleanKeysOwnTheirFilesInThePurge(t *testing.T) {
	b := setup(t)
	b.withDerived("imagekit")
	b.seed(due("up/2025/b.jpg"), row{key: "up/2025//b.jpg", active: true, noFile: true})
	thumb := imagekitFiles("up/2025/b.jpg", "thumbnail")[0]
	b.writeFile(thumb)
	s := b.run()
	if s.Purged != 1 || !b.fileExists("up/2025/b.jpg") || !b.fileExists(thumb) || s.FilesKept != 1 {
		t.Fatalf("purge: %+v; the file and thumbnail a live row names as up/2025//b.jpg must stay", s)
	}
	if n := b.count(`SELECT count(*) FROM reconcile_forum_attachment_outbox`); n != 0 {
		t.Errorf("%d keys left in the outbox", n)
	}
	b.seed(row{key: "up/2025/./dot.jpg", active: true, noFile: true})
	dotThumb := imagekitFiles("up/2025/dot.jpg", "thumbnail")[0]
	b.writeFile("up/2025/dot.jpg")
	b.writeFile(dotThumb)
	if _, totals, err := b.scan(reconciler.OrphanOptions{}); err != nil || totals.Removed != 0 {
		t.Fatalf("scan: %+v, %v", totals, err)
	}
	for _, f := range []string{"up/2025/b.jpg", thumb, "up/2025/dot.jpg", dotThumb} {
		if !b.fileExists(f) {
			t.Errorf("the scan removed %s", f)
		}
	}
}
