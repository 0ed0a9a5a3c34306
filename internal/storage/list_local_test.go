//go:build linux

package storage

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// listSetup returns a Local over dir/root with opts, and root; dir stands
// for everything outside it.
func listSetup(t *testing.T, opts ...Option) (l *Local, root string) {
	t.Helper()
	root = filepath.Join(t.TempDir(), "root")
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
	return l, root
}

func TestLocalList(t *testing.T) {
	runListSuite(t, func(t *testing.T) *fixture {
		l, root := listSetup(t)
		return &fixture{
			store: l,
			put:   func(key string, data []byte) error { return writeFile(filepath.Join(root, key), data) },
		}
	})
}

// refusals lists everything under prefix and returns the keys listed and,
// by key, why each refused one was.
func refusals(t *testing.T, l *Local, opts ListOptions) (keys []string, refused map[string]error) {
	t.Helper()
	refused = make(map[string]error)
	for _, o := range listAll(t, l, opts) {
		keys = append(keys, o.Key)
		if o.Refused != nil {
			refused[o.Key] = o.Refused
		}
	}
	return keys, refused
}

// Links are listed as refused and never followed, wherever they point: a
// link to a folder outside the root must not list the files there, a link
// to a folder inside must not list them twice.
func TestLocalListRefusesLinks(t *testing.T) {
	l, root := listSetup(t)
	outside := filepath.Join(filepath.Dir(root), "outside")
	mustWrite(t, filepath.Join(outside, "secret.jpg"))
	mustWrite(t, filepath.Join(root, "real", "f.jpg"))
	mustSymlink(t, outside, filepath.Join(root, "out"))
	mustSymlink(t, filepath.Join(outside, "secret.jpg"), filepath.Join(root, "real", "secret.jpg"))
	if err := os.Mkdir(filepath.Join(root, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	mustSymlink(t, "../real", filepath.Join(root, "sub", "alias"))
	mustSymlink(t, "nowhere", filepath.Join(root, "dangling"))
	for _, info := range []bool{false, true} {
		keys, refused := refusals(t, l, ListOptions{Info: info})
		if want := []string{"dangling", "out", "real/f.jpg", "real/secret.jpg", "sub/alias"}; !slices.Equal(keys, want) {
			t.Errorf("Info %v: listed %q, want %q", info, keys, want)
		}
		for _, key := range []string{"dangling", "out", "real/secret.jpg", "sub/alias"} {
			want := fmt.Sprintf("unsafe storage key %q: is a symbolic link", key)
			if err := refused[key]; !errors.Is(err, ErrUnsafeKey) || err.Error() != want {
				t.Errorf("Info %v: %q refused with %v, want %q", info, key, err, want)
			}
		}
		if err := refused["real/f.jpg"]; err != nil {
			t.Errorf("real/f.jpg refused: %v", err)
		}
	}
	// A name prefix matching a link lists the link, refused.
	if keys, refused := refusals(t, l, ListOptions{Prefix: "ou"}); !slices.Equal(keys, []string{"out"}) || refused["out"] == nil {
		t.Errorf("prefix ou: listed %q, refused %v", keys, refused)
	}
}

// A link on the prefix's own folder path is an error: the caller asked for
// a folder that is not where it says.
func TestLocalListLinkOnPrefixPath(t *testing.T) {
	l, root := listSetup(t)
	mustWrite(t, filepath.Join(root, "real", "f.jpg"))
	mustWrite(t, filepath.Join(root, "real", "deep", "g.jpg"))
	mustSymlink(t, "real", filepath.Join(root, "alias"))
	mustSymlink(t, "../real/deep", filepath.Join(root, "real", "down"))
	for _, prefix := range []string{"alias/", "alias/f", "alias/deep/", "real/down/", "real/down/g"} {
		err := l.List(t.Context(), ListOptions{Prefix: prefix}, func(o Object) error {
			return fmt.Errorf("listed %q", o.Key)
		})
		if want := fmt.Sprintf("unsafe storage key %q: passes through a symbolic link", prefix); !errors.Is(err, ErrUnsafeKey) || err.Error() != want {
			t.Errorf("List(prefix %q) = %v, want %q", prefix, err, want)
		}
		if err := l.CheckList(t.Context(), prefix); !errors.Is(err, ErrUnsafeKey) {
			t.Errorf("CheckList(%q) = %v, want ErrUnsafeKey", prefix, err)
		}
	}
}

// Devices, sockets and fifos, and names no key can have, are listed as
// refused; a folder so named is listed once and not entered.
func TestLocalListRefusesOddEntries(t *testing.T) {
	l, root := listSetup(t)
	for name, mode := range map[string]uint32{"fifo": unix.S_IFIFO, "sock": unix.S_IFSOCK} {
		if err := unix.Mknod(filepath.Join(root, name), mode|0o644, 0); err != nil {
			t.Fatal(err)
		}
	}
	for _, key := range []string{"bad\\name.jpg", "bad\xff.jpg", "bad\\dir/x.jpg", "bad\\dir/y/z.jpg", "ok.jpg"} {
		mustWrite(t, filepath.Join(root, key))
	}
	for _, info := range []bool{false, true} {
		keys, refused := refusals(t, l, ListOptions{Info: info})
		if want := []string{"bad\\dir/", "bad\\name.jpg", "bad\xff.jpg", "fifo", "ok.jpg", "sock"}; !slices.Equal(keys, want) {
			t.Errorf("Info %v: listed %q, want %q", info, keys, want)
		}
		for key, want := range map[string]string{
			"fifo":          `"fifo": not a regular file (fifo)`,
			"sock":          `"sock": not a regular file (socket)`,
			"bad\\dir/":     `unsafe storage key "bad\\dir": contains a backslash`,
			"bad\\name.jpg": `unsafe storage key "bad\\name.jpg": contains a backslash`,
			"bad\xff.jpg":   `unsafe storage key "bad\xff.jpg": is not valid UTF-8`,
		} {
			if err := refused[key]; err == nil || err.Error() != want {
				t.Errorf("Info %v: %q refused with %v, want %q", info, key, err, want)
			}
		}
		if refused["ok.jpg"] != nil {
			t.Errorf("ok.jpg refused: %v", refused["ok.jpg"])
		}
	}
}

// Entries that change while the walk is in their folder: a folder replaced
// by a link is refused, not followed; a file replaced by a link is refused
// when Info looks at it; removed entries are not listed.
func TestLocalListEntriesChangingMeanwhile(t *testing.T) {
	l, root := listSetup(t)
	outside := filepath.Join(filepath.Dir(root), "outside")
	mustWrite(t, filepath.Join(outside, "secret.jpg"))
	for _, key := range []string{"a.jpg", "b.jpg", "c/f.jpg", "d/f.jpg", "e.jpg"} {
		mustWrite(t, filepath.Join(root, key))
	}
	var keys []string
	refused := make(map[string]error)
	err := l.List(t.Context(), ListOptions{Info: true}, func(o Object) error {
		keys = append(keys, o.Key)
		if o.Refused != nil {
			refused[o.Key] = o.Refused
		}
		if o.Key != "a.jpg" {
			return nil
		}
		// The root was read already: change what comes later.
		for _, step := range []error{
			os.Remove(filepath.Join(root, "b.jpg")),
			os.Symlink(filepath.Join(outside, "secret.jpg"), filepath.Join(root, "b.jpg")),
			os.RemoveAll(filepath.Join(root, "c")),
			os.Symlink(outside, filepath.Join(root, "c")),
			os.RemoveAll(filepath.Join(root, "d")),
			os.Remove(filepath.Join(root, "e.jpg")),
		} {
			if step != nil {
				return step
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"a.jpg", "b.jpg", "c/"}; !slices.Equal(keys, want) {
		t.Errorf("listed %q, want %q", keys, want)
	}
	for _, key := range []string{"b.jpg", "c/"} {
		if !errors.Is(refused[key], ErrUnsafeKey) {
			t.Errorf("%q refused with %v, want ErrUnsafeKey", key, refused[key])
		}
	}
}

// The order of a walk is the byte order of the full keys, where a folder
// sorts as its name with '/' appended: "a.b" < "a/x" < "a0".
func TestLocalListOrderAroundSlash(t *testing.T) {
	l, root := listSetup(t)
	keys := []string{"a0", "a.b", "a.c/d", "a/x0", "a/x/y", "a/x.jpg", "a-/b", "a!", "a\x01", "a/\x7f", "a/x/\x01"}
	for _, key := range keys {
		mustWrite(t, filepath.Join(root, key))
	}
	slices.Sort(keys)
	requireListed(t, l, ListOptions{}, keys)
}

// StartAfter skips whole subtrees unread, and a missing prefix folder reads
// nothing.
func TestLocalListSkipsSubtrees(t *testing.T) {
	var (
		mu      sync.Mutex
		folders int
	)
	l, root := listSetup(t, WithObserver(func(op string, _ time.Duration) {
		if op == OpList {
			mu.Lock()
			folders++
			mu.Unlock()
		}
	}))
	var keys []string
	for _, dir := range []string{"a", "b", "c"} {
		for _, sub := range []string{"x", "y"} {
			keys = append(keys, dir+"/"+sub+"/f.jpg")
		}
	}
	for _, key := range keys {
		mustWrite(t, filepath.Join(root, key))
	}
	for _, tc := range []struct {
		opts    ListOptions
		folders int // read: the prefix's, and those listed from
	}{
		{ListOptions{}, 1 + 3 + 6},
		{ListOptions{StartAfter: "c/"}, 1 + 1 + 2},
		{ListOptions{StartAfter: "b/y/f.jpg"}, 1 + 2 + 3},
		{ListOptions{StartAfter: "b/y/g"}, 1 + 2 + 3},
		{ListOptions{StartAfter: "c/y/f.jpg"}, 1 + 1 + 1},
		{ListOptions{Prefix: "b/", StartAfter: "b/x/g"}, 1 + 2},
		{ListOptions{Prefix: "b/y"}, 1 + 1},
		{ListOptions{Prefix: "d/"}, 0},
	} {
		folders = 0
		requireListed(t, l, tc.opts, selected(keys, tc.opts.Prefix, tc.opts.StartAfter))
		if folders != tc.folders {
			t.Errorf("List(%+v) read %d folders, want %d", tc.opts, folders, tc.folders)
		}
	}
}

// Only the folder on the way is entered between checks of ctx: a listing
// canceled in its first folder lists nothing of the next.
func TestLocalListChecksCtxBetweenFolders(t *testing.T) {
	l, root := listSetup(t)
	for _, key := range []string{"a/1", "a/2", "b/1"} {
		mustWrite(t, filepath.Join(root, key))
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var keys []string
	err := l.List(ctx, ListOptions{}, func(o Object) error {
		keys = append(keys, o.Key)
		cancel()
		return nil
	})
	if !errors.Is(err, context.Canceled) || !slices.Equal(keys, []string{"a/1", "a/2"}) {
		t.Errorf("List = %v after %q, want context.Canceled after a/1 and a/2", err, keys)
	}
}

func TestLocalListInfo(t *testing.T) {
	l, root := listSetup(t)
	mustWrite(t, filepath.Join(root, "f.jpg"))
	old := time.Date(2024, 2, 29, 12, 0, 7, 0, time.UTC)
	if err := os.Chtimes(filepath.Join(root, "f.jpg"), old, old); err != nil {
		t.Fatal(err)
	}
	if o := listAll(t, l, ListOptions{})[0]; o.Size != 0 || !o.ModTime.IsZero() {
		t.Errorf("without Info: %+v, want no size or time", o)
	}
	if o := listAll(t, l, ListOptions{Info: true})[0]; o.Size != int64(len("keep me")) || !o.ModTime.Equal(old) {
		t.Errorf("with Info: %+v, want size %d, modified %v", o, len("keep me"), old)
	}
}

// A folder that cannot be read is an error, for the prefix (CheckList and
// List) and inside the walk: never taken for an empty folder.
func TestLocalListUnreadableFolderIsAnError(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root reads any folder")
	}
	l, root := listSetup(t)
	mustWrite(t, filepath.Join(root, "locked", "f.jpg"))
	if err := os.Chmod(filepath.Join(root, "locked"), 0o311); err != nil { // searchable, not readable
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(filepath.Join(root, "locked"), 0o755) })
	if err := l.CheckList(t.Context(), "locked/"); !errors.Is(err, fs.ErrPermission) {
		t.Errorf("CheckList = %v, want permission denied", err)
	}
	for _, prefix := range []string{"locked/", ""} {
		err := l.List(t.Context(), ListOptions{Prefix: prefix}, func(Object) error { return nil })
		if !errors.Is(err, fs.ErrPermission) || !strings.Contains(err.Error(), `"locked/"`) {
			t.Errorf("List(prefix %q) = %v, want permission denied naming the folder", prefix, err)
		}
	}
}

// BenchmarkLocalList lists 100,000 files in 1000 folders, through List
// (with and without Info) and, as the baseline, with find | sort.
func BenchmarkLocalList(b *testing.B) {
	const folders, perFolder = 1000, 100
	root := b.TempDir()
	for i := range folders {
		dir := filepath.Join(root, "forum", "attachments", fmt.Sprintf("%04d", i))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			b.Fatal(err)
		}
		for j := range perFolder {
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("leaf-%03d.jpg", j)), nil, 0o644); err != nil {
				b.Fatal(err)
			}
		}
	}
	report := func(b *testing.B) {
		b.ReportMetric(float64(b.N*folders*perFolder)/b.Elapsed().Seconds(), "files/s")
	}
	for _, info := range []bool{false, true} {
		b.Run(fmt.Sprintf("List/Info=%v", info), func(b *testing.B) {
			l, err := NewLocal(root)
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			for range b.N {
				n := 0
				if err := l.List(b.Context(), ListOptions{Info: info}, func(Object) error {
					n++
					return nil
				}); err != nil || n != folders*perFolder {
					b.Fatalf("listed %d files: %v", n, err)
				}
			}
			report(b)
		})
	}
	b.Run("find|sort", func(b *testing.B) {
		for range b.N {
			cmd := exec.Command("sh", "-c", "find . -type f | LC_ALL=C sort >/dev/null")
			cmd.Dir = root
			if out, err := cmd.CombinedOutput(); err != nil {
				b.Fatalf("%v: %s", err, out)
			}
		}
		report(b)
	})
}
