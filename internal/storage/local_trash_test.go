//go:build linux

package storage

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLocalTrash(t *testing.T) {
	runTrashSuite(t, localFixture)
}

// localTrashSetup returns a Local with a trash at .trash/ whose clock
// reads 01:23, its root, and the folder above it.
func localTrashSetup(t *testing.T) (l *Local, root, dir string) {
	t.Helper()
	c := &clock{t: at(1, 23)}
	l, dir = localSetup(t, WithTrash(".trash/", c.now))
	return l, filepath.Join(dir, "root"), dir
}

// The trash keeps modification times, is its owner's alone, makes a key's
// folders again to put it back, and goes folders and all.
func TestLocalTrashFolders(t *testing.T) {
	l, root, _ := localTrashSetup(t)
	key := "forum/2025/10/a.jpg"
	mustWrite(t, filepath.Join(root, key))
	written := time.Date(2025, 10, 4, 12, 0, 0, 0, time.UTC)
	if err := os.Chtimes(filepath.Join(root, key), written, written); err != nil {
		t.Fatal(err)
	}
	requireResults(t, []string{key}, l.Remove(t.Context(), removals(queuedLater(), key)), Removed)
	for _, folder := range []string{".trash", ".trash/2026-11-30T01", ".trash/2026-11-30T01/forum/2025/10"} {
		st, err := os.Stat(filepath.Join(root, folder))
		if err != nil || st.Mode().Perm() != trashFolderMode {
			t.Errorf("%s: %v, %v; want a folder of mode %o", folder, st.Mode(), err, trashFolderMode)
		}
	}
	requireModTime(t, filepath.Join(root, ".trash/2026-11-30T01", key), written)

	// The key's folders went meanwhile.
	if err := os.RemoveAll(filepath.Join(root, "forum")); err != nil {
		t.Fatal(err)
	}
	requireErrs(t, []string{key}, l.Untrash(t.Context(), []string{key}), nil)
	requireModTime(t, filepath.Join(root, key), written)

	requireResults(t, []string{key}, l.Remove(t.Context(), removals(queuedLater(), key)), Removed)
	if n, err := l.EmptyTrash(t.Context(), at(2, 0)); err != nil || n != 1 {
		t.Fatalf("EmptyTrash = %d, %v; want 1", n, err)
	}
	if fileExists(t, filepath.Join(root, ".trash/2026-11-30T01")) || !fileExists(t, filepath.Join(root, ".trash")) {
		t.Error("the bucket's folder is left, or the trash's is gone")
	}
}

func requireModTime(t *testing.T, path string, want time.Time) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if !st.ModTime().Equal(want) {
		t.Errorf("%s: modified %v, want %v", path, st.ModTime(), want)
	}
}

// A trash folder that is a link, to outside the root or inside it, is
// never followed: nothing moves, nothing outside is touched.
func TestLocalTrashThroughALinkIsRefused(t *testing.T) {
	l, root, dir := localTrashSetup(t)
	outside := filepath.Join(dir, "outside")
	mustWrite(t, filepath.Join(outside, "2026-11-30T01", "keep.jpg"))
	mustSymlink(t, outside, filepath.Join(root, ".trash"))
	mustWrite(t, filepath.Join(root, "a.jpg"))

	res := l.Remove(t.Context(), removals(queuedLater(), "a.jpg"))
	requireResults(t, []string{"a.jpg"}, res, errAny)
	if msg := res[0].Err.Error(); !strings.Contains(msg, `remove "a.jpg": make its trash folder: openat2 .trash/2026-11-30T01: too many levels of symbolic links`) {
		t.Errorf("error %q, want the key, the folder and the link", msg)
	}
	if !fileExists(t, filepath.Join(root, "a.jpg")) || fileExists(t, filepath.Join(outside, "2026-11-30T01", "a.jpg")) {
		t.Error("a.jpg was moved through the link")
	}
	if n, err := l.EmptyTrash(t.Context(), at(23, 0)); err == nil || n != 0 {
		t.Errorf("EmptyTrash through a link = %d, %v; want an error", n, err)
	}
	requireErrs(t, []string{"keep.jpg"}, l.Untrash(t.Context(), []string{"keep.jpg"}), errAny)
	if !fileExists(t, filepath.Join(outside, "2026-11-30T01", "keep.jpg")) {
		t.Error("a file outside the root was touched")
	}
}

// Links inside the trash are deleted themselves; what they point to stays.
func TestLocalEmptyTrashDeletesLinksNotTargets(t *testing.T) {
	l, root, dir := localTrashSetup(t)
	outside := filepath.Join(dir, "outside")
	mustWrite(t, filepath.Join(outside, "f.jpg"))
	bucket := filepath.Join(root, ".trash", "2026-11-30T01")
	mustWrite(t, filepath.Join(bucket, "real.jpg"))
	mustSymlink(t, outside, filepath.Join(bucket, "dirlink"))
	mustSymlink(t, filepath.Join(outside, "f.jpg"), filepath.Join(bucket, "filelink"))
	if n, err := l.EmptyTrash(t.Context(), at(2, 0)); err != nil || n != 3 {
		t.Fatalf("EmptyTrash = %d, %v; want 3 (a file and two links)", n, err)
	}
	if fileExists(t, bucket) || !fileExists(t, filepath.Join(outside, "f.jpg")) {
		t.Error("the bucket is left, or a link's target is gone")
	}
}

// What renameat2 moved is checked to be the file looked at: a folder
// swapped in meanwhile (unlinkat would have refused it) goes back.
func TestLocalTrashPutsBackWhatReplacedTheFile(t *testing.T) {
	l, root, _ := localTrashSetup(t)
	mustWrite(t, filepath.Join(root, "s", "a.jpg"))
	dirs := l.folders()
	defer dirs.close()
	f, err := dirs.lstat("remove", "s/a.jpg")
	if err != nil || !f.found {
		t.Fatal(f, err)
	}
	if err := os.Remove(filepath.Join(root, "s", "a.jpg")); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, filepath.Join(root, "s", "a.jpg", "inside.jpg"))
	res := dirs.moveToTrash(f, "s/a.jpg")
	if res.Err == nil {
		t.Fatalf("moved a folder that replaced the file: %+v", res)
	}
	if !fileExists(t, filepath.Join(root, "s", "a.jpg", "inside.jpg")) || fileExists(t, filepath.Join(root, ".trash", "2026-11-30T01", "s", "a.jpg")) {
		t.Error("the folder was not put back")
	}
}

// One call over more folders than it keeps open moves and puts back every
// file: no folder's handle is closed while it is still needed.
func TestLocalTrashManyFolders(t *testing.T) {
	l, root, _ := localTrashSetup(t)
	var keys []string
	for i := range 2*maxOpenDirs + 5 {
		key := fmt.Sprintf("f%03d/a.jpg", i)
		keys = append(keys, key)
		mustWrite(t, filepath.Join(root, key))
	}
	for i, res := range l.Remove(t.Context(), removals(queuedLater(), keys...)) {
		if res.Err != nil || res.Outcome != Removed || !fileExists(t, filepath.Join(root, ".trash/2026-11-30T01", keys[i])) {
			t.Fatalf("%q: %+v, or not in the trash", keys[i], res)
		}
	}
	for i, err := range l.Untrash(t.Context(), keys) {
		if err != nil || !fileExists(t, filepath.Join(root, keys[i])) {
			t.Fatalf("%q: %v, or not back", keys[i], err)
		}
	}
}
