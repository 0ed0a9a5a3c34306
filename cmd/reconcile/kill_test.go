package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// Rule 2: reconcile killed after its database commit and before the files
// are removed. At no point is there an object that no row and no outbox
// entry refers to, nor a row whose object is gone; the next run removes what
// the killed one left.
func TestKilledBetweenCommitAndRemoval(t *testing.T) {
	f := newForum(t)
	const bucket = "media"
	// Uploaded an hour ago: an object modified about the time its
	// removal is queued is a new upload, which stays.
	backend := s3mem.New(s3mem.WithTimeSource(gofakes3.FixedTimeSource(time.Now().Add(-time.Hour))))
	if err := backend.CreateBucket(bucket); err != nil {
		t.Fatal(err)
	}
	// Bulk deletes wait at the gate: the process is stopped right there.
	gate := make(chan struct{})
	var waiting atomic.Int32
	s3 := gofakes3.New(backend).Server()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && r.URL.Query().Has("delete") {
			waiting.Add(1)
			select {
			case <-gate:
			case <-r.Context().Done():
				http.Error(w, "client gone", http.StatusServiceUnavailable)
				return
			}
		}
		s3.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	endpoint := strings.TrimPrefix(srv.URL, "http://")
	t.Setenv("RECONCILE_STORAGE_BACKEND", "s3")
	t.Setenv("RECONCILE_STORAGE_S3_ENDPOINT", endpoint)
	t.Setenv("RECONCILE_STORAGE_S3_BUCKET", bucket)
	t.Setenv("RECONCILE_STORAGE_S3_USE_SSL", "false")
	t.Setenv("RECONCILE_STORAGE_S3_ACCESS_KEY", "test")
	t.Setenv("RECONCILE_STORAGE_S3_SECRET_KEY", "testsecret")

	var dueKeys, keptKeys []string
	for i := range 300 {
		key := fmt.Sprintf("forum/attachments/due-%03d.jpg", i)
		f.add(key, 48)
		dueKeys = append(dueKeys, key)
	}
	for i := range 20 {
		key := fmt.Sprintf("forum/attachments/active-%02d.jpg", i)
		f.add(key, -1)
		keptKeys = append(keptKeys, key)
	}
	for _, key := range append(dueKeys, keptKeys...) {
		meta := map[string]string{"Last-Modified": time.Now().UTC().Format(http.TimeFormat)}
		if _, err := backend.PutObject(bucket, key, meta, strings.NewReader("img"), 3, nil); err != nil {
			t.Fatal(err)
		}
	}
	f.migrate()

	client, err := minio.New(endpoint, &minio.Options{Creds: credentials.NewStaticV4("test", "testsecret", "")})
	if err != nil {
		t.Fatal(err)
	}
	objects := func() map[string]bool {
		out := map[string]bool{}
		for obj := range client.ListObjects(context.Background(), bucket, minio.ListObjectsOptions{Recursive: true}) {
			if obj.Err != nil {
				t.Fatal(obj.Err)
			}
			out[obj.Key] = true
		}
		return out
	}
	// invariant lists the bucket before and after one database snapshot:
	// rows only go and objects only go, so a row must have had its object
	// at the first listing, and an object of the second listing must have
	// been tracked at the snapshot.
	invariant := func(when string) (rows, outbox int) {
		before := objects()
		dbRows, err := f.pool.Query(context.Background(), `
			SELECT 'row', image FROM forum_attachment
			UNION ALL SELECT 'outbox', storage_key FROM reconcile_forum_attachment_outbox`)
		if err != nil {
			t.Fatal(err)
		}
		tracked := map[string]bool{}
		for dbRows.Next() {
			var kind, key string
			if err := dbRows.Scan(&kind, &key); err != nil {
				t.Fatal(err)
			}
			tracked[key] = true
			if kind == "row" {
				rows++
				if !before[key] {
					t.Fatalf("%s: row refers to removed object %s", when, key)
				}
			} else {
				outbox++
			}
		}
		if err := dbRows.Err(); err != nil {
			t.Fatal(err)
		}
		for key := range objects() {
			if !tracked[key] {
				t.Fatalf("%s: object %s is tracked by no row and no outbox entry", when, key)
			}
		}
		return rows, outbox
	}

	start := func() (*exec.Cmd, *bytes.Buffer) {
		cmd := exec.Command(os.Args[0], "--rescan", "--batch-size", "20")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		cmd.Env = append(os.Environ(), "RECONCILE_TEST_AS_MAIN=1")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd, &out
	}

	cmd, out := start()
	deadline := time.Now().Add(30 * time.Second)
	for waiting.Load() == 0 || f.count(`SELECT count(*) FROM reconcile_forum_attachment_outbox`) == 0 {
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			t.Fatalf("no removal reached the storage after a commit:\n%s", out)
		}
		time.Sleep(5 * time.Millisecond)
	}
	invariant("stopped at the removal")
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	rows, outbox := invariant("after SIGKILL")
	if rows == 320 || outbox == 0 {
		t.Fatalf("after SIGKILL: %d rows, %d outbox entries; want some rows purged and their keys in the outbox", rows, outbox)
	}
	t.Logf("killed with %d rows left and %d files in the outbox", rows, outbox)

	close(gate)
	cmd, out = start()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	for running := true; running; {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("second run: %v\n%s", err, out)
			}
			running = false
		default:
			invariant("during the next run")
		}
	}
	if rows, outbox := invariant("after the next run"); rows != 20 || outbox != 0 {
		t.Fatalf("after the next run: %d rows, %d outbox entries; want 20 and 0\n%s", rows, outbox, out)
	}
	left := objects()
	for _, key := range dueKeys {
		if left[key] {
			t.Errorf("object %s survived", key)
		}
	}
	for _, key := range keptKeys {
		if !left[key] {
			t.Errorf("object %s of an active row was removed", key)
		}
	}
}
