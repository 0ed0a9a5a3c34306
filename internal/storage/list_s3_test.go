package storage

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestS3List(t *testing.T) {
	for _, prefix := range []string{"", "media/"} {
		t.Run("fake/prefix="+prefix, func(t *testing.T) {
			runListSuite(t, func(t *testing.T) *fixture { return s3Fixture(t, fakeS3(t, nil), prefix) })
		})
	}
	t.Run("real/prefix=media/", func(t *testing.T) {
		runListSuite(t, func(t *testing.T) *fixture { return s3Fixture(t, realS3(t), "media/") })
	})
}

// listed returns the keys List gives and, by key, why each refused one was.
func listed(t *testing.T, l lister, opts ListOptions) (keys []string, refused map[string]error) {
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

// Keys come without the configured prefix, objects beside the prefix are
// not listed, and the prefix and StartAfter go to the server under it.
func TestS3ListStripsPrefix(t *testing.T) {
	eachS3(t, func(t *testing.T, tg s3Target) {
		f, counting := newS3Fixture(t, tg, "media")
		f.mustPut(t, "a.jpg", "sub/b.jpg")
		f.putAbove(t, "mediax.jpg")
		f.putAbove(t, "medib/c.jpg")
		f.putAbove(t, "a.jpg")
		counting.takeLists()
		l := f.store.(lister)
		requireListed(t, l, ListOptions{}, []string{"a.jpg", "sub/b.jpg"})
		requireListed(t, l, ListOptions{Prefix: "sub/", StartAfter: "a.jpg"}, []string{"sub/b.jpg"})
		requireListed(t, l, ListOptions{StartAfter: "a.jpg"}, []string{"sub/b.jpg"})
		var got []string
		for _, q := range counting.takeLists() {
			got = append(got, q.Get("prefix")+" "+q.Get("start-after"))
		}
		if want := []string{"media/ ", "media/sub/ media/a.jpg", "media/ media/a.jpg"}; !slices.Equal(got, want) {
			t.Errorf("listings (prefix start-after) %q, want %q", got, want)
		}
	})
}

// Folder markers, the prefix's own included, are listed as refused.
func TestS3ListRefusesFolderMarkers(t *testing.T) {
	eachS3(t, func(t *testing.T, tg s3Target) {
		f := s3Fixture(t, tg, "media")
		for _, key := range []string{"", "dir/", "dir/x.jpg", "z.jpg"} {
			if err := f.put(key, nil); err != nil {
				t.Fatalf("put %q: %v", key, err)
			}
		}
		keys, refused := listed(t, f.store.(lister), ListOptions{Info: true})
		if want := []string{"", "dir/", "dir/x.jpg", "z.jpg"}; !slices.Equal(keys, want) {
			t.Errorf("listed %q, want %q", keys, want)
		}
		for key, want := range map[string]string{"": `"": not a regular file (folder marker)`, "dir/": `"dir/": not a regular file (folder marker)`} {
			if err := refused[key]; !errors.Is(err, errNotFile) || err.Error() != want {
				t.Errorf("%q refused with %v, want %q", key, err, want)
			}
		}
		if len(refused) != 2 {
			t.Errorf("refused %v, want only the folder markers", refused)
		}
	})
}

// Names no key can have are listed as refused (gofakes3 keeps them; a
// server backed by a filesystem collapses them).
func TestS3ListRefusesBadNames(t *testing.T) {
	f := s3Fixture(t, fakeS3(t, nil), "media")
	f.mustPut(t, "/x", "a\\b", "a/./b", "a/../b", "a//b", "ok.jpg")
	keys, refused := listed(t, f.store.(lister), ListOptions{})
	if want := []string{"/x", "a/../b", "a/./b", "a//b", "a\\b", "ok.jpg"}; !slices.Equal(keys, want) {
		t.Errorf("listed %q, want %q", keys, want)
	}
	for _, key := range keys[:5] {
		if err, want := refused[key], ValidateKey(key); err == nil || err.Error() != want.Error() {
			t.Errorf("%q refused with %v, want %v", key, err, want)
		}
	}
}

// A name the listing may have mangled is refused, and neither taken for
// out of order nor ends the listing.
func TestS3ListRefusesMangledNames(t *testing.T) {
	eachS3(t, func(t *testing.T, tg s3Target) {
		f := s3Fixture(t, tg, "media/")
		// "d/a\x01" sorts before "d/a0" but comes back as "d/a\uFFFD", after
		// it; a '\r' could come back as '\n'.
		f.mustPut(t, "d/a\x01", "d/a0", "d/b", "ctl\r.jpg", "ctl\n.zzz")
		keys, refused := listed(t, f.store.(lister), ListOptions{})
		for _, key := range []string{"d/a0", "d/b", "ctl\n.zzz"} {
			if !slices.Contains(keys, key) || refused[key] != nil {
				t.Errorf("%q: listed %v, refused %v; want it listed", key, slices.Contains(keys, key), refused[key])
			}
		}
		if len(keys) != 5 || refused["d/a\uFFFD"] == nil || refused["ctl\r.jpg"] == nil {
			t.Errorf("listed %q, refused %v; want d/a\uFFFD and ctl\r.jpg refused", keys, refused)
		}
		for key, err := range refused {
			if !errors.Is(err, errMangled) {
				t.Errorf("%q refused with %v, want errMangled", key, err)
			}
		}
		// The cleanup of the test bucket, which lists it, cannot remove them.
		odd := []string{"d/a\x01", "ctl\r.jpg", "ctl\n.zzz"}
		requireResults(t, odd, f.store.Remove(t.Context(), removals(queuedLater(), odd...)), Removed, Removed, Removed)
	})
}

// rewriteLists passes the body of each listing through rewrite.
func rewriteLists(rewrite func(body string) string) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !isListing(r) {
				next.ServeHTTP(w, r)
				return
			}
			rec := httptest.NewRecorder()
			next.ServeHTTP(rec, r)
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			w.Header().Del("Content-Length")
			w.WriteHeader(rec.Code)
			io.WriteString(w, rewrite(rec.Body.String()))
		})
	}
}

// A listing out of order, outside the prefix, or not after StartAfter is an
// error: a merge with sorted keys would take the keys it skipped for missing.
func TestS3ListRefusesBrokenListings(t *testing.T) {
	a, b := "media/forum/a.jpg", "media/forum/b.jpg"
	for name, tc := range map[string]struct {
		wrap func(http.Handler) http.Handler
		opts ListOptions
		want string
	}{
		"out of order": {
			wrap: rewriteLists(strings.NewReplacer(a, b, b, a).Replace),
			want: fmt.Sprintf("the server listed %q after %q, out of order", a, b),
		},
		"outside the prefix": {
			wrap: rewriteLists(strings.NewReplacer(b, "medib/forum/b.jpg").Replace),
			want: `the server listed "medib/forum/b.jpg", outside the prefix`,
		},
		"start-after ignored": {
			wrap: func(next http.Handler) http.Handler {
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					q := r.URL.Query()
					q.Del("start-after")
					r.URL.RawQuery = q.Encode()
					next.ServeHTTP(w, r)
				})
			},
			opts: ListOptions{StartAfter: "forum/a.jpg"},
			want: fmt.Sprintf("the server listed %q after %q, out of order", a, a),
		},
	} {
		t.Run(name, func(t *testing.T) {
			f := s3Fixture(t, fakeS3(t, tc.wrap), "media")
			f.mustPut(t, "forum/a.jpg", "forum/b.jpg")
			err := f.store.(lister).List(t.Context(), tc.opts, func(Object) error { return nil })
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("List = %v, want an error saying %q", err, tc.want)
			}
		})
	}
}

// Credentials without s3:ListBucket make CheckList and List fail with
// ErrMisconfigured naming the bucket and prefix. versitygw, as the tests
// start it, has no accounts but the root one, which may list: a handler
// answers AccessDenied as S3 does.
func TestS3ListRefused(t *testing.T) {
	f := s3Fixture(t, fakeS3(t, answerLists(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/xml")
		w.WriteHeader(http.StatusForbidden)
		io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>`)
	})), "media")
	l := f.store.(lister)
	for name, err := range map[string]error{
		"CheckList": l.CheckList(t.Context(), "forum/"),
		"List":      l.List(t.Context(), ListOptions{Prefix: "forum/"}, func(Object) error { return nil }),
	} {
		want := `s3:ListBucket permission is needed on bucket "reconcile-test-`
		if !errors.Is(err, ErrMisconfigured) || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), `prefix "media/forum/" to list the files under it`) {
			t.Errorf("%s = %v, want ErrMisconfigured saying %q and naming the prefix", name, err, want)
		}
	}
}

func TestS3ListRedactsEchoedSecrets(t *testing.T) {
	var tg s3Target
	tg = fakeS3(t, answerLists(func(w http.ResponseWriter, r *http.Request) {
		echoSecrets(&tg)(nil).ServeHTTP(w, r)
	}))
	l := s3Fixture(t, tg, "").store.(lister)
	for _, err := range []error{
		l.CheckList(t.Context(), ""),
		l.List(t.Context(), ListOptions{}, func(Object) error { return nil }),
	} {
		if err == nil || !strings.Contains(err.Error(), "[REDACTED]") {
			t.Fatalf("error %v: the echoed credentials did not reach the error, the test tests nothing", err)
		}
		requireNoSecrets(t, err, tg)
	}
}

// Each page of a listing is a request the observer hears as OpList;
// CheckList sends one, of one key.
func TestS3ListObserved(t *testing.T) {
	tg := fakeS3(t, nil)
	raw := tg.rawClient(t, tg.transport)
	bucket := tg.makeBucket(t, raw)
	for i := range 2500 {
		if err := tg.putDirect(bucket, fmt.Sprintf("media/%05d.jpg", i), nil); err != nil {
			t.Fatal(err)
		}
	}
	var ops []string
	counting := &countingTransport{base: tg.transport}
	s, err := NewS3(t.Context(), S3Config{
		Endpoint: tg.endpoint, Bucket: bucket, Prefix: "media", AccessKey: tg.accessKey, SecretKey: tg.secretKey,
		UseSSL: true, Transport: counting,
	}, WithObserver(func(op string, _ time.Duration) { ops = append(ops, op) }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	ops = nil
	n := 0
	if err := s.List(t.Context(), ListOptions{}, func(Object) error { n++; return nil }); err != nil || n != 2500 {
		t.Fatalf("List gave %d objects: %v", n, err)
	}
	if want := []string{OpList, OpList, OpList}; !slices.Equal(ops, want) {
		t.Errorf("List: observed %q, want %q", ops, want)
	}
	ops = nil
	counting.takeLists()
	if err := s.CheckList(t.Context(), ""); err != nil {
		t.Fatal(err)
	}
	if lists := counting.takeLists(); len(lists) != 1 || lists[0].Get("max-keys") != "1" || !slices.Equal(ops, []string{OpList}) {
		t.Errorf("CheckList: sent %v, observed %q; want one listing of one key", lists, ops)
	}
}
