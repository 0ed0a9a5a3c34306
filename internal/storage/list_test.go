package storage

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

// lister is what the orphan scan and the purge of derived files ask of a
// backend.
type lister interface {
	List(ctx context.Context, opts ListOptions, fn func(Object) error) error
	CheckList(ctx context.Context, prefix string) error
}

var (
	_ lister = (*Local)(nil)
	_ lister = (*S3)(nil)
)

// listKeys returns keys that a folder tree can hold (no key is the folder
// of another), in no order: the layouts of Django, imagekit and
// easy-thumbnails, names that sort around '/' ("a.b", "a/x", "a0"), and
// random paths over an alphabet of characters that sort below, around and
// above '/'.
func listKeys() []string {
	keys := []string{
		"a.b", "a/x", "a0", "a-", "a.b/c", "a/x.jpg", "a/y/z", "a b", "ab/c",
		"forum/attachments/leaf.jpg",
		"forum/attachments/leaf.jpg.100x100_q85.jpg",
		"forum/attachments/leaf.jpgz",
		"forum/attachments/leaf/inner.jpg",
		"CACHE/images/forum/attachments/leaf/0123456789abcdef0123456789abcdef.jpg",
		"é/x", "z", "~",
	}
	rng := rand.New(rand.NewPCG(9, 9))
	alphabet := []string{"a", "b", ".", "-", "0", " ", "é", "~", "A", "_"}
	for range 200 {
		elems := make([]string, 1+rng.IntN(3))
		for i := range elems {
			for range 1 + rng.IntN(3) {
				elems[i] += alphabet[rng.IntN(len(alphabet))]
			}
		}
		keys = append(keys, strings.Join(elems, "/"))
	}
	folders := make(map[string]bool)
	for _, key := range keys {
		for i := range len(key) {
			if key[i] == '/' {
				folders[key[:i]] = true
			}
		}
	}
	seen := make(map[string]bool)
	return slices.DeleteFunc(keys, func(key string) bool {
		drop := folders[key] || seen[key] || ValidateKey(key) != nil
		seen[key] = true
		return drop
	})
}

// selected returns the keys (sorted) that start with prefix and sort after after.
func selected(keys []string, prefix, after string) []string {
	var out []string
	for _, key := range keys {
		if strings.HasPrefix(key, prefix) && key > after {
			out = append(out, key)
		}
	}
	return out
}

// listAll returns every object List gives.
func listAll(t *testing.T, l lister, opts ListOptions) []Object {
	t.Helper()
	var objects []Object
	if err := l.List(t.Context(), opts, func(o Object) error {
		objects = append(objects, o)
		return nil
	}); err != nil {
		t.Fatalf("List(%+v): %v", opts, err)
	}
	return objects
}

// requireListed checks that List gives exactly want, in this order, none refused.
func requireListed(t *testing.T, l lister, opts ListOptions, want []string) {
	t.Helper()
	var got []string
	for _, o := range listAll(t, l, opts) {
		if o.Refused != nil {
			t.Errorf("List(%+v): %q refused: %v", opts, o.Key, o.Refused)
		}
		got = append(got, o.Key)
	}
	if !slices.Equal(got, want) {
		i := 0
		for i < min(len(got), len(want)) && got[i] == want[i] {
			i++
		}
		t.Errorf("List(%+v) gave %d keys, want %d; first difference at %d: got %q, want %q",
			opts, len(got), len(want), i, got[i:min(i+3, len(got))], want[i:min(i+3, len(want))])
	}
}

// runListSuite runs the listing tests every backend must pass.
func runListSuite(t *testing.T, newFixture func(t *testing.T) *fixture) {
	f := newFixture(t)
	l := f.store.(lister)
	keys := listKeys()
	f.mustPut(t, keys...)
	slices.Sort(keys) // byte order, as Go compares strings

	t.Run("Order", func(t *testing.T) {
		requireListed(t, l, ListOptions{}, keys)
	})
	t.Run("Prefix", func(t *testing.T) {
		for _, prefix := range []string{
			"", "a/", "a", "a.", "a.b", "a/x", "a/x/", "forum/attachments/leaf", "forum/attachments/leaf.",
			"forum/attachments/leaf/", "CACHE/images/forum/attachments/", "é", "missing/", "missing", "a/x/missing/",
		} {
			requireListed(t, l, ListOptions{Prefix: prefix}, selected(keys, prefix, ""))
		}
	})
	t.Run("StartAfter", func(t *testing.T) {
		afters := []string{"", "a", "a/", "a.", "a.b/", "a/x/", "a/y", "0", "\xff", "~~"}
		for i := 0; i < len(keys); i += 9 {
			afters = append(afters, keys[i])
		}
		for _, prefix := range []string{"", "a", "a/", "forum/"} {
			for _, after := range afters {
				requireListed(t, l, ListOptions{Prefix: prefix, StartAfter: after}, selected(keys, prefix, after))
			}
		}
	})
	t.Run("Info", func(t *testing.T) {
		for _, o := range listAll(t, l, ListOptions{Prefix: "forum/", Info: true}) {
			if want := int64(len("data of " + o.Key)); o.Size != want || time.Since(o.ModTime) > time.Hour || o.Refused != nil {
				t.Errorf("%q: size %d, modified %v, refused %v; want size %d, modified lately", o.Key, o.Size, o.ModTime, o.Refused, want)
			}
		}
	})
	t.Run("StatSize", func(t *testing.T) {
		key := "forum/attachments/leaf.jpg"
		if info := f.store.Stat(t.Context(), []string{key})[0]; !info.Exists || info.Size != int64(len("data of "+key)) {
			t.Errorf("Stat(%q) = %+v, want its size", key, info)
		}
	})
	t.Run("FnStops", func(t *testing.T) {
		errStop := errors.New("stop")
		calls := 0
		err := l.List(t.Context(), ListOptions{}, func(Object) error {
			calls++
			if calls == 3 {
				return errStop
			}
			return nil
		})
		if err != errStop || calls != 3 {
			t.Errorf("List = %v after %d calls, want fn's error as it is after 3", err, calls)
		}
	})
	t.Run("Canceled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		err := l.List(ctx, ListOptions{}, func(Object) error {
			cancel()
			return nil
		})
		if !errors.Is(err, context.Canceled) {
			t.Errorf("List = %v, want context.Canceled", err)
		}
		if err := l.CheckList(ctx, ""); !errors.Is(err, context.Canceled) {
			t.Errorf("CheckList = %v, want context.Canceled", err)
		}
	})
	t.Run("BadPrefix", func(t *testing.T) {
		for _, prefix := range []string{"../", "..", "a/../", "/a", "a//", "a\\b", "a/./b", "\xff/"} {
			err := l.List(t.Context(), ListOptions{Prefix: prefix}, func(o Object) error {
				return fmt.Errorf("listed %q", o.Key)
			})
			if !errors.Is(err, ErrUnsafeKey) {
				t.Errorf("List(prefix %q) = %v, want ErrUnsafeKey", prefix, err)
			}
			if err := l.CheckList(t.Context(), prefix); !errors.Is(err, ErrUnsafeKey) {
				t.Errorf("CheckList(%q) = %v, want ErrUnsafeKey", prefix, err)
			}
		}
	})
	t.Run("CheckList", func(t *testing.T) {
		for _, prefix := range []string{"", "a/", "a", "forum/attachments/", "missing/", "a/x/missing/"} {
			if err := l.CheckList(t.Context(), prefix); err != nil {
				t.Errorf("CheckList(%q) = %v", prefix, err)
			}
		}
	})
}
