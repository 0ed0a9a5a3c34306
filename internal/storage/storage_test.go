package storage

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// store is what package reconciler asks of a backend.
type store interface {
	Check(ctx context.Context, keys []string) []error
	Remove(ctx context.Context, keys []string) []error
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

	// putAbove and existsAbove reach one level above the root or prefix,
	// where an escaping key would land; nil if there is no such level.
	putAbove    func(t *testing.T, name string)
	existsAbove func(t *testing.T, name string) bool

	// batches returns the number of keys in each bulk delete request sent
	// since the last call; nil for a backend without bulk requests.
	batches func() []int
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

// runStoreSuite runs the tests every backend must pass.
func runStoreSuite(t *testing.T, newFixture func(t *testing.T) *fixture) {
	t.Run("RemoveExisting", func(t *testing.T) {
		f := newFixture(t)
		// "\x01" cannot travel in XML: minio-go sends that key as a single DELETE.
		keys := []string{"forum/attachments/2025/10/04/leaf.jpg", "top.txt", " spaced .jpg", "ctl\x01.jpg"}
		f.mustPut(t, keys...)
		for _, key := range keys {
			if err := f.store.Check(t.Context(), []string{key})[0]; err != nil {
				t.Errorf("Check(%q) = %v", key, err)
			}
		}
		requireErrs(t, keys, f.store.Remove(t.Context(), keys), nil, nil, nil, nil)
		for _, key := range keys {
			if f.exists(t, key) {
				t.Errorf("%q still exists", key)
			}
		}
	})

	t.Run("MissingCountsAsRemoved", func(t *testing.T) {
		f := newFixture(t)
		keys := []string{"never/was.jpg", "nor.jpg"}
		for _, key := range keys {
			if err := f.store.Check(t.Context(), []string{key})[0]; err != nil {
				t.Errorf("Check(%q) = %v", key, err)
			}
		}
		requireErrs(t, keys, f.store.Remove(t.Context(), keys), nil, nil)
		// And again: removal is idempotent.
		f.mustPut(t, "once.jpg")
		for range 2 {
			requireErrs(t, []string{"once.jpg"}, f.store.Remove(t.Context(), []string{"once.jpg"}), nil)
		}
	})

	t.Run("MixedBatch", func(t *testing.T) {
		f := newFixture(t)
		f.mustPut(t, "a/1.jpg", "a/2.jpg", "keep.jpg")
		keys := []string{"a/1.jpg", "missing.jpg", "../keep.jpg", "a/2.jpg", "a/1.jpg", ""}
		requireErrs(t, keys, f.store.Remove(t.Context(), keys), nil, nil, ErrUnsafeKey, nil, nil, ErrUnsafeKey)
		for key, want := range map[string]bool{"a/1.jpg": false, "a/2.jpg": false, "keep.jpg": true} {
			if got := f.exists(t, key); got != want {
				t.Errorf("exists(%q) = %v, want %v", key, got, want)
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
		unsafe := []string{"../x", "/etc/passwd", "a/../../b", "a\x00b", "", "a\xffb", `..\x`, "c/../x", "./x", "c//x", "c/x/"}
		for _, key := range unsafe {
			if err := f.store.Check(t.Context(), []string{key})[0]; !errors.Is(err, ErrUnsafeKey) {
				t.Errorf("Check(%q) = %v, want ErrUnsafeKey", key, err)
			}
		}
		want := make([]error, len(unsafe))
		for i := range want {
			want[i] = ErrUnsafeKey
		}
		requireErrs(t, unsafe, f.store.Remove(t.Context(), unsafe), want...)
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
		if f.batches != nil {
			if got := f.batches(); len(got) != 0 {
				t.Errorf("sent delete requests %v for unsafe keys only", got)
			}
		}
	})

	t.Run("SameNameAboveRootUntouched", func(t *testing.T) {
		f := newFixture(t)
		if f.putAbove == nil {
			return // nothing above: the whole bucket is the store
		}
		f.putAbove(t, "same.jpg")
		f.mustPut(t, "same.jpg")
		requireErrs(t, []string{"same.jpg"}, f.store.Remove(t.Context(), []string{"same.jpg"}), nil)
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
		for i := range 2100 {
			key := fmt.Sprintf("bulk/%02d/%04d.jpg", i%7, i)
			keys = append(keys, key)
			if i%50 != 0 { // every 50th is missing
				present = append(present, key)
			}
		}
		f.mustPut(t, present...)
		if f.batches != nil {
			f.batches() // forget the puts
		}
		errs := f.store.Remove(t.Context(), keys)
		requireErrs(t, keys, errs, make([]error, len(keys))...)
		for _, key := range []string{keys[1], keys[999], keys[1000], keys[1001], keys[2099]} {
			if f.exists(t, key) {
				t.Errorf("%q still exists", key)
			}
		}
		if f.batches != nil {
			got := f.batches()
			sum := 0
			for _, n := range got {
				sum += n
				if n > maxDeleteKeys {
					t.Errorf("a delete request carried %d keys", n)
				}
			}
			if len(got) != 3 || sum != len(keys) {
				t.Errorf("delete requests carried %v keys, want 3 requests, %d keys in all", got, len(keys))
			}
		}
	})

	t.Run("CancelledContext", func(t *testing.T) {
		f := newFixture(t)
		keys := []string{"c/1.jpg", "c/2.jpg", "../x", "c/3.jpg"}
		f.mustPut(t, "c/1.jpg", "c/2.jpg", "c/3.jpg")
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		requireErrs(t, keys, f.store.Remove(ctx, keys), context.Canceled, context.Canceled, ErrUnsafeKey, context.Canceled)
		for _, key := range []string{"c/1.jpg", "c/2.jpg", "c/3.jpg"} {
			if !f.exists(t, key) {
				t.Errorf("%q was removed after cancel", key)
			}
		}
	})
}

// errAny stands for any non-nil error in requireErrs.
var errAny = errors.New("any error")

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
		var ok bool
		switch want[i] {
		case nil:
			ok = err == nil
		case errAny:
			ok = err != nil
		default:
			ok = errors.Is(err, want[i])
		}
		if !ok {
			if bad++; bad <= 10 {
				t.Errorf("key %q: error %v, want %v", keys[i], err, want[i])
			}
		}
	}
	if bad > 10 {
		t.Errorf("... %d keys wrong in all", bad)
	}
}
