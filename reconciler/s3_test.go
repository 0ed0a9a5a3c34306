package reconciler_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/reconcile/reconcile/internal/storage"
	"github.com/reconcile/reconcile/internal/testdb"
)

// The purge against a real S3 server (versitygw, started by scripts/test.sh):
// rows and objects under the prefix go, a shared object and everything
// outside the prefix stay.
func TestPurgeOnS3(t *testing.T) {
	endpoint := os.Getenv("TEST_S3_ENDPOINT")
	if endpoint == "" {
		t.Fatal("TEST_S3_ENDPOINT is not set: run the tests with `make test`, which starts an S3 server")
	}
	access, secret := os.Getenv("TEST_S3_ACCESS_KEY"), os.Getenv("TEST_S3_SECRET_KEY")
	ctx := context.Background()
	client, err := minio.New(endpoint, &minio.Options{Creds: credentials.NewStaticV4(access, secret, "")})
	if err != nil {
		t.Fatal(err)
	}
	bucket := "purge-" + strings.ToLower(uuid.NewString()[:8])
	if err := client.MakeBucket(ctx, bucket, minio.MakeBucketOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for obj := range client.ListObjects(ctx, bucket, minio.ListObjectsOptions{Recursive: true}) {
			_ = client.RemoveObject(ctx, bucket, obj.Key, minio.RemoveObjectOptions{})
		}
		_ = client.RemoveBucket(ctx, bucket)
	})
	put := func(name string) {
		t.Helper()
		_, err := client.PutObject(ctx, bucket, name, strings.NewReader("img"), 3, minio.PutObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}
	}
	exists := func(name string) bool {
		_, err := client.StatObject(ctx, bucket, name, minio.StatObjectOptions{})
		return err == nil
	}

	store, err := storage.NewS3(ctx, storage.S3Config{Endpoint: endpoint, Bucket: bucket, Prefix: "media", AccessKey: access, SecretKey: secret})
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
