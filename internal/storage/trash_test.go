package storage

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"
)

// trashStore is a backend with a trash.
type trashStore interface {
	store
	EmptyTrash(ctx context.Context, before time.Time) (int, error)
	Untrash(ctx context.Context, keys []string) []error
}

var (
	_ trashStore = (*Local)(nil)
	_ trashStore = (*S3)(nil)
)

// clock is a settable clock for the trash's buckets.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

// at is a time of 30 November 2026, UTC.
func at(hour, minute int) time.Time {
	return time.Date(2026, 11, 30, hour, minute, 0, 0, time.UTC)
}

// runTrashSuite runs the trash's tests on a backend; newFixture gives it
// the options.
func runTrashSuite(t *testing.T, newFixture func(t *testing.T, opts ...Option) *fixture) {
	withTrash := func(t *testing.T) (*fixture, trashStore, *clock) {
		c := &clock{t: at(1, 23)}
		f := newFixture(t, WithTrash(".trash/", c.now))
		return f, f.store.(trashStore), c
	}

	t.Run("RemoveMovesIntoTheTrash", func(t *testing.T) {
		f, st, _ := withTrash(t)
		keys := []string{"forum/attachments/2025/10/04/leaf.jpg", "top.jpg", " spaced .jpg", "写真/é.png"}
		f.mustPut(t, keys...)
		requireResults(t, keys, st.Remove(t.Context(), removals(queuedLater(), keys...)), Removed, Removed, Removed, Removed)
		for i, info := range st.Stat(t.Context(), keys) {
			key := keys[i]
			if info.Err != nil || info.Exists || f.exists(t, key) {
				t.Errorf("%q: Stat %+v after Remove, want it gone", key, info)
			}
			if got := f.read(t, ".trash/2026-11-30T01/"+key); got != "data of "+key {
				t.Errorf("%q in the trash holds %q", key, got)
			}
		}
	})

	t.Run("DecisionsUnchanged", func(t *testing.T) {
		f, st, _ := withTrash(t)
		f.mustPut(t, "d/new.jpg", "d/nodate.jpg")
		keys := []string{"d/missing.jpg", "d/new.jpg", "../d/new.jpg", "d/nodate.jpg", "d/missing.jpg"}
		rs := removals(time.Now().Add(-time.Hour), keys...) // queued before the files were written
		rs[3].QueuedAt = time.Time{}
		requireResults(t, keys, st.Remove(t.Context(), rs), Missing, Rewritten, ErrUnsafeKey, errNoQueuedAt, Missing)
		for _, key := range []string{"d/new.jpg", "d/nodate.jpg"} {
			if !f.exists(t, key) {
				t.Errorf("%q was removed", key)
			}
		}
		for _, key := range []string{"d/new.jpg", "d/nodate.jpg", "d/missing.jpg"} {
			if f.exists(t, ".trash/2026-11-30T01/"+key) {
				t.Errorf("%q is in the trash", key)
			}
		}
	})

	t.Run("TrashKeysRefused", func(t *testing.T) {
		f, st, _ := withTrash(t)
		f.mustPut(t, ".trash/2026-11-30T01/x.jpg", ".trashy/x.jpg")
		keys := []string{".trash/2026-11-30T01/x.jpg", ".trash", ".trash/x"}
		want := []any{ErrUnsafeKey, ErrUnsafeKey, ErrUnsafeKey}
		requireErrs(t, keys, st.Check(t.Context(), keys), errsOf(want)...)
		for i, info := range st.Stat(t.Context(), keys) {
			if !errors.Is(info.Err, ErrUnsafeKey) {
				t.Errorf("Stat(%q) = %+v, want ErrUnsafeKey", keys[i], info)
			}
		}
		requireResults(t, keys, st.Remove(t.Context(), removals(queuedLater(), keys...)), want...)
		requireErrs(t, keys, st.Untrash(t.Context(), keys), errsOf(want)...)
		if !f.exists(t, ".trash/2026-11-30T01/x.jpg") {
			t.Error("a file in the trash was removed")
		}
		// Only the folder itself is the trash.
		requireResults(t, []string{".trashy/x.jpg"}, st.Remove(t.Context(), removals(queuedLater(), ".trashy/x.jpg")), Removed)
	})

	t.Run("SameKeyTwiceInAnHour", func(t *testing.T) {
		f, st, _ := withTrash(t)
		key := []string{"k/a.jpg"}
		for _, data := range []string{"first", "second", "third"} {
			if err := f.put(key[0], []byte(data)); err != nil {
				t.Fatal(err)
			}
			requireResults(t, key, st.Remove(t.Context(), removals(queuedLater(), key...)), Removed)
		}
		for bucket, want := range map[string]string{"2026-11-30T01": "first", "2026-11-30T01.1": "second", "2026-11-30T01.2": "third"} {
			if got := f.read(t, ".trash/"+bucket+"/k/a.jpg"); got != want {
				t.Errorf("bucket %s holds %q, want %q", bucket, got, want)
			}
		}
		// The newest copy comes back.
		requireErrs(t, key, st.Untrash(t.Context(), key), nil)
		if got := f.read(t, "k/a.jpg"); got != "third" {
			t.Errorf("untrashed %q, want the newest, %q", got, "third")
		}
		if f.exists(t, ".trash/2026-11-30T01.2/k/a.jpg") {
			t.Error("the untrashed copy is still in the trash")
		}
	})

	t.Run("EmptyTrash", func(t *testing.T) {
		f, st, c := withTrash(t)
		c.set(at(1, 10))
		f.mustPut(t, "e/old.jpg")
		requireResults(t, []string{"e/old.jpg"}, st.Remove(t.Context(), removals(queuedLater(), "e/old.jpg")), Removed)
		c.set(at(3, 10))
		f.mustPut(t, "e/new.jpg", "e/deep/er/new.jpg")
		keys := []string{"e/new.jpg", "e/deep/er/new.jpg"}
		requireResults(t, keys, st.Remove(t.Context(), removals(queuedLater(), keys...)), Removed, Removed)
		// Names that are no bucket are not the trash's own.
		foreign := []string{".trash/notabucket/x.jpg", ".trash/2026-11-30T01x/y.jpg", ".trash/2026-11-30T01.0/z.jpg", ".trash/loose.jpg"}
		f.mustPut(t, foreign...)

		empty := func(before time.Time, want int) {
			t.Helper()
			n, err := st.EmptyTrash(t.Context(), before)
			if err != nil || n != want {
				t.Fatalf("EmptyTrash(%v) = %d, %v; want %d", before, n, err, want)
			}
		}
		empty(at(1, 59), 0) // the bucket of 01:00 ends at 02:00
		empty(at(2, 30), 1)
		if f.exists(t, ".trash/2026-11-30T01/e/old.jpg") || !f.exists(t, ".trash/2026-11-30T03/e/new.jpg") {
			t.Fatal("emptied the wrong bucket")
		}
		empty(at(2, 30), 0)
		empty(at(4, 0), 2)
		for _, key := range keys {
			if f.exists(t, ".trash/2026-11-30T03/"+key) {
				t.Errorf("%q is still in the trash", key)
			}
		}
		for _, key := range foreign {
			if !f.exists(t, key) {
				t.Errorf("%q was removed", key)
			}
		}
	})

	t.Run("Untrash", func(t *testing.T) {
		f, st, c := withTrash(t)
		key := []string{"u/a.jpg"}
		c.set(at(1, 10))
		if err := f.put(key[0], []byte("v1")); err != nil {
			t.Fatal(err)
		}
		requireResults(t, key, st.Remove(t.Context(), removals(queuedLater(), key...)), Removed)
		c.set(at(2, 10))
		if err := f.put(key[0], []byte("v2")); err != nil {
			t.Fatal(err)
		}
		requireResults(t, key, st.Remove(t.Context(), removals(queuedLater(), key...)), Removed)

		keys := []string{"u/a.jpg", "u/none.jpg", "../u/a.jpg", ".trash/2026-11-30T01/u/a.jpg"}
		requireErrs(t, keys, st.Untrash(t.Context(), keys), nil, errNotInTrash, ErrUnsafeKey, ErrUnsafeKey)
		if got := f.read(t, "u/a.jpg"); got != "v2" {
			t.Fatalf("untrashed %q, want v2", got)
		}
		if f.exists(t, ".trash/2026-11-30T02/u/a.jpg") || !f.exists(t, ".trash/2026-11-30T01/u/a.jpg") {
			t.Fatal("the trash does not hold the older copy alone")
		}

		// A new upload at the key is never overwritten.
		if err := f.put(key[0], []byte("upload")); err != nil {
			t.Fatal(err)
		}
		requireErrs(t, key, st.Untrash(t.Context(), key), errTaken)
		if got := f.read(t, "u/a.jpg"); got != "upload" || !f.exists(t, ".trash/2026-11-30T01/u/a.jpg") {
			t.Fatalf("the key holds %q after a refused untrash", got)
		}

		// Removed again, the upload is the newest copy.
		requireResults(t, key, st.Remove(t.Context(), removals(queuedLater(), key...)), Removed)
		requireErrs(t, key, st.Untrash(t.Context(), key), nil)
		if got := f.read(t, "u/a.jpg"); got != "upload" {
			t.Errorf("untrashed %q, want the upload", got)
		}
	})

	t.Run("Off", func(t *testing.T) {
		f := newFixture(t)
		st := f.store.(trashStore)
		if n, err := st.EmptyTrash(t.Context(), at(23, 0)); !errors.Is(err, errNoTrash) || n != 0 {
			t.Errorf("EmptyTrash without a trash = %d, %v", n, err)
		}
		keys := []string{"a.jpg"}
		requireErrs(t, keys, st.Untrash(t.Context(), keys), errNoTrash)
		// Without a trash, its name is a key like any other.
		f.mustPut(t, ".trash/a.jpg")
		requireResults(t, []string{".trash/a.jpg"}, st.Remove(t.Context(), removals(queuedLater(), ".trash/a.jpg")), Removed)
	})
}

func TestS3FakeTrash(t *testing.T) {
	for _, prefix := range []string{"", "media/"} {
		t.Run("prefix="+prefix, func(t *testing.T) {
			runTrashSuite(t, func(t *testing.T, opts ...Option) *fixture { return s3Fixture(t, fakeS3(t, nil), prefix, opts...) })
		})
	}
}

func TestS3RealTrash(t *testing.T) {
	tg := realS3(t)
	for _, prefix := range []string{"", "media/"} {
		t.Run("prefix="+prefix, func(t *testing.T) {
			runTrashSuite(t, func(t *testing.T, opts ...Option) *fixture { return s3Fixture(t, tg, prefix, opts...) })
		})
	}
}

func TestTrashPrefixMustBeAFolder(t *testing.T) {
	for _, prefix := range []string{"", "/", "//", "/abs/", "../x/", "a//b/", "a/./b", "x\x00/"} {
		if _, err := checkTrash(&trash{dir: prefix}); !errors.Is(err, ErrMisconfigured) {
			t.Errorf("trash prefix %q: %v, want ErrMisconfigured", prefix, err)
		}
	}
	for prefix, dir := range map[string]string{".trash/": ".trash", ".trash": ".trash", "var/trash//": "var/trash"} {
		tr, err := checkTrash(&trash{dir: prefix})
		if err != nil || tr.dir != dir || tr.now == nil {
			t.Errorf("trash prefix %q: %+v, %v; want dir %q", prefix, tr, err, dir)
		}
	}
	if _, err := NewS3(t.Context(), S3Config{Endpoint: "127.0.0.1:1", Bucket: "b"}, WithTrash("../up", nil)); !errors.Is(err, ErrMisconfigured) {
		t.Errorf("NewS3 with a bad trash prefix: %v", err)
	}
}

func TestParseBucket(t *testing.T) {
	for name, want := range map[string]bucket{
		"2026-11-30T01":    {name: "2026-11-30T01", start: at(1, 0)},
		"2026-11-30T01.1":  {name: "2026-11-30T01.1", start: at(1, 0), seq: 1},
		"2026-11-30T23.12": {name: "2026-11-30T23.12", start: at(23, 0), seq: 12},
	} {
		if got, ok := parseBucket(name); !ok || got != want {
			t.Errorf("parseBucket(%q) = %+v, %v; want %+v", name, got, ok, want)
		}
	}
	for _, name := range []string{"", "2026-11-30", "2026-11-30T1", "2026-11-30T01.0", "2026-11-30T01.01", "2026-11-30T01.-1", "2026-11-30T01.x", "2026-11-30T24", "2026-11-30T01:00", "x2026-11-30T01"} {
		if b, ok := parseBucket(name); ok {
			t.Errorf("parseBucket(%q) = %+v, want no bucket", name, b)
		}
	}
	buckets := []bucket{newBucket(at(1, 0), 0), newBucket(at(2, 0), 0), newBucket(at(1, 0), 10), newBucket(at(1, 0), 2)}
	newestFirst(buckets)
	var names []string
	for _, b := range buckets {
		names = append(names, b.name)
	}
	if want := []string{"2026-11-30T02", "2026-11-30T01.10", "2026-11-30T01.2", "2026-11-30T01"}; !slices.Equal(names, want) {
		t.Errorf("newest first: %v, want %v", names, want)
	}
}

// An upload under the name while its object is copied into the trash is
// looked for again before the delete: it stays, counted as written again.
func TestS3TrashKeepsAnUploadDuringTheCopy(t *testing.T) {
	var f *fixture
	uploaded := false
	wrap := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			next.ServeHTTP(w, r)
			if r.Method == http.MethodPut && r.Header.Get("X-Amz-Copy-Source") != "" && !uploaded {
				uploaded = true
				if err := f.put("c/live.jpg", []byte("new upload")); err != nil {
					t.Error(err)
				}
			}
		})
	}
	c := &clock{t: at(1, 23)}
	f = s3Fixture(t, fakeS3(t, wrap), "", WithTrash(".trash/", c.now))
	f.mustPut(t, "c/live.jpg")
	time.Sleep(1100 * time.Millisecond)
	queued := time.Now()
	time.Sleep(1100 * time.Millisecond)
	res := f.store.Remove(t.Context(), removals(queued, "c/live.jpg"))
	if !uploaded || res[0].Outcome != Rewritten || !f.exists(t, "c/live.jpg") || f.read(t, "c/live.jpg") != "new upload" {
		t.Fatalf("result %+v, uploaded during the copy %v: the new upload must stay", res, uploaded)
	}
}
