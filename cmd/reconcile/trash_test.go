package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/reconcile/reconcile/internal/tests3"
)

// writeTrashed writes a file into the trash's bucket of the hour at.
func writeTrashed(t *testing.T, root string, at time.Time, key string) string {
	t.Helper()
	path := filepath.Join(root, ".trash", at.UTC().Format("2006-01-02T15"), key)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func exists(t *testing.T, path string) bool {
	t.Helper()
	_, err := os.Lstat(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return err == nil
}

// --rescan moves the purged row's file into the trash and empties what is
// older than the keep; untrash puts the file back, and never over a file.
func TestTrashRescanMovesAndUntrashPutsBack(t *testing.T) {
	f := newForum(t)
	t.Setenv("RECONCILE_STORAGE_TRASH_PREFIX", ".trash/")
	t.Setenv("RECONCILE_STORAGE_TRASH_KEEP", "2d")
	key := "forum/attachments/2025/10/04/leaf.jpg"
	f.add(key, 48)
	f.add("forum/attachments/recent.jpg", 0)
	expired := writeTrashed(t, f.root, time.Now().Add(-50*time.Hour), "forum/expired.jpg")
	kept := writeTrashed(t, f.root, time.Now().Add(-46*time.Hour), "forum/kept.jpg")
	f.migrate()

	if code, out, stderr := reconcile("--rescan", "--dry-run"); code != exitOK || !exists(t, expired) {
		t.Fatalf("dry run: exit %d, or it emptied the trash\n%s%s", code, out, stderr)
	}
	code, out, stderr := reconcile("--rescan")
	if code != exitOK || !strings.Contains(out, "Files removed: 1\n") {
		t.Fatalf("exit %d\n%s%s", code, out, stderr)
	}
	if !strings.Contains(stderr, "emptied the trash") || !strings.Contains(stderr, "files=1") {
		t.Errorf("no log line of the trash emptied:\n%s", stderr)
	}
	if exists(t, expired) || !exists(t, kept) {
		t.Error("emptied the wrong bucket")
	}
	trashed, err := filepath.Glob(filepath.Join(f.root, ".trash", "*", key))
	if err != nil || len(trashed) != 1 || exists(t, filepath.Join(f.root, key)) {
		t.Fatalf("in the trash: %v (%v); want the purged file there alone", trashed, err)
	}
	if n := f.count(`SELECT count(*) FROM forum_attachment`); n != 1 {
		t.Fatalf("%d rows left, want 1", n)
	}

	code, out, stderr = reconcile("untrash", key, "forum/never.jpg", "../x.jpg")
	if code != exitFailed {
		t.Fatalf("untrash: exit %d, want %d\n%s%s", code, exitFailed, out, stderr)
	}
	want := `restored "` + key + `"
failed "forum/never.jpg": untrash "forum/never.jpg": no copy in the trash
failed "../x.jpg": unsafe storage key "../x.jpg": has a ".." element
`
	if out != want {
		t.Errorf("untrash printed\n%s\nwant\n%s", out, want)
	}
	if data, err := os.ReadFile(filepath.Join(f.root, key)); err != nil || string(data) != "img" || exists(t, trashed[0]) {
		t.Fatalf("the file is not back: %q, %v", data, err)
	}
	// With a copy in the trash again, the file at the key is not overwritten.
	writeTrashed(t, f.root, time.Now(), key)
	if code, out, _ := reconcile("untrash", key); code != exitFailed || !strings.Contains(out, "exists at its place again") {
		t.Errorf("untrash over a file: exit %d, %q", code, out)
	}
	if data, err := os.ReadFile(filepath.Join(f.root, key)); err != nil || string(data) != "img" {
		t.Errorf("the file was overwritten: %q, %v", data, err)
	}
}

func TestTrashUsageErrorsExitTwo(t *testing.T) {
	f := newForum(t)
	f.add("x/due.jpg", 48)
	for _, tc := range []struct {
		name   string
		prefix string
		args   []string
		want   string
	}{
		{"untrash without a trash", "", []string{"untrash", "x/due.jpg"}, "storage.trash.prefix is not set"},
		{"untrash without keys", ".trash/", []string{"untrash"}, "name at least one storage key"},
		{"trash prefix that climbs", "../trash", []string{"--rescan"}, "storage.trash.prefix: must be a relative folder"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("RECONCILE_STORAGE_TRASH_PREFIX", tc.prefix)
			if code, out, stderr := reconcile(tc.args...); code != exitUsage || !strings.Contains(stderr, tc.want) {
				t.Fatalf("exit %d, stderr %q, stdout %q; want %d and %q", code, stderr, out, exitUsage, tc.want)
			}
		})
	}
	if f.count(`SELECT count(*) FROM forum_attachment`) != 1 || f.files() != 1 {
		t.Fatal("a refused run deleted something")
	}
}

// On S3 the file is copied into the trash under the prefix, then deleted;
// untrash copies it back.
func TestTrashRescanOnS3(t *testing.T) {
	f := newForum(t)
	bucket := tests3.New(t)
	key := "forum/attachments/2025/10/04/leaf.jpg"
	f.add(key, 48)
	bucket.Put(t, "media/"+key)
	s3Env(t, bucket, "media")
	t.Setenv("RECONCILE_STORAGE_TRASH_PREFIX", ".trash")
	f.migrate()
	// Objects written in the same second as their removal are kept (S3
	// gives modification times to the second): this one is older.
	time.Sleep(time.Until(time.Now().Truncate(time.Second).Add(1100 * time.Millisecond)))
	hour := time.Now().UTC().Format("2006-01-02T15")
	code, out, stderr := reconcile("--rescan")
	if code != exitOK || !strings.Contains(out, "Files removed: 1\n") {
		t.Fatalf("exit %d\n%s%s", code, out, stderr)
	}
	trashed := bucket.Exists("media/.trash/"+hour+"/"+key) || bucket.Exists("media/.trash/"+time.Now().UTC().Format("2006-01-02T15")+"/"+key)
	if bucket.Exists("media/"+key) || !trashed {
		t.Fatal("the object was not moved into the trash")
	}
	if code, out, stderr := reconcile("untrash", key); code != exitOK || out != `restored "`+key+`"`+"\n" {
		t.Fatalf("untrash: exit %d\n%s%s", code, out, stderr)
	}
	if !bucket.Exists("media/" + key) {
		t.Fatal("the object is not back")
	}
}

// The service empties the trash when it takes the lock, then hourly.
func TestTrashServiceEmptiesTheTrash(t *testing.T) {
	f := newForum(t)
	serviceEnv(t, f, "1h")
	t.Setenv("RECONCILE_STORAGE_TRASH_PREFIX", ".trash/")
	expired := writeTrashed(t, f.root, time.Now().Add(-8*24*time.Hour), "forum/expired.jpg")
	kept := writeTrashed(t, f.root, time.Now(), "forum/kept.jpg")
	f.migrate()
	s := startService(t, false)
	s.waitLog("emptied the trash", 1)
	if exists(t, expired) || !exists(t, kept) {
		t.Error("emptied the wrong bucket")
	}
	if err := s.stop(); err != nil {
		t.Fatal(err)
	}
}
