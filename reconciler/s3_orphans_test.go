package reconciler_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/reconcile/reconcile/internal/storage"
	"github.com/reconcile/reconcile/internal/testdb"
	"github.com/reconcile/reconcile/internal/tests3"
	"github.com/reconcile/reconcile/reconciler"
)

// s3Bundle is a bundle on a fresh bucket of the S3 server, under the
// prefix "media/".
func s3Bundle(t *testing.T) (*bundle, *tests3.Bucket) {
	t.Helper()
	ctx := context.Background()
	bucket := tests3.New(t)
	store, err := storage.NewS3(ctx, storage.S3Config{Endpoint: bucket.Endpoint, Bucket: bucket.Name, Prefix: "media", AccessKey: bucket.AccessKey, SecretKey: bucket.SecretKey})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	_, pool := testdb.NewDjango(t)
	return newBundle(t, ctx, pool, "", store), bucket
}

// settle waits past the second the objects were written in: S3 keeps
// LastModified to the second, and an object of the second a removal is
// queued in is kept.
func settle() {
	time.Sleep(time.Until(time.Now().Truncate(time.Second).Add(1100 * time.Millisecond)))
}

// Imagekit's layout on S3: a folder shared by leaf.jpg and leaf.png goes
// with the last of them; a live upload's cache folder inside it stays.
func TestPurgeRemovesImagekitFilesOnS3(t *testing.T) {
	b, bucket := s3Bundle(t)
	b.withDerived("imagekit")
	const day = "forum/attachments/2025/10/04/"
	jpg, png, nested := day+"leaf.jpg", day+"leaf.png", day+"leaf/inner.jpg"
	b.seed(row{key: jpg, deletedAt: ago(2 * retention), noFile: true}, row{key: png, active: true, noFile: true}, row{key: nested, active: true, noFile: true})
	shared := slices.Concat(imagekitFiles(jpg, specs...), imagekitFiles(png, "thumbnail"))
	nestedFiles := imagekitFiles(nested, specs...)
	for _, f := range slices.Concat([]string{jpg, png, nested}, shared, nestedFiles) {
		bucket.Put(t, "media/"+f)
	}
	settle()
	s := b.run()
	if s.Purged != 1 || bucket.Exists("media/"+jpg) || s.DerivedRemoved != 0 {
		t.Fatalf("first purge: %+v", s)
	}
	if _, err := b.pool.Exec(b.ctx, `UPDATE forum_attachment SET is_active = false, deleted_at = now() - interval '3 hours' WHERE image = $1`, png); err != nil {
		t.Fatal(err)
	}
	s = b.run()
	if s.Purged != 1 || s.DerivedRemoved != len(shared) {
		t.Fatalf("second purge: %+v, want the %d files of the shared folder removed", s, len(shared))
	}
	for _, f := range shared {
		if bucket.Exists("media/" + f) {
			t.Errorf("%s left", f)
		}
	}
	for _, f := range append(nestedFiles, nested) {
		if !bucket.Exists("media/" + f) {
			t.Errorf("%s of a live row removed", f)
		}
	}
}

// The orphan scan on S3, and its resumption after a key.
func TestOrphanScanOnS3(t *testing.T) {
	b, bucket := s3Bundle(t)
	b.withDerived("imagekit")
	b.seed(row{key: "up/2025/live.jpg", active: true, noFile: true}, row{key: "up/2024/old.jpg", active: true, noFile: true})
	owned := slices.Concat([]string{"up/2025/live.jpg", "up/2024/old.jpg"}, imagekitFiles("up/2025/live.jpg", specs...))
	orphans := slices.Concat([]string{"up/2025/a-orphan.jpg", "up/2025/z-orphan.jpg"}, imagekitFiles("up/2025/gone.jpg", "thumbnail"))
	outside := []string{"elsewhere/x.jpg"}
	for _, f := range slices.Concat(owned, orphans, outside) {
		bucket.Put(t, "media/"+f)
	}
	bucket.Put(t, "up/2025/outside-the-prefix.jpg")

	report, totals, err := b.scan(reconciler.OrphanOptions{DryRun: true, Now: later})
	if err != nil {
		t.Fatal(err)
	}
	if len(report) != len(orphans) || totals.Orphans != len(orphans) || !slices.Equal(totals.Prefixes, []string{"CACHE/images/up/", "up/"}) {
		t.Fatalf("dry run on S3: %+v, %+v", report, totals)
	}
	// Young objects stay, whatever their owner.
	if _, totals, err = b.scan(reconciler.OrphanOptions{}); err != nil || totals.Removed != 0 || totals.Young != len(orphans) {
		t.Fatalf("scan of young objects: %+v, %v", totals, err)
	}
	report, totals, err = b.scan(reconciler.OrphanOptions{Now: later, StartAfter: "up/2025/b"})
	if err != nil || totals.Removed != 1 || bucket.Exists("media/up/2025/z-orphan.jpg") || !bucket.Exists("media/up/2025/a-orphan.jpg") {
		t.Fatalf("scan after up/2025/b: %+v, %+v, %v", report, totals, err)
	}
	if _, totals, err = b.scan(reconciler.OrphanOptions{Now: later}); err != nil || totals.Removed != len(orphans)-1 {
		t.Fatalf("full scan: %+v, %v", totals, err)
	}
	for _, f := range slices.Concat(owned, outside) {
		if !bucket.Exists("media/" + f) {
			t.Errorf("%s removed", f)
		}
	}
	if !bucket.Exists("up/2025/outside-the-prefix.jpg") {
		t.Error("an object outside the storage prefix was removed")
	}
}
