package storage

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/minio/minio-go/v7"
)

// Fetch reads an object of another bucket by its full name: neither the
// store's bucket nor its prefix applies.
func TestFetch(t *testing.T) {
	eachS3(t, func(t *testing.T, tg s3Target) {
		f := s3Fixture(t, tg, "media/")
		s := f.store.(*S3)
		raw := tg.rawClient(t, tg.transport)
		other := tg.makeBucket(t, raw)
		data := bytes.Repeat([]byte("inventory,"), 100_000) // more than one read
		key := "inv/src/cfg/data/a b+c.csv.gz"
		if _, err := raw.PutObject(t.Context(), other, key, bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{}); err != nil {
			t.Fatal(err)
		}

		body, err := s.Fetch(t.Context(), other, key)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(body)
		if err != nil {
			t.Fatal(err)
		}
		if err := body.Close(); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data) {
			t.Errorf("Fetch read %d bytes, want the %d stored", len(got), len(data))
		}

		if body, err := s.Fetch(t.Context(), other, "inv/missing.csv.gz"); err == nil {
			body.Close()
			t.Error("Fetch of a missing object succeeded")
		} else {
			t.Log(err)
		}
		if body, err := s.Fetch(t.Context(), s.bucket, key); err == nil {
			body.Close()
			t.Error("Fetch found the object in the store's own bucket, where it is not")
		}
	})
}

// answerGets answers the GET requests of objects with answer, and passes
// the other requests (the bucket's HEAD of NewS3) on.
func answerGets(answer http.HandlerFunc) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && strings.Count(strings.Trim(r.URL.Path, "/"), "/") > 0 {
				answer(w, r)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

func TestFetchRedactsEchoedSecrets(t *testing.T) {
	var tg s3Target
	tg = fakeS3(t, answerGets(func(w http.ResponseWriter, r *http.Request) {
		echoSecrets(&tg)(nil).ServeHTTP(w, r)
	}))
	f := s3Fixture(t, tg, "")
	f.mustPut(t, "a.jpg")
	body, err := f.store.(*S3).Fetch(t.Context(), f.store.(*S3).bucket, "a.jpg")
	if err == nil {
		body.Close()
		t.Fatal("Fetch succeeded")
	}
	t.Log(err)
	if !strings.Contains(err.Error(), "[REDACTED]") {
		t.Errorf("error %q: the echoed credentials did not reach the error, the test tests nothing", err)
	}
	requireNoSecrets(t, err, tg)
}

func TestFetchAccessDenied(t *testing.T) {
	tg := fakeS3(t, answerGets(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/xml")
		w.WriteHeader(http.StatusForbidden)
		io.WriteString(w, `<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>`)
	}))
	f := s3Fixture(t, tg, "")
	f.mustPut(t, "a.jpg")
	body, err := f.store.(*S3).Fetch(t.Context(), f.store.(*S3).bucket, "a.jpg")
	if err == nil {
		body.Close()
		t.Fatal("Fetch succeeded")
	}
	if !errors.Is(err, ErrMisconfigured) {
		t.Errorf("Fetch = %v, want ErrMisconfigured", err)
	}
}
