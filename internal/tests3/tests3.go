// Package tests3 gives tests a fresh bucket of their own on the S3 server
// named by TEST_S3_ENDPOINT (versitygw, started by scripts/test.sh).
package tests3

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// Bucket is a bucket emptied and removed when its test ends.
type Bucket struct {
	Client                       *minio.Client
	Name                         string
	Endpoint                     string // host:port, plain HTTP
	AccessKey, SecretKey, Region string
}

// New creates a bucket, and fails the test when no S3 server is set: these
// tests prove safety against a real server and must not be skipped.
func New(t testing.TB) *Bucket {
	t.Helper()
	b := &Bucket{
		Endpoint:  os.Getenv("TEST_S3_ENDPOINT"),
		AccessKey: os.Getenv("TEST_S3_ACCESS_KEY"),
		SecretKey: os.Getenv("TEST_S3_SECRET_KEY"),
		Region:    os.Getenv("TEST_S3_REGION"),
		Name:      "t-" + strings.ToLower(uuid.NewString()[:8]),
	}
	if b.Endpoint == "" {
		t.Fatal("TEST_S3_ENDPOINT is not set: run the tests with `make test`, which starts an S3 server")
	}
	client, err := minio.New(b.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(b.AccessKey, b.SecretKey, "")})
	if err != nil {
		t.Fatal(err)
	}
	b.Client = client
	ctx := context.Background()
	if err := client.MakeBucket(ctx, b.Name, minio.MakeBucketOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for obj := range client.ListObjects(ctx, b.Name, minio.ListObjectsOptions{Recursive: true}) {
			_ = client.RemoveObject(ctx, b.Name, obj.Key, minio.RemoveObjectOptions{})
		}
		_ = client.RemoveBucket(ctx, b.Name)
	})
	return b
}

// Put stores a small object under name.
func (b *Bucket) Put(t testing.TB, name string) {
	t.Helper()
	if _, err := b.Client.PutObject(context.Background(), b.Name, name, strings.NewReader("img"), 3, minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
}

// Exists tells whether the object name is there.
func (b *Bucket) Exists(name string) bool {
	_, err := b.Client.StatObject(context.Background(), b.Name, name, minio.StatObjectOptions{})
	return err == nil
}
