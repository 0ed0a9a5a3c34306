package reconciler

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/reconcile/reconcile/internal/storage"
	"github.com/reconcile/reconcile/internal/testdb"
)

// Rule 2: a file goes only for a key the outbox holds at the moment of its
// removal. A key handed to the removal that another run has taken from the
// outbox meanwhile (removed, or kept for a row that uses it again) is left
// alone, and so is its file.
func TestRemoveFilesOnlyForKeysInTheOutbox(t *testing.T) {
	ctx := context.Background()
	_, pool := testdb.NewDjango(t)
	root := t.TempDir()
	store, err := storage.NewLocal(root)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	r, err := New(ctx, pool, store, nil, Table{
		Schema: "public", Name: "forum_attachment",
		ID: "id", Key: "image", OriginalFilename: "original_filename", IsActive: "is_active", DeletedAt: "deleted_at",
	}, Config{Retention: time.Hour, BatchSize: 10, Concurrency: 1, RemoveConcurrency: 1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour)
	for _, key := range []string{"queued.jpg", "not-queued.jpg"} {
		path := filepath.Join(root, key)
		if err := os.WriteFile(path, []byte("img"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(path, old, old); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := pool.Exec(ctx, `INSERT INTO reconcile_forum_attachment_outbox (storage_key, attachment_id) VALUES ('queued.jpg', 'gone')`); err != nil {
		t.Fatal(err)
	}
	s, err := r.removeFiles(ctx, []string{"queued.jpg", "not-queued.jpg"})
	if err != nil {
		t.Fatal(err)
	}
	if s.FilesRemoved != 1 {
		t.Fatalf("summary %+v; want the queued file removed", s)
	}
	if _, err := os.Stat(filepath.Join(root, "queued.jpg")); !os.IsNotExist(err) {
		t.Fatalf("the queued file is still there: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "not-queued.jpg")); err != nil {
		t.Fatalf("the file of a key not in the outbox was removed: %v", err)
	}
}
