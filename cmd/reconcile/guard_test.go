package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/reconcile/reconcile/internal/tests3"
)

// The guard rails, as an operator meets them: each mistake below once
// deleted what had to stay, or stopped the purge for good.

// Row 1: a bare number for a duration in the file has no unit; read as
// nanoseconds it purged every soft-deleted row. Row 2: --days beyond a
// century overflowed to minutes. Both exit 2 before touching anything.
func TestDurationMistakesExitTwo(t *testing.T) {
	f := newForum(t)
	f.add("forum/attachments/recent.jpg", 1) // soft-deleted an hour ago
	f.add("forum/attachments/due.jpg", 24*40)
	f.migrate()
	t.Setenv("RECONCILE_RETENTION", "")
	os.Unsetenv("RECONCILE_RETENTION") // the file decides
	for _, tc := range []struct {
		file string
		args []string
		want []string
	}{
		{"retention: 30\n", []string{"--rescan"}, []string{"retention: 30 is missing a unit", "30d"}},
		{"sweep:\n  max_wait: 60\n", nil, []string{"sweep.max_wait: 60 is missing a unit"}},
		{"database:\n  lock_timeout: 5\n", []string{"--rescan"}, []string{"database.lock_timeout: 5 is missing a unit"}},
		{"", []string{"--rescan", "--days", "213504"}, []string{"--days: must be between 1 and 36500, got 213504"}},
		{"", []string{"--rescan", "--max-deletes", "0"}, []string{"safety.max_deletes: 0 would mean no bound"}},
	} {
		path := filepath.Join(t.TempDir(), "reconcile.yaml")
		if err := os.WriteFile(path, []byte(tc.file), 0o600); err != nil {
			t.Fatal(err)
		}
		code, out, stderr := reconcile(append([]string{"--config", path}, tc.args...)...)
		if code != exitUsage {
			t.Fatalf("%q %v: exit %d; want %d\n%s%s", tc.file, tc.args, code, exitUsage, out, stderr)
		}
		for _, want := range tc.want {
			if !strings.Contains(stderr, want) {
				t.Errorf("%q %v: stderr lacks %q:\n%s", tc.file, tc.args, want, stderr)
			}
		}
	}
	if n := f.count(`SELECT count(*) FROM forum_attachment`); n != 2 || f.files() != 2 {
		t.Fatalf("%d rows and %d files left; want both", n, f.files())
	}
	// 30d is thirty days: the row deleted 40 days ago goes, the other stays.
	t.Setenv("RECONCILE_RETENTION", "30d")
	if code, out, stderr := reconcile("--rescan"); code != exitOK || !strings.Contains(out, "Successfully deleted: 1 attachments") {
		t.Fatalf("retention 30d: exit %d\n%s%s", code, out, stderr)
	}
}

// A retention under a day is accepted, and warned about.
func TestShortRetentionIsWarnedAtStart(t *testing.T) {
	newForum(t).migrate()
	t.Setenv("RECONCILE_RETENTION", "2h")
	code, out, stderr := reconcile("--rescan")
	if code != exitOK || !strings.Contains(stderr, "under a day") {
		t.Fatalf("exit %d; want 0 and a warning\n%s%s", code, out, stderr)
	}
}

// Row 3: the media volume is not mounted; its mount point is an empty
// directory. Every file would look missing: the run refuses, names the
// root and what it probed, and deletes nothing.
func TestUnmountedVolumeDeletesNothing(t *testing.T) {
	f := newForum(t)
	for i := range 30 {
		f.add(fmt.Sprintf("forum/attachments/2025/10/04/%02d.jpg", i), 48)
	}
	f.add("forum/attachments/2026/11/29/live.jpg", -1)
	f.migrate()
	mountPoint := t.TempDir()
	t.Setenv("RECONCILE_STORAGE_LOCAL_ROOT", mountPoint)
	code, out, stderr := reconcile("--rescan")
	if code != exitFailed || !strings.Contains(stderr, mountPoint) || !strings.Contains(stderr, "holds none of the") || !strings.Contains(stderr, "[CLEANUP] Failed") {
		t.Fatalf("exit %d; want %d naming %s and the probe\n%s%s", code, exitFailed, mountPoint, out, stderr)
	}
	if n := f.count(`SELECT count(*) FROM forum_attachment`); n != 31 {
		t.Fatalf("%d rows left of 31", n)
	}
	// The audit says the purge would refuse.
	code, out, _ = reconcile("--rescan", "--dry-run")
	if code != exitFailed || !strings.Contains(out, "A purge would refuse to run") {
		t.Fatalf("audit: exit %d\n%s", code, out)
	}
	// The service refuses too, after its bounded retries; here its first
	// sweep is enough to see it say why.
	t.Setenv("RECONCILE_STORAGE_LOCAL_ROOT", f.root)
	if code, out, stderr := reconcile("--rescan"); code != exitOK || !strings.Contains(out, "Successfully deleted: 30 attachments") {
		t.Fatalf("mounted: exit %d\n%s%s", code, out, stderr)
	}
}

// Row 4: S3 with a prefix under which the bucket holds none of the files:
// bulk deletes answer success for absent keys, so every row would go. The
// run refuses and deletes nothing.
func TestWrongS3PrefixDeletesNothing(t *testing.T) {
	f := newForum(t)
	bucket := tests3.New(t)
	for i := range 20 {
		key := fmt.Sprintf("forum/attachments/2025/10/04/%02d.jpg", i)
		f.add(key, 48)
		bucket.Put(t, "media/"+key)
	}
	for k, v := range map[string]string{
		"RECONCILE_STORAGE_BACKEND":       "s3",
		"RECONCILE_STORAGE_S3_ENDPOINT":   bucket.Endpoint,
		"RECONCILE_STORAGE_S3_BUCKET":     bucket.Name,
		"RECONCILE_STORAGE_S3_PREFIX":     "static", // the files are under media/
		"RECONCILE_STORAGE_S3_ACCESS_KEY": bucket.AccessKey,
		"RECONCILE_STORAGE_S3_SECRET_KEY": bucket.SecretKey,
		"RECONCILE_STORAGE_S3_USE_SSL":    "false",
		"RECONCILE_STORAGE_S3_REGION":     bucket.Region,
	} {
		t.Setenv(k, v)
	}
	f.migrate()
	code, out, stderr := reconcile("--rescan")
	if code != exitFailed || !strings.Contains(stderr, "s3://"+bucket.Name+"/static") || !strings.Contains(stderr, "holds none of the") {
		t.Fatalf("exit %d; want %d naming the bucket and prefix\n%s%s", code, exitFailed, out, stderr)
	}
	if n := f.count(`SELECT count(*) FROM forum_attachment`); n != 20 {
		t.Fatalf("%d rows left of 20", n)
	}
	// Objects written in the same second as their removal are kept (S3
	// gives modification times to the second): these are older.
	time.Sleep(time.Until(time.Now().Truncate(time.Second).Add(1100 * time.Millisecond)))
	t.Setenv("RECONCILE_STORAGE_S3_PREFIX", "media")
	if code, out, stderr := reconcile("--rescan"); code != exitOK || !strings.Contains(out, "Files removed: 20") {
		t.Fatalf("right prefix: exit %d\n%s%s", code, out, stderr)
	}
}

// Row 5, beyond the table: rows without a file are purged and counted
// apart; files removed by hand do not stop the run and are counted as
// missing, not removed.
func TestSummaryCountsRowsWithoutFilesAndMissingFiles(t *testing.T) {
	f := newForum(t)
	for i := range 5 {
		f.add(fmt.Sprintf("forum/attachments/%d.jpg", i), 48)
	}
	blank := f.add("placeholder.jpg", 48)
	if _, err := f.pool.Exec(context.Background(), `UPDATE forum_attachment SET image = '' WHERE id = $1`, blank); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(f.root, "forum/attachments/3.jpg")); err != nil {
		t.Fatal(err)
	}
	f.migrate()
	code, out, stderr := reconcile("--rescan")
	if code != exitOK {
		t.Fatalf("exit %d\n%s%s", code, out, stderr)
	}
	for _, want := range []string{
		"  - Successfully deleted: 6 attachments\n",
		"  - Of which without a file (empty storage key): 1 attachments\n",
		"  - Failed: 0 attachments\n",
		"  - Files removed: 4\n",
		"  - Files missing (already gone; their rows were purged): 1\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
}

// --max-deletes: a run purges at most that many rows, says how many are
// left, and exits 0; the audit says how many the next run would delete.
func TestMaxDeletesBoundsARun(t *testing.T) {
	f := newForum(t)
	for i := range 25 {
		f.add(fmt.Sprintf("forum/attachments/%02d.jpg", i), 48)
	}
	f.migrate()
	code, out, _ := reconcile("--rescan", "--dry-run", "--max-deletes", "10")
	if code != exitOK || !strings.Contains(out, "Would delete: 25 attachments") || !strings.Contains(out, "The next run would delete: 10 attachments") {
		t.Fatalf("audit: exit %d\n%s", code, out)
	}
	code, out, stderr := reconcile("--rescan", "--max-deletes", "10")
	if code != exitOK || !strings.Contains(out, "Successfully deleted: 10 attachments") || !strings.Contains(out, "15 due attachments are left for the next run") {
		t.Fatalf("exit %d\n%s%s", code, out, stderr)
	}
	if n := f.count(`SELECT count(*) FROM forum_attachment`); n != 15 {
		t.Fatalf("%d rows left, want 15", n)
	}
}

// Row 6: an index whose data pages are corrupt is a cache to rebuild, not
// a panic on every run.
func TestCorruptIndexIsRebuilt(t *testing.T) {
	f := newForum(t)
	for i := range 3000 {
		f.add(fmt.Sprintf("forum/attachments/2025/%02d/%04d.jpg", i%12+1, i), 0) // soft-deleted, not due
	}
	f.add("forum/attachments/due.jpg", 48)
	f.migrate()
	if code, out, stderr := reconcile("--rescan"); code != exitOK {
		t.Fatalf("first run: exit %d\n%s%s", code, out, stderr)
	}
	path := os.Getenv("RECONCILE_INDEX_PATH")
	corruptDataPages(t, path)
	f.add("forum/attachments/due-2.jpg", 48)
	code, out, stderr := reconcile("--rescan")
	if code != exitOK || !strings.Contains(out, "Successfully deleted: 1 attachments") || !strings.Contains(stderr, "moved aside") {
		t.Fatalf("exit %d; want 0, the row purged and the index set aside\n%s%s", code, out, stderr)
	}
	aside, err := filepath.Glob(path + ".corrupt-*")
	if err != nil || len(aside) != 1 {
		t.Fatalf("set aside: %v (%v)", aside, err)
	}
}

// corruptDataPages overwrites every page of a bbolt file after its two
// meta pages with garbage, as a failing disk would, and leaves the meta
// pages valid so the file still opens.
func corruptDataPages(t *testing.T, path string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	page := os.Getpagesize()
	if len(data) < 8*page {
		t.Fatalf("index of %d bytes: too small to have data pages", len(data))
	}
	for i := 4 * page; i < len(data); i++ {
		data[i] = byte(i*7 + 3)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}
