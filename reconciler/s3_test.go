package reconciler_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/reconcile/reconcile/internal/storage"
	"github.com/reconcile/reconcile/internal/testdb"
	"github.com/reconcile/reconcile/internal/tests3"
	"github.com/reconcile/reconcile/reconciler"
)

// The purge against a real S3 server (versitygw, started by scripts/test.sh):
// rows and objects under the prefix go, a shared object and everything
// outside the prefix stay.
func TestPurgeOnS3(t *testing.T) {
	ctx := context.Background()
	bucket := tests3.New(t)
	put := func(name string) { bucket.Put(t, name) }
	exists := bucket.Exists

	store, err := storage.NewS3(ctx, storage.S3Config{Endpoint: bucket.Endpoint, Bucket: bucket.Name, Prefix: "media", AccessKey: bucket.AccessKey, SecretKey: bucket.SecretKey})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	_, pool := testdb.NewDjango(t)
	b := newBundle(t, ctx, pool, "", store)

	var rows []row
	for i := range 30 {
		rows = append(rows, row{key: fmt.Sprintf("forum/attachments/s3-%02d.jpg", i), deletedAt: ago(2 * retention), noFile: true})
	}
	rows = append(rows,
		row{key: "forum/attachments/shared.jpg", deletedAt: ago(2 * retention), noFile: true},
		row{key: "forum/attachments/shared.jpg", active: true, noFile: true},
	)
	ids := b.seed(rows...)
	for _, r := range rows {
		put("media/" + r.key)
	}
	put("forum/attachments/s3-00.jpg") // same key outside the prefix
	// S3 gives modification times to the second, and an object modified
	// in the second its removal is queued is kept: these are older.
	time.Sleep(time.Until(time.Now().Truncate(time.Second).Add(1100 * time.Millisecond)))

	s := b.run()
	if s.Purged != 31 || s.FilesRemoved != 30 || s.FilesKept != 1 || s.Failed != 0 {
		t.Fatalf("summary = %+v, want 31 purged, 30 objects removed, 1 kept", s)
	}
	for i, r := range rows[:30] {
		if b.rowExists(ids[i]) || exists("media/"+r.key) {
			t.Errorf("row or object of %s survived", r.key)
		}
	}
	if !exists("media/forum/attachments/shared.jpg") || !exists("forum/attachments/s3-00.jpg") {
		t.Error("the shared object or an object outside the prefix was removed")
	}
}

// Row 13 on S3: an object written again under a key after the key was
// queued (its LastModified, from a listing, is not older than the queueing)
// is kept; an older one goes. Row 4: a prefix under which the bucket holds
// none of the table's objects deletes nothing.
func TestRewrittenObjectAndWrongPrefixOnS3(t *testing.T) {
	ctx := context.Background()
	bucket := tests3.New(t)
	newStore := func(prefix string) *storage.S3 {
		store, err := storage.NewS3(ctx, storage.S3Config{Endpoint: bucket.Endpoint, Bucket: bucket.Name, Prefix: prefix, AccessKey: bucket.AccessKey, SecretKey: bucket.SecretKey})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { store.Close() })
		return store
	}
	_, pool := testdb.NewDjango(t)
	b := newBundle(t, ctx, pool, "", newStore("static"))
	onS3 := func(r row) row { r.noFile = true; return r } // the objects are put below
	ids := b.seed(onS3(due("forum/attachments/a.jpg")), onS3(due("forum/attachments/b.jpg")), row{key: "forum/attachments/live.jpg", active: true, noFile: true})
	for _, key := range []string{"a.jpg", "b.jpg", "live.jpg"} {
		bucket.Put(t, "media/forum/attachments/"+key)
	}
	if _, err := b.runErr(); !errors.Is(err, reconciler.ErrNoFiles) || !strings.Contains(err.Error(), "files probed") {
		t.Fatalf("wrong prefix: %v; want ErrNoFiles", err)
	}
	if !b.rowExists(ids[0]) || !b.rowExists(ids[1]) {
		t.Fatal("a row was purged under the wrong prefix")
	}

	b = newBundle(t, ctx, pool, "", newStore("media"))
	// b.jpg was queued a minute ago and uploaded again since; a.jpg is
	// queued now, in a later second than its object's.
	time.Sleep(time.Until(time.Now().Truncate(time.Second).Add(1100 * time.Millisecond)))
	bucket.Put(t, "media/forum/attachments/b.jpg")
	if _, err := pool.Exec(ctx, `DELETE FROM forum_attachment WHERE id IN ($1, $2)`, ids[0], ids[1]); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `
		INSERT INTO reconcile_forum_attachment_outbox (storage_key, attachment_id, enqueued_at)
		VALUES ('forum/attachments/a.jpg', 'gone-1', now()), ('forum/attachments/b.jpg', 'gone-2', now() - interval '1 minute')`); err != nil {
		t.Fatal(err)
	}
	s, err := b.r.DrainOutbox(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if s.FilesRemoved != 1 || s.FilesRewritten != 1 || bucket.Exists("media/forum/attachments/a.jpg") || !bucket.Exists("media/forum/attachments/b.jpg") {
		t.Fatalf("summary %+v: want a.jpg removed and the new b.jpg kept", s)
	}
}
