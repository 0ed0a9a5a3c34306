package main

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/reconcile/reconcile/internal/inventory/inventorytest"
	"github.com/reconcile/reconcile/internal/tests3"
	"github.com/reconcile/reconcile/reconciler"
)

func TestOrphansCommand(t *testing.T) {
	f := newForum(t)
	t.Setenv("RECONCILE_TABLE_DERIVED", "imagekit")
	f.add("forum/attachments/2025/10/04/live.jpg", -1)
	f.writeOld("forum/attachments/2025/10/04/failed-upload.jpg")
	f.writeOld("CACHE/images/forum/attachments/2025/10/04/gone/0123456789abcdef0123456789abcdef.jpg")
	f.writeOld("CACHE/images/forum/attachments/2025/10/04/live/0123456789abcdef0123456789abcdef.jpg")
	f.writeOld("elsewhere/x.jpg")
	settleFiles(t)

	if code, _, stderr := reconcile("orphans", "--dry-run"); code != exitUsage || !strings.Contains(stderr, "reconcile migrate") {
		t.Fatalf("before migrate: exit %d, %s", code, stderr)
	}
	f.migrate()
	if code, _, stderr := reconcile("orphans", "--format", "xml"); code != exitUsage {
		t.Fatalf("--format xml: exit %d, %s", code, stderr)
	}

	code, out, stderr := reconcile("orphans", "--dry-run", "--format", "json")
	if code != exitOK {
		t.Fatalf("dry run: exit %d\n%s\n%s", code, out, stderr)
	}
	var report struct {
		Files  []reconciler.Orphan     `json:"files"`
		Totals reconciler.OrphanTotals `json:"totals"`
	}
	if err := json.Unmarshal([]byte(out), &report); err != nil {
		t.Fatalf("json report: %v\n%s", err, out)
	}
	if len(report.Files) != 2 || report.Totals.Orphans != 2 || report.Totals.Bytes == 0 || report.Files[0].Action != "would remove" {
		t.Fatalf("json report %+v", report)
	}

	path := filepath.Join(t.TempDir(), "orphans.csv")
	code, _, stderr = reconcile("orphans", "--format", "csv", "--output", path)
	if code != exitOK {
		t.Fatalf("removal: exit %d\n%s", code, stderr)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	records, err := csv.NewReader(strings.NewReader(string(raw))).ReadAll()
	if err != nil || len(records) != 3 || records[1][0] != "removed" || records[2][0] != "removed" {
		t.Fatalf("csv report %q, %v", records, err)
	}
	if !f.fileGone("forum/attachments/2025/10/04/failed-upload.jpg") ||
		!f.fileGone("CACHE/images/forum/attachments/2025/10/04/gone/0123456789abcdef0123456789abcdef.jpg") {
		t.Error("an orphan was left")
	}
	for _, key := range []string{"forum/attachments/2025/10/04/live.jpg", "CACHE/images/forum/attachments/2025/10/04/live/0123456789abcdef0123456789abcdef.jpg", "elsewhere/x.jpg"} {
		if f.fileGone(key) {
			t.Errorf("%s removed", key)
		}
	}
	if code, _, stderr := reconcile("orphans", "--dry-run", "--output", os.DevNull); code != exitOK {
		t.Errorf("a report to %s: exit %d, %s", os.DevNull, code, stderr)
	}
	code, out, _ = reconcile("orphans", "--dry-run")
	if code != exitOK || !strings.Contains(out, "No file under the table's prefixes lacks an owner.") {
		t.Errorf("second run: exit %d\n%s", code, out)
	}
}

// An S3 Inventory report, from the bucket: only objects older than the
// report are judged, under the storage's prefix, and each is asked of the
// database again; a report of another bucket is refused.
func TestOrphansFromAnS3Inventory(t *testing.T) {
	f := newForum(t)
	bucket := tests3.New(t)
	s3Env(t, bucket, "media")
	t.Setenv("RECONCILE_ORPHANS_GRACE", "1s")
	f.add("up/2025/live.jpg", -1)
	for _, name := range []string{"media/up/2025/live.jpg", "media/up/2025/orphan one.jpg", "up/2025/outside.jpg"} {
		bucket.Put(t, name)
	}
	f.migrate()
	old := time.Now().Add(-time.Hour)
	// S3 keeps times to the second: the report begins a second after the
	// objects above, and one is written a second after it begins.
	time.Sleep(1100 * time.Millisecond)
	created := time.Now()
	time.Sleep(1100 * time.Millisecond)
	bucket.Put(t, "media/up/2025/after.jpg")
	report := inventorytest.Report{SourceBucket: bucket.Name, Created: created, Files: [][]inventorytest.Row{{
		{Key: "media/up/2025/live.jpg", Size: 3, LastModified: old},
		{Key: "media/up/2025/orphan one.jpg", Size: 3, LastModified: old},
		{Key: "up/2025/outside.jpg", Size: 3, LastModified: old},
	}, {
		{Key: "media/up/2025/after.jpg", Size: 3, LastModified: time.Now()}, // written after the report began
		{Key: "media/up/2025/gone-since.jpg", Size: 3, LastModified: old},
	}}}
	manifest := report.Upload(t, bucket)

	code, out, stderr := reconcile("orphans", "--inventory", manifest, "--format", "json")
	if code != exitOK {
		t.Fatalf("exit %d\n%s\n%s", code, out, stderr)
	}
	var got struct {
		Files  []reconciler.Orphan     `json:"files"`
		Totals reconciler.OrphanTotals `json:"totals"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if got.Totals.Removed != 1 || bucket.Exists("media/up/2025/orphan one.jpg") {
		t.Fatalf("report %+v", got)
	}
	for _, name := range []string{"media/up/2025/live.jpg", "media/up/2025/after.jpg", "up/2025/outside.jpg"} {
		if !bucket.Exists(name) {
			t.Errorf("%s removed", name)
		}
	}

	other := inventorytest.Report{SourceBucket: "another-bucket", Files: [][]inventorytest.Row{{{Key: "media/x", LastModified: old}}}}
	path := other.WriteDir(t, t.TempDir())
	if code, _, stderr := reconcile("orphans", "--inventory", path); code != exitUsage || !strings.Contains(stderr, "another-bucket") {
		t.Errorf("a report of another bucket: exit %d, %s", code, stderr)
	}
}

// With a trash, orphans are moved into it, and the trash is never scanned.
func TestOrphansGoToTheTrash(t *testing.T) {
	f := newForum(t)
	t.Setenv("RECONCILE_STORAGE_TRASH_PREFIX", "forum/attachments/.trash/")
	f.add("forum/attachments/2025/live.jpg", -1)
	f.writeOld("forum/attachments/2025/orphan.jpg")
	settleFiles(t)
	f.migrate()
	for range 2 {
		if code, out, stderr := reconcile("orphans"); code != exitOK {
			t.Fatalf("exit %d\n%s\n%s", code, out, stderr)
		}
	}
	if !f.fileGone("forum/attachments/2025/orphan.jpg") {
		t.Fatal("orphan left")
	}
	if code, out, stderr := reconcile("untrash", "forum/attachments/2025/orphan.jpg"); code != exitOK || f.fileGone("forum/attachments/2025/orphan.jpg") {
		t.Fatalf("untrash: exit %d\n%s\n%s", code, out, stderr)
	}
}

// settleFiles makes the files just written old enough for a grace of a
// second: a file's age counts from its status change too, which writing it
// with an old modification time does not set back.
func settleFiles(t *testing.T) {
	t.Setenv("RECONCILE_ORPHANS_GRACE", "1s")
	time.Sleep(1100 * time.Millisecond)
}

// s3Env points reconcile at bucket, under prefix.
func s3Env(t *testing.T, bucket *tests3.Bucket, prefix string) {
	for k, v := range map[string]string{
		"RECONCILE_STORAGE_BACKEND":       "s3",
		"RECONCILE_STORAGE_S3_ENDPOINT":   bucket.Endpoint,
		"RECONCILE_STORAGE_S3_BUCKET":     bucket.Name,
		"RECONCILE_STORAGE_S3_PREFIX":     prefix,
		"RECONCILE_STORAGE_S3_ACCESS_KEY": bucket.AccessKey,
		"RECONCILE_STORAGE_S3_SECRET_KEY": bucket.SecretKey,
		"RECONCILE_STORAGE_S3_USE_SSL":    "false",
		"RECONCILE_STORAGE_S3_REGION":     bucket.Region,
	} {
		t.Setenv(k, v)
	}
}

// A scan that removes none of the orphans it judged, all kept by a guard
// (here a transaction left open), exits 1: a job that reclaims nothing must
// not look fine.
func TestOrphansThatRemoveNothingFail(t *testing.T) {
	f := newForum(t)
	f.add("forum/attachments/2025/live.jpg", -1)
	f.writeOld("forum/attachments/2025/orphan.jpg")
	settleFiles(t)
	f.migrate()
	tx, err := f.pool.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(context.Background(), `UPDATE forum_attachment SET original_filename = 'x'`); err != nil {
		t.Fatal(err)
	}
	code, out, stderr := reconcile("orphans")
	if code != exitFailed || f.fileGone("forum/attachments/2025/orphan.jpg") || !strings.Contains(stderr, "removed none of the orphans") {
		t.Fatalf("exit %d\n%s\n%s", code, out, stderr)
	}
}
