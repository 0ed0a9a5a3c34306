//go:build linux

package storage

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// localSetup returns a Local over dir/root, and dir, which holds the root and
// stands for everything outside it.
func localSetup(t *testing.T, opts ...Option) (*Local, string) {
	t.Helper()
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	l, err := NewLocal(root, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Error(err)
		}
	})
	return l, dir
}

func writeFile(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o644)
}

func fileExists(t *testing.T, path string) bool {
	t.Helper()
	_, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	return true
}

func TestLocal(t *testing.T) {
	runStoreSuite(t, func(t *testing.T) *fixture { return localFixture(t) })
}

func localFixture(t *testing.T, opts ...Option) *fixture {
	l, dir := localSetup(t, opts...)
	root := filepath.Join(dir, "root")
	return &fixture{
		store:  l,
		put:    func(key string, data []byte) error { return writeFile(filepath.Join(root, key), data) },
		exists: func(t *testing.T, key string) bool { return fileExists(t, filepath.Join(root, key)) },
		read: func(t *testing.T, key string) string {
			data, err := os.ReadFile(filepath.Join(root, key))
			if err != nil {
				t.Fatal(err)
			}
			return string(data)
		},
		putAbove:    func(t *testing.T, name string) { mustWrite(t, filepath.Join(dir, name)) },
		existsAbove: func(t *testing.T, name string) bool { return fileExists(t, filepath.Join(dir, name)) },
	}
}

func mustWrite(t *testing.T, path string) {
	t.Helper()
	if err := writeFile(path, []byte("keep me")); err != nil {
		t.Fatal(err)
	}
}

func mustSymlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}

// requireRefused checks that key is refused as unsafe by Check, Stat and
// Remove.
func requireRefused(t *testing.T, l *Local, key string) {
	t.Helper()
	if err := l.Check(t.Context(), []string{key})[0]; !errors.Is(err, ErrUnsafeKey) {
		t.Errorf("Check(%q) = %v, want ErrUnsafeKey", key, err)
	}
	if info := l.Stat(t.Context(), []string{key})[0]; !errors.Is(info.Err, ErrUnsafeKey) || info.Exists {
		t.Errorf("Stat(%q) = %+v, want ErrUnsafeKey", key, info)
	}
	if res := l.Remove(t.Context(), removals(queuedLater(), key))[0]; !errors.Is(res.Err, ErrUnsafeKey) || res.Outcome != 0 {
		t.Errorf("Remove(%q) = %+v, want ErrUnsafeKey", key, res)
	}
}

func TestLocalSymlinkToFileOutside(t *testing.T) {
	l, dir := localSetup(t)
	secret := filepath.Join(dir, "outside", "secret.txt")
	mustWrite(t, secret)
	mustSymlink(t, "../outside/secret.txt", filepath.Join(dir, "root", "rel.jpg"))
	mustSymlink(t, secret, filepath.Join(dir, "root", "abs.jpg"))

	for _, key := range []string{"rel.jpg", "abs.jpg"} {
		requireRefused(t, l, key)
		if !fileExists(t, filepath.Join(dir, "root", key)) {
			t.Errorf("link %q was removed", key)
		}
	}
	if !fileExists(t, secret) {
		t.Error("the file outside the root was removed")
	}
}

func TestLocalSymlinkInsideRoot(t *testing.T) {
	// A link to a file inside the root is refused all the same: a key names
	// a file, and the row that points at a link is left for a human.
	l, dir := localSetup(t)
	root := filepath.Join(dir, "root")
	mustWrite(t, filepath.Join(root, "real.jpg"))
	mustSymlink(t, "real.jpg", filepath.Join(root, "alias.jpg"))
	requireRefused(t, l, "alias.jpg")
	if !fileExists(t, filepath.Join(root, "real.jpg")) {
		t.Error("the link target was removed")
	}
}

func TestLocalSymlinkedDirOutside(t *testing.T) {
	l, dir := localSetup(t)
	outside := filepath.Join(dir, "outside")
	mustWrite(t, filepath.Join(outside, "f"))
	mustSymlink(t, outside, filepath.Join(dir, "root", "dir"))
	mustSymlink(t, "../outside", filepath.Join(dir, "root", "reldir"))
	mustSymlink(t, "..", filepath.Join(dir, "root", "up"))

	for _, key := range []string{"dir/f", "reldir/f", "up/outside/f", "dir/missing"} {
		requireRefused(t, l, key)
	}
	if !fileExists(t, filepath.Join(outside, "f")) {
		t.Error("the file outside the root was removed")
	}
}

func TestLocalDirectoryKey(t *testing.T) {
	l, dir := localSetup(t)
	root := filepath.Join(dir, "root")
	mustWrite(t, filepath.Join(root, "full", "f.jpg"))
	if err := os.Mkdir(filepath.Join(root, "empty"), 0o755); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, filepath.Join(root, "a.jpg"))
	mustWrite(t, filepath.Join(root, "b.jpg"))

	for _, key := range []string{"full", "empty"} {
		err := l.Check(t.Context(), []string{key})[0]
		if !errors.Is(err, errIsDir) || errors.Is(err, ErrUnsafeKey) {
			t.Errorf("Check(%q) = %v, want a directory error", key, err)
		}
	}
	keys := []string{"a.jpg", "full", "empty", "b.jpg"}
	for i, info := range l.Stat(t.Context(), keys) {
		if wantDir := i == 1 || i == 2; wantDir != errors.Is(info.Err, errIsDir) || errors.Is(info.Err, ErrUnsafeKey) {
			t.Errorf("Stat(%q) = %+v", keys[i], info)
		}
	}
	res := l.Remove(t.Context(), removals(queuedLater(), keys...))
	requireResults(t, keys, res, Removed, errIsDir, errIsDir, Removed)
	if errors.Is(res[1].Err, ErrUnsafeKey) {
		t.Errorf("directory refused as unsafe: %v", res[1].Err)
	}
	if got, want := res[1].Err.Error(), `remove "full": is a directory`; got != want {
		t.Errorf("error = %q, want %q", got, want)
	}
	for path, want := range map[string]bool{"a.jpg": false, "b.jpg": false, "full/f.jpg": true, "empty": true} {
		if got := fileExists(t, filepath.Join(root, path)); got != want {
			t.Errorf("exists(%q) = %v, want %v", path, got, want)
		}
	}
}

func TestNewLocalRefusesBadRoot(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	mustWrite(t, file)
	for _, root := range []string{filepath.Join(dir, "missing"), file} {
		if l, err := NewLocal(root); err == nil {
			l.Close()
			t.Errorf("NewLocal(%q) succeeded", root)
		}
	}
}

// A directory link that stays inside the root still makes an alias: the key
// "alias/f.jpg" would remove "real/f.jpg", which another row may use. So is
// a link deep in the path, and a link that is the key's folder itself.
func TestLocalLinkedDirectoryInsideRootIsRefused(t *testing.T) {
	l, dir := localSetup(t)
	root := filepath.Join(dir, "root")
	mustWrite(t, filepath.Join(root, "real", "sub", "f.jpg"))
	mustSymlink(t, "real", filepath.Join(root, "alias"))
	mustSymlink(t, "sub", filepath.Join(root, "real", "sub2"))
	mustSymlink(t, "../real", filepath.Join(root, "real", "sub", "up"))
	for _, key := range []string{"alias/sub/f.jpg", "alias/missing.jpg", "real/sub2/f.jpg", "real/sub/up/sub/f.jpg", "alias/sub/missing/deeper.jpg"} {
		requireRefused(t, l, key)
	}
	if !fileExists(t, filepath.Join(root, "real", "sub", "f.jpg")) {
		t.Fatal("the file behind the alias was removed")
	}
}

// Concurrent removals in shared directories all succeed and leave nothing.
func TestLocalConcurrentRemovals(t *testing.T) {
	l, dir := localSetup(t)
	root := filepath.Join(dir, "root")
	var keys []string
	for i := range 400 {
		k := fmt.Sprintf("a/d%d/f%d.jpg", i%37, i)
		mustWrite(t, filepath.Join(root, k))
		keys = append(keys, k)
	}
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < len(keys); i += 8 {
				if res := l.Remove(context.Background(), removals(queuedLater(), keys[i])); res[0].Outcome != Removed {
					t.Errorf("%s: %+v", keys[i], res[0])
				}
			}
		}()
	}
	wg.Wait()
	for _, k := range keys {
		if fileExists(t, filepath.Join(root, k)) {
			t.Fatalf("%s survived", k)
		}
	}
}

// A directory swapped for a link between the check and the open is caught:
// the key "a/f" never removes "b/f" through a link a -> b.
func TestLocalLinkSwappedInWhileOpeningIsRefused(t *testing.T) {
	l, dir := localSetup(t)
	root := filepath.Join(dir, "root")
	target := filepath.Join(root, "b", "f")
	mustWrite(t, target)
	a, realDir, link := filepath.Join(root, "a"), filepath.Join(root, "real"), filepath.Join(root, "link")
	if err := os.Mkdir(realDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("b", link); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			// a is a directory, then a link to b, each swapped in whole.
			_ = os.Rename(realDir, a)
			_ = os.Rename(a, realDir)
			_ = os.Rename(link, a)
			_ = os.Rename(a, link)
		}
	}()
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		_ = l.Remove(context.Background(), removals(queuedLater(), "a/f"))
		if !fileExists(t, target) {
			close(stop)
			<-done
			t.Fatal("b/f was removed through a link swapped in for a/")
		}
	}
	close(stop)
	<-done
}

// One call over more directories than it may hold open still removes every
// file: the handles are closed and the walk starts afresh.
func TestLocalOneCallOverManyDirectories(t *testing.T) {
	l, dir := localSetup(t)
	root := filepath.Join(dir, "root")
	var keys []string
	for i := range 3 * maxOpenDirs {
		k := fmt.Sprintf("x/d%03d/f.jpg", i)
		mustWrite(t, filepath.Join(root, k))
		keys = append(keys, k)
	}
	for i, res := range l.Remove(context.Background(), removals(queuedLater(), keys...)) {
		if res.Outcome != Removed || fileExists(t, filepath.Join(root, keys[i])) {
			t.Fatalf("%s: %+v, or the file survived", keys[i], res)
		}
	}
}

func TestRewrittenLocal(t *testing.T) {
	queued := time.Date(2025, 10, 4, 12, 0, 7, 500_000_000, time.UTC)
	for _, tc := range []struct {
		modified time.Time
		want     bool
	}{
		{queued.Add(time.Hour), true},
		{queued.Add(time.Nanosecond), true},
		{queued, true},
		{queued.Add(-5 * time.Millisecond), true}, // the kernel's coarse clock lags
		{queued.Add(-time.Second + time.Nanosecond), true},
		{queued.Add(-time.Second), true},
		{queued.Add(-time.Second - time.Nanosecond), false},
		{queued.Add(-24 * time.Hour), false},
	} {
		if got := rewrittenLocal(tc.modified, queued); got != tc.want {
			t.Errorf("rewrittenLocal(%v, %v) = %v, want %v", tc.modified, queued, got, tc.want)
		}
	}
}

// The modification time decides, through Remove, to the nanosecond the
// rule says.
func TestLocalRemoveComparesModTime(t *testing.T) {
	l, dir := localSetup(t)
	root := filepath.Join(dir, "root")
	queued := time.Now()
	mtimes := map[string]time.Time{
		"d/old.jpg":      queued.Add(-time.Hour),
		"d/edge-old.jpg": queued.Add(-time.Second - time.Microsecond),
		"d/edge-new.jpg": queued.Add(-time.Second),
		"d/recent.jpg":   queued.Add(-time.Millisecond),
		"d/future.jpg":   queued.Add(time.Minute),
	}
	for key, mt := range mtimes {
		mustWrite(t, filepath.Join(root, key))
		if err := os.Chtimes(filepath.Join(root, key), mt, mt); err != nil {
			t.Fatal(err)
		}
	}
	keys := []string{"d/old.jpg", "d/edge-old.jpg", "d/edge-new.jpg", "d/recent.jpg", "d/future.jpg"}
	res := l.Remove(t.Context(), removals(queued, keys...))
	requireResults(t, keys, res, Removed, Removed, Rewritten, Rewritten, Rewritten)
	for i, r := range res {
		if r.Outcome == Rewritten && !r.ModTime.Equal(mtimes[keys[i]]) {
			t.Errorf("%s: ModTime %v, want %v", keys[i], r.ModTime, mtimes[keys[i]])
		}
	}
	for i, info := range l.Stat(t.Context(), keys) {
		if want := res[i].Outcome == Rewritten; info.Exists != want || want && !info.ModTime.Equal(mtimes[keys[i]]) {
			t.Errorf("Stat(%q) = %+v after %v", keys[i], info, res[i].Outcome)
		}
	}
}

func TestLocalDeepAndOddKeys(t *testing.T) {
	l, dir := localSetup(t)
	root := filepath.Join(dir, "root")
	deep := strings.Repeat("d/", 40) + "f.jpg"
	mustWrite(t, filepath.Join(root, deep))
	mustWrite(t, filepath.Join(root, "file.jpg"))
	keys := []string{
		deep,
		"file.jpg/under-a-file.jpg", // a file where a folder should be: no such key
		strings.Repeat("d/", 40) + "missing.jpg",
		"no/such/folder.jpg",
		strings.Repeat("x", 300) + ".jpg", // a name too long for the file system
	}
	requireErrs(t, keys, l.Check(t.Context(), keys), nil, nil, nil, nil, errAny)
	requireResults(t, keys, l.Remove(t.Context(), removals(queuedLater(), keys...)), Removed, Missing, Missing, Missing, errAny)
	if !fileExists(t, filepath.Join(root, "file.jpg")) {
		t.Error("file.jpg was removed")
	}
}

// Errors other than a missing file name the operation and the key, and are
// never taken for a missing file.
func TestLocalUnreadableFolderIsAnError(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root searches any folder")
	}
	l, dir := localSetup(t)
	root := filepath.Join(dir, "root")
	mustWrite(t, filepath.Join(root, "locked", "f.jpg"))
	if err := os.Chmod(filepath.Join(root, "locked"), 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(filepath.Join(root, "locked"), 0o755) })
	res := l.Remove(t.Context(), removals(queuedLater(), "locked/f.jpg"))
	requireResults(t, []string{"locked/f.jpg"}, res, fs.ErrPermission)
	if msg := res[0].Err.Error(); !strings.HasPrefix(msg, `remove "locked/f.jpg": `) {
		t.Errorf("error %q should name the operation and the key", msg)
	}
}

func TestLocalErrorsNameTheKey(t *testing.T) {
	l, dir := localSetup(t)
	root := filepath.Join(dir, "root")
	mustWrite(t, filepath.Join(root, "real", "f.jpg"))
	mustSymlink(t, "real", filepath.Join(root, "alias"))
	mustSymlink(t, "real/f.jpg", filepath.Join(root, "link.jpg"))
	for key, want := range map[string]string{
		"alias/f.jpg": `unsafe storage key "alias/f.jpg": passes through a symbolic link`,
		"link.jpg":    `unsafe storage key "link.jpg": is a symbolic link`,
	} {
		if got := l.Check(t.Context(), []string{key})[0]; got == nil || got.Error() != want {
			t.Errorf("Check(%q) = %v, want %q", key, got, want)
		}
	}
}

// FuzzLocalKeys runs Check, Stat and Remove on any key against a tree with
// links in and out of the root, and checks that nothing outside the root is
// touched, that a key through a link is always refused, and that only the
// file a key names can go.
func FuzzLocalKeys(f *testing.F) {
	for _, key := range []string{
		"f.jpg", "sub/g.jpg", "sub", "alias.jpg", "alias.jpg/x", "out", "out/secret.txt",
		"out/../root/f.jpg", "../outside/secret.txt", "sub/../f.jpg", "/etc/passwd",
		"sub/missing.jpg", "f.jpg/x", "sub//g.jpg", "./f.jpg", "sub/g.jpg/", "é/写真.png",
	} {
		f.Add(key)
	}
	dir := f.TempDir()
	root := filepath.Join(dir, "root")
	outside := filepath.Join(dir, "outside", "secret.txt")
	inside := []string{"f.jpg", "sub/g.jpg"}
	links := map[string]string{"alias.jpg": "f.jpg", "out": "../outside"}
	restore := func(t testing.TB) {
		for _, p := range append([]string{outside}, inside...) {
			if !filepath.IsAbs(p) {
				p = filepath.Join(root, p)
			}
			if _, err := os.Lstat(p); errors.Is(err, os.ErrNotExist) {
				if err := writeFile(p, []byte("x")); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	restore(f)
	for link, target := range links {
		if err := os.Symlink(target, filepath.Join(root, link)); err != nil {
			f.Fatal(err)
		}
	}
	l, err := NewLocal(root)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { l.Close() })

	f.Fuzz(func(t *testing.T, key string) {
		restore(t)
		ctx := context.Background()
		errs := l.Check(ctx, []string{key})
		infos := l.Stat(ctx, []string{key})
		res := l.Remove(ctx, removals(time.Now(), key))
		res = append(res, l.Remove(ctx, removals(queuedLater(), key))...)

		first, _, _ := strings.Cut(key, "/")
		if _, ok := links[first]; ok {
			for _, err := range []error{errs[0], infos[0].Err, res[0].Err, res[1].Err} {
				if !errors.Is(err, ErrUnsafeKey) {
					t.Errorf("key %q through a link: %v, want ErrUnsafeKey", key, err)
				}
			}
		}
		if !fileExists(t, outside) {
			t.Fatalf("key %q removed the file outside the root", key)
		}
		for link := range links {
			if fi, err := os.Lstat(filepath.Join(root, link)); err != nil || fi.Mode()&fs.ModeSymlink == 0 {
				t.Fatalf("key %q removed the link %s: %v", key, link, err)
			}
		}
		for _, name := range inside {
			if name != key && !fileExists(t, filepath.Join(root, name)) {
				t.Fatalf("key %q removed %s", key, name)
			}
		}
		if fi, err := os.Lstat(filepath.Join(root, "sub")); err != nil || !fi.IsDir() {
			t.Fatalf("key %q removed the folder sub: %v", key, err)
		}
		for i, r := range res {
			if (r.Err == nil) == (r.Outcome == 0) {
				t.Errorf("key %q: removal %d: %+v: want an Outcome or an error", key, i, r)
			}
		}
		if res[1].Outcome == Removed && ValidateKey(key) != nil {
			t.Errorf("key %q refused by ValidateKey was removed", key)
		}
	})
}

// BenchmarkLocalRemove removes 1000 files in 4 folders per iteration, through
// Local.Remove (in one call, then a key per call) and, as a baseline, with
// os.Remove of each path.
func BenchmarkLocalRemove(b *testing.B) {
	const files, folders = 1000, 4
	keys := make([]string, files)
	for i := range keys {
		keys[i] = fmt.Sprintf("forum/attachments/2025/10/%02d/leaf-%04d.jpg", i*folders/files, i)
	}
	root := b.TempDir()
	create := func(b *testing.B) {
		b.StopTimer()
		defer b.StartTimer()
		for _, key := range keys {
			if err := writeFile(filepath.Join(root, key), nil); err != nil {
				b.Fatal(err)
			}
		}
	}
	report := func(b *testing.B) {
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*files), "ns/file")
	}
	b.Run("Local.Remove", func(b *testing.B) {
		l, err := NewLocal(root)
		if err != nil {
			b.Fatal(err)
		}
		defer l.Close()
		rs := removals(queuedLater(), keys...)
		for range b.N {
			create(b)
			for i, res := range l.Remove(b.Context(), rs) {
				if res.Outcome != Removed {
					b.Fatalf("%s: %+v", keys[i], res)
				}
			}
		}
		report(b)
	})
	// A key per call: the folder is opened for every key, as for keys
	// spread over many folders.
	b.Run("Local.Remove/key-per-call", func(b *testing.B) {
		l, err := NewLocal(root)
		if err != nil {
			b.Fatal(err)
		}
		defer l.Close()
		rs := removals(queuedLater(), keys...)
		for range b.N {
			create(b)
			for i := range rs {
				if res := l.Remove(b.Context(), rs[i:i+1])[0]; res.Outcome != Removed {
					b.Fatalf("%s: %+v", keys[i], res)
				}
			}
		}
		report(b)
	})
	b.Run("os.Remove", func(b *testing.B) {
		for range b.N {
			create(b)
			for _, key := range keys {
				if err := os.Remove(filepath.Join(root, key)); err != nil {
					b.Fatal(err)
				}
			}
		}
		report(b)
	})
}
