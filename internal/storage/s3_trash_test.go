package storage

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

// refuseCopies answers 403 to each CopyObject whose source names refused,
// and passes every other request on.
func refuseCopies(refused string) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPut && strings.Contains(r.Header.Get("X-Amz-Copy-Source"), refused) {
				w.Header().Set("Content-Type", "application/xml")
				w.WriteHeader(http.StatusForbidden)
				io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>copy refused</Message></Error>`)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

// An object that could not be copied into the trash is not deleted; the
// others of the call are, with one bulk delete.
func TestS3TrashCopyFailureKeepsTheObject(t *testing.T) {
	c := &clock{t: at(1, 23)}
	f := s3Fixture(t, fakeS3(t, refuseCopies("refused")), "media/", WithTrash(".trash", c.now))
	keys := []string{"c/a.jpg", "c/refused.jpg", "c/b.jpg"}
	f.mustPut(t, keys...)
	f.takeRequests()
	res := f.store.Remove(t.Context(), removals(queuedLater(), keys...))
	requireResults(t, keys, res, Removed, errAny, Removed)
	if msg := res[1].Err.Error(); !strings.Contains(msg, `remove "c/refused.jpg": copy into the trash`) || !strings.Contains(msg, "copy refused") {
		t.Errorf("error %q, want the key and the copy's error", msg)
	}
	if !f.exists(t, "c/refused.jpg") || f.exists(t, ".trash/2026-11-30T01/c/refused.jpg") {
		t.Error("the object not copied was deleted, or copied")
	}
	for _, key := range []string{"c/a.jpg", "c/b.jpg"} {
		if f.exists(t, key) || !f.exists(t, ".trash/2026-11-30T01/"+key) {
			t.Errorf("%q was not moved into the trash", key)
		}
	}
	// One listing decides the objects, one their places in the trash, one
	// looks for uploads during the copies.
	if lists, deletes := f.takeRequests(); lists != 3 || len(deletes) != 1 || deletes[0] != 2 {
		t.Errorf("sent %d listings and delete requests %v, want 3 and [2]", lists, deletes)
	}
}

// A name that a listing would mangle is looked up alone, moved and put
// back; emptying the trash leaves it, since no listing names it right.
func TestS3TrashNameListingsMangle(t *testing.T) {
	c := &clock{t: at(1, 23)}
	f := s3Fixture(t, fakeS3(t, nil), "", WithTrash(".trash/", c.now))
	st := f.store.(trashStore)
	key := []string{"ctl\x01.jpg"}
	f.mustPut(t, key...)
	requireResults(t, key, st.Remove(t.Context(), removals(queuedLater(), key...)), Removed)
	if f.exists(t, key[0]) || f.read(t, ".trash/2026-11-30T01/"+key[0]) != "data of "+key[0] {
		t.Fatal("not moved into the trash")
	}
	requireErrs(t, key, st.Untrash(t.Context(), key), nil)
	if f.read(t, key[0]) != "data of "+key[0] || f.exists(t, ".trash/2026-11-30T01/"+key[0]) {
		t.Fatal("not put back")
	}
	requireResults(t, key, st.Remove(t.Context(), removals(queuedLater(), key...)), Removed)
	if n, err := st.EmptyTrash(t.Context(), at(23, 0)); err != nil || n != 0 {
		t.Errorf("EmptyTrash = %d, %v; want 0, nil", n, err)
	}
	if !f.exists(t, ".trash/2026-11-30T01/"+key[0]) {
		t.Error("emptying deleted an object it could not name")
	}
}
