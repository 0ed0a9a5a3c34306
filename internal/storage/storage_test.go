package storage

import (
	"context"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// store is what package reconciler asks of a backend.
type store interface {
	Check(ctx context.Context, keys []string) []error
	Stat(ctx context.Context, keys []string) []FileInfo
	Remove(ctx context.Context, removals []Removal) []Result
	Close() error
}

var (
	_ store = (*Local)(nil)
	_ store = (*S3)(nil)
)

func TestValidateKey(t *testing.T) {
	good := []string{
		"forum/attachments/2025/10/04/leaf.jpg",
		"leaf.jpg",
		"a..b/c...jpg",
		".hidden",
		"..jpg",
		" spaced name .jpg ",
		"ünïcødé/写真.png",
		"tab\there",
		"C:/x", // only a drive letter on Windows, which we do not run on
	}
	for _, key := range good {
		if err := ValidateKey(key); err != nil {
			t.Errorf("ValidateKey(%q) = %v, want nil", key, err)
		}
	}

	bad := map[string]string{
		"":            "is empty",
		"a\x00b":      "NUL",
		"a\xffb.jpg":  "UTF-8",
		`a\..\..\x`:   "backslash",
		`a\b`:         "backslash",
		"/etc/passwd": "absolute",
		"//x":         "absolute",
		"..":          `".."`,
		"../x":        `".."`,
		"a/../../b":   `".."`,
		"a/../b":      `".."`,
		"a/..":        `".."`,
		".":           "not a clean path",
		"./a":         "not a clean path",
		"a/./b":       "not a clean path",
		"a//b":        "not a clean path",
		"a/":          "not a clean path",
	}
	for key, why := range bad {
		err := ValidateKey(key)
		if !errors.Is(err, ErrUnsafeKey) {
			t.Errorf("ValidateKey(%q) = %v, want ErrUnsafeKey", key, err)
			continue
		}
		if !strings.Contains(err.Error(), why) || !strings.Contains(err.Error(), fmt.Sprintf("%q", key)) {
			t.Errorf("ValidateKey(%q) = %q, want it to name the key and say %q", key, err, why)
		}
	}

	if got, want := ValidateKey("../x").Error(), `unsafe storage key "../x": has a ".." element`; got != want {
		t.Errorf("error = %q, want %q", got, want)
	}
}

// fixture is a backend under test and a view of its storage that does not
// go through it.
type fixture struct {
	store store

	put    func(key string, data []byte) error // safe to call concurrently
	exists func(t *testing.T, key string) bool
	read   func(t *testing.T, key string) string

	// putAbove and existsAbove reach one level above the root or prefix,
	// where an escaping key would land; nil if there is no such level.
	putAbove    func(t *testing.T, name string)
	existsAbove func(t *testing.T, name string) bool

	// requests returns the number of listings, and of keys in each bulk
	// delete request, sent since the last call; nil for a backend that
	// sends no requests.
	requests func() (lists int, deletes []int)
}

func (f *fixture) takeRequests() (lists int, deletes []int) {
	if f.requests == nil {
		return 0, nil
	}
	return f.requests()
}

func (f *fixture) mustPut(t *testing.T, keys ...string) {
	t.Helper()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
		sem  = make(chan struct{}, 16)
	)
	for _, key := range keys {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			if err := f.put(key, []byte("data of "+key)); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("put %q: %w", key, err))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
}

// queuedLater is a QueuedAt long after every put of a test: a removal
// queued well after its file was written, whatever the precision of the
// backend's times.
func queuedLater() time.Time { return time.Now().Add(time.Hour) }

// removals returns a Removal of each key, queued at queuedAt.
func removals(queuedAt time.Time, keys ...string) []Removal {
	rs := make([]Removal, len(keys))
	for i, key := range keys {
		rs[i] = Removal{Key: key, QueuedAt: queuedAt}
	}
	return rs
}

// runStoreSuite runs the tests every backend must pass.
func runStoreSuite(t *testing.T, newFixture func(t *testing.T) *fixture) {
	t.Run("RemoveExisting", func(t *testing.T) {
		f := newFixture(t)
		// "\x01" cannot travel in XML: minio-go sends that key as a single DELETE.
		keys := []string{"forum/attachments/2025/10/04/leaf.jpg", "top.txt", " spaced .jpg", "ctl\x01.jpg", "写真/é.png"}
		f.mustPut(t, keys...)
		requireErrs(t, keys, f.store.Check(t.Context(), keys), nil, nil, nil, nil, nil)
		for i, info := range f.store.Stat(t.Context(), keys) {
			if info.Err != nil || !info.Exists {
				t.Errorf("Stat(%q) = %+v, want it to exist", keys[i], info)
			}
		}
		requireResults(t, keys, f.store.Remove(t.Context(), removals(queuedLater(), keys...)), Removed, Removed, Removed, Removed, Removed)
		for i, info := range f.store.Stat(t.Context(), keys) {
			if info.Err != nil || info.Exists {
				t.Errorf("Stat(%q) after Remove = %+v, want it gone", keys[i], info)
			}
			if f.exists(t, keys[i]) {
				t.Errorf("%q still exists", keys[i])
			}
		}
	})

	t.Run("MissingIsNotRemoved", func(t *testing.T) {
		f := newFixture(t)
		keys := []string{"never/was.jpg", "nor.jpg"}
		requireErrs(t, keys, f.store.Check(t.Context(), keys), nil, nil)
		requireResults(t, keys, f.store.Remove(t.Context(), removals(queuedLater(), keys...)), Missing, Missing)
		// Removal can be retried: the second time the file is Missing.
		f.mustPut(t, "once.jpg")
		requireResults(t, []string{"once.jpg"}, f.store.Remove(t.Context(), removals(queuedLater(), "once.jpg")), Removed)
		requireResults(t, []string{"once.jpg"}, f.store.Remove(t.Context(), removals(queuedLater(), "once.jpg")), Missing)
	})

	t.Run("MixedBatch", func(t *testing.T) {
		f := newFixture(t)
		f.mustPut(t, "a/1.jpg", "a/2.jpg", "keep.jpg")
		keys := []string{"a/1.jpg", "missing.jpg", "../keep.jpg", "a/2.jpg", "a/1.jpg", ""}
		requireResults(t, keys, f.store.Remove(t.Context(), removals(queuedLater(), keys...)),
			Removed, Missing, ErrUnsafeKey, Removed, Missing, ErrUnsafeKey)
		for key, want := range map[string]bool{"a/1.jpg": false, "a/2.jpg": false, "keep.jpg": true} {
			if got := f.exists(t, key); got != want {
				t.Errorf("exists(%q) = %v, want %v", key, got, want)
			}
		}
	})

	t.Run("Stat", func(t *testing.T) {
		f := newFixture(t)
		before := time.Now()
		f.mustPut(t, "s/a.jpg", "top.jpg")
		after := time.Now()
		keys := []string{"s/a.jpg", "s/missing.jpg", "top.jpg", "../top.jpg", "no/such/dir.jpg", "s/a.jpg"}
		infos := f.store.Stat(t.Context(), keys)
		if len(infos) != len(keys) {
			t.Fatalf("got %d infos for %d keys", len(infos), len(keys))
		}
		for i, want := range []bool{true, false, true, false, false, true} {
			info := infos[i]
			switch {
			case keys[i] == "../top.jpg":
				if !errors.Is(info.Err, ErrUnsafeKey) || info.Exists {
					t.Errorf("Stat(%q) = %+v, want ErrUnsafeKey", keys[i], info)
				}
			case info.Err != nil || info.Exists != want:
				t.Errorf("Stat(%q) = %+v, want Exists %v", keys[i], info, want)
			case want && (info.ModTime.Before(before.Add(-time.Second)) || info.ModTime.After(after.Add(time.Second))):
				t.Errorf("Stat(%q).ModTime = %v, want it between %v and %v", keys[i], info.ModTime, before, after)
			case !want && !info.ModTime.IsZero():
				t.Errorf("Stat(%q).ModTime = %v for a missing file", keys[i], info.ModTime)
			}
		}
	})

	t.Run("UnsafeKeysTouchNothing", func(t *testing.T) {
		f := newFixture(t)
		// Decoys where a lax backend would land: the name after cleaning,
		// after cutting at NUL, after replacing the bad UTF-8 byte.
		decoys := []string{"x", "b", "a", "etc/passwd", "c/x", "a\uFFFDb"}
		f.mustPut(t, decoys...)
		if f.putAbove != nil {
			f.putAbove(t, "x")
			f.putAbove(t, "b")
		}
		f.takeRequests()
		unsafe := []string{"../x", "/etc/passwd", "a/../../b", "a\x00b", "", "a\xffb", `..\x`, "c/../x", "./x", "c//x", "c/x/"}
		want := make([]any, len(unsafe))
		for i := range want {
			want[i] = ErrUnsafeKey
		}
		requireErrs(t, unsafe, f.store.Check(t.Context(), unsafe), errsOf(want)...)
		for i, info := range f.store.Stat(t.Context(), unsafe) {
			if !errors.Is(info.Err, ErrUnsafeKey) {
				t.Errorf("Stat(%q) = %+v, want ErrUnsafeKey", unsafe[i], info)
			}
		}
		requireResults(t, unsafe, f.store.Remove(t.Context(), removals(queuedLater(), unsafe...)), want...)
		for _, key := range decoys {
			if !f.exists(t, key) {
				t.Errorf("decoy %q was removed", key)
			}
		}
		if f.existsAbove != nil {
			for _, name := range []string{"x", "b"} {
				if !f.existsAbove(t, name) {
					t.Errorf("%q above the root was removed", name)
				}
			}
		}
		if lists, deletes := f.takeRequests(); lists != 0 || len(deletes) != 0 {
			t.Errorf("sent %d listings and delete requests %v for unsafe keys only", lists, deletes)
		}
	})

	t.Run("SameNameAboveRootUntouched", func(t *testing.T) {
		f := newFixture(t)
		if f.putAbove == nil {
			return // nothing above: the whole bucket is the store
		}
		f.putAbove(t, "same.jpg")
		f.mustPut(t, "same.jpg")
		requireResults(t, []string{"same.jpg"}, f.store.Remove(t.Context(), removals(queuedLater(), "same.jpg")), Removed)
		if f.exists(t, "same.jpg") {
			t.Error("same.jpg still exists in the store")
		}
		if !f.existsAbove(t, "same.jpg") {
			t.Error("same.jpg above the root was removed")
		}
	})

	t.Run("ManyKeys", func(t *testing.T) {
		f := newFixture(t)
		var keys, present []string
		var want []any
		for i := range 2100 {
			key := fmt.Sprintf("bulk/%02d/%04d.jpg", i%7, i)
			keys = append(keys, key)
			if i%50 == 0 { // every 50th is missing
				want = append(want, Missing)
				continue
			}
			present = append(present, key)
			want = append(want, Removed)
		}
		f.mustPut(t, present...)
		f.takeRequests() // forget the puts
		requireResults(t, keys, f.store.Remove(t.Context(), removals(queuedLater(), keys...)), want...)
		for _, key := range []string{keys[1], keys[999], keys[1001], keys[2099]} {
			if f.exists(t, key) {
				t.Errorf("%q still exists", key)
			}
		}
		if f.requests != nil {
			lists, deletes := f.takeRequests()
			sum := 0
			for _, n := range deletes {
				sum += n
				if n > maxDeleteKeys {
					t.Errorf("a delete request carried %d keys", n)
				}
			}
			// Three rounds of at most 1000 keys, each deleted by at most
			// maxListings requests at once.
			if len(deletes) > 3*maxListings || sum != len(present) {
				t.Errorf("delete requests carried %v keys, want at most %d requests, %d keys in all", deletes, 3*maxListings, len(present))
			}
			// Three rounds of at most 1000 keys, each over the 7 folders
			// (about 2000 objects): a listing per folder would be 21;
			// ranges need a first page, then at most maxListings runs of
			// a page or two.
			if lists > 3*(1+maxListings) {
				t.Errorf("sent %d listings, want at most %d", lists, 3*(1+maxListings))
			}
		}
	})

	t.Run("CancelledContext", func(t *testing.T) {
		f := newFixture(t)
		keys := []string{"c/1.jpg", "c/2.jpg", "../x", "c/3.jpg"}
		f.mustPut(t, "c/1.jpg", "c/2.jpg", "c/3.jpg")
		f.takeRequests()
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		want := []any{context.Canceled, context.Canceled, ErrUnsafeKey, context.Canceled}
		requireResults(t, keys, f.store.Remove(ctx, removals(queuedLater(), keys...)), want...)
		infos := f.store.Stat(ctx, keys)
		for i, w := range want {
			if !errors.Is(infos[i].Err, w.(error)) {
				t.Errorf("Stat(%q) = %+v, want %v", keys[i], infos[i], w)
			}
		}
		for _, key := range []string{"c/1.jpg", "c/2.jpg", "c/3.jpg"} {
			if !f.exists(t, key) {
				t.Errorf("%q was removed after cancel", key)
			}
		}
		if lists, deletes := f.takeRequests(); lists != 0 || len(deletes) != 0 {
			t.Errorf("sent %d listings and delete requests %v after cancel", lists, deletes)
		}
	})

	t.Run("ZeroQueuedAtKeepsTheFile", func(t *testing.T) {
		f := newFixture(t)
		f.mustPut(t, "z/a.jpg", "z/b.jpg")
		rs := []Removal{{Key: "z/a.jpg"}, {Key: "z/b.jpg", QueuedAt: queuedLater()}, {Key: "../z"}}
		keys := []string{"z/a.jpg", "z/b.jpg", "../z"}
		res := f.store.Remove(t.Context(), rs)
		requireResults(t, keys, res, errNoQueuedAt, Removed, ErrUnsafeKey)
		if msg := res[0].Err.Error(); !strings.Contains(msg, "programming error") || !strings.Contains(msg, `"z/a.jpg"`) {
			t.Errorf("error %q should name the key and say it is a programming error", msg)
		}
		if !f.exists(t, "z/a.jpg") {
			t.Error("z/a.jpg was removed without a QueuedAt")
		}
	})

	t.Run("Rewritten", func(t *testing.T) {
		t.Parallel() // it waits a second
		f := newFixture(t)
		f.mustPut(t, "day/old.jpg", "day/new.jpg", "day/reused.jpg")
		// Both backends keep a file modified less than a second before its
		// removal was queued (Local) or in the same second (S3): queue the
		// removals a second after the puts.
		time.Sleep(time.Second + 10*time.Millisecond)
		queued := time.Now()
		// The names are reused by new uploads after their removal was queued.
		f.mustPut(t, "day/new.jpg", "day/reused.jpg")
		keys := []string{"day/old.jpg", "day/new.jpg", "day/reused.jpg", "day/reused.jpg"}
		rs := []Removal{
			{Key: "day/old.jpg", QueuedAt: queued},
			{Key: "day/new.jpg", QueuedAt: queued},
			// Twice, decided in order: first as queued before the upload,
			// then as queued after it (by a later purge of the new row).
			{Key: "day/reused.jpg", QueuedAt: queued},
			{Key: "day/reused.jpg", QueuedAt: queuedLater()},
		}
		res := f.store.Remove(t.Context(), rs)
		requireResults(t, keys, res, Removed, Rewritten, Rewritten, Removed)
		for _, i := range []int{1, 2} {
			if mt := res[i].ModTime; mt.Before(queued.Add(-time.Second)) || mt.After(time.Now().Add(time.Second)) {
				t.Errorf("%q: ModTime %v, want about %v", keys[i], mt, queued)
			}
		}
		for key, want := range map[string]bool{"day/old.jpg": false, "day/new.jpg": true, "day/reused.jpg": false} {
			if got := f.exists(t, key); got != want {
				t.Errorf("exists(%q) = %v, want %v", key, got, want)
			}
		}

		// A removal queued seconds before the last write, as one waiting
		// in the outbox while the name was reused, keeps the file too.
		keys = []string{"day/new.jpg"}
		requireResults(t, keys, f.store.Remove(t.Context(), removals(time.Now().Add(-3*time.Second), keys...)), Rewritten)
		if !f.exists(t, "day/new.jpg") {
			t.Error("day/new.jpg was removed")
		}
	})
}

// errAny stands for any non-nil error in requireErrs and requireResults.
var errAny = errors.New("any error")

// errsOf returns want, of errors, as errors.
func errsOf(want []any) []error {
	errs := make([]error, len(want))
	for i, w := range want {
		errs[i] = w.(error)
	}
	return errs
}

// requireErrs checks that errs is aligned with keys and that each error is
// nil where want is nil, not nil where want is errAny, and matches want
// with errors.Is otherwise.
func requireErrs(t *testing.T, keys []string, errs []error, want ...error) {
	t.Helper()
	if len(errs) != len(keys) {
		t.Fatalf("got %d errors for %d keys", len(errs), len(keys))
	}
	bad := 0
	for i, err := range errs {
		if !errMatches(err, want[i]) {
			if bad++; bad <= 10 {
				t.Errorf("key %q: error %v, want %v", keys[i], err, want[i])
			}
		}
	}
	if bad > 10 {
		t.Errorf("... %d keys wrong in all", bad)
	}
}

func errMatches(err, want error) bool {
	switch want {
	case nil:
		return err == nil
	case errAny:
		return err != nil
	}
	return errors.Is(err, want)
}

// requireResults checks that results is aligned with keys and that each
// result has the Outcome wanted, without error, or an error that matches
// the error wanted as in requireErrs.
func requireResults(t *testing.T, keys []string, results []Result, want ...any) {
	t.Helper()
	if len(results) != len(keys) || len(want) != len(keys) {
		t.Fatalf("got %d results and %d wanted for %d keys", len(results), len(want), len(keys))
	}
	bad := 0
	for i, res := range results {
		var ok bool
		switch w := want[i].(type) {
		case Outcome:
			ok = res.Err == nil && res.Outcome == w && (w == Rewritten) != res.ModTime.IsZero()
		case error:
			ok = res.Err != nil && res.Outcome == 0 && errMatches(res.Err, w)
		default:
			t.Fatalf("want[%d] = %v: neither an Outcome nor an error", i, w)
		}
		if !ok {
			if bad++; bad <= 10 {
				t.Errorf("key %q: %+v, want %v", keys[i], res, want[i])
			}
		}
	}
	if bad > 10 {
		t.Errorf("... %d keys wrong in all", bad)
	}
}

// FuzzValidateKey checks that ValidateKey never panics, refuses with
// ErrUnsafeKey, and accepts only clean relative slash paths.
func FuzzValidateKey(f *testing.F) {
	for _, key := range []string{
		"forum/attachments/2025/10/04/leaf.jpg", "..jpg", "a..b/c", " x ", "写真/é.png",
		"", "a\x00b", "a\xffb", `a\b`, "/x", "..", "a/../b", "./a", "a//b", "a/", ".",
	} {
		f.Add(key)
	}
	f.Fuzz(func(t *testing.T, key string) {
		err := ValidateKey(key)
		if err != nil {
			if !errors.Is(err, ErrUnsafeKey) {
				t.Fatalf("ValidateKey(%q) = %v, want ErrUnsafeKey", key, err)
			}
			return
		}
		switch {
		case path.Clean(key) != key, key == ".":
			t.Fatalf("accepted %q, which is not a clean path", key)
		case path.IsAbs(key):
			t.Fatalf("accepted %q, which is absolute", key)
		case !utf8.ValidString(key):
			t.Fatalf("accepted %q, which is not valid UTF-8", key)
		case strings.ContainsAny(key, "\x00\\"):
			t.Fatalf("accepted %q, which has a NUL or a backslash", key)
		case slices.Contains(strings.Split(key, "/"), ".."):
			t.Fatalf("accepted %q, which has a \"..\" element", key)
		}
	})
}
