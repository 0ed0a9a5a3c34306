// Package inventorytest builds S3 Inventory reports for tests, laid out,
// encoded and quoted as AWS writes them.
package inventorytest

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/minio/minio-go/v7"

	"github.com/reconcile/reconcile/internal/tests3"
)

// Schemas of a report of current versions, and of all versions.
const (
	Schema          = "Bucket, Key, Size, LastModifiedDate, ETag, StorageClass"
	VersionedSchema = "Bucket, Key, VersionId, IsLatest, IsDeleteMarker, Size, LastModifiedDate, ETag, StorageClass"
)

// Row is an object a report lists.
type Row struct {
	Key          string // as stored; written URL-encoded
	Size         int64
	LastModified time.Time
	// In a versioned report (VersionedSchema): a row that is not the
	// latest version of its key, or is a delete marker.
	NotLatest, DeleteMarker bool
}

// Report is a report to build; zero fields take the defaults said.
type Report struct {
	SourceBucket      string    // "forum-media"
	DestinationBucket string    // "inventories"; Upload sets it
	Prefix            string    // the destination prefix; none
	ConfigID          string    // "daily"
	Created           time.Time // time.Now()
	Format            string    // "CSV"
	Schema            string    // Schema
	// EncodeKey writes a key in a CSV field: url.QueryEscape, as AWS
	// does (a space as '+'), when nil.
	EncodeKey func(string) string
	Files     [][]Row // one data file each
}

func (r Report) withDefaults() Report {
	or := func(s *string, def string) {
		if *s == "" {
			*s = def
		}
	}
	or(&r.SourceBucket, "forum-media")
	or(&r.DestinationBucket, "inventories")
	or(&r.ConfigID, "daily")
	or(&r.Format, "CSV")
	or(&r.Schema, Schema)
	if r.Created.IsZero() {
		r.Created = time.Now()
	}
	if r.EncodeKey == nil {
		r.EncodeKey = url.QueryEscape
	}
	return r
}

// Objects returns the report's objects by their keys in the destination
// bucket, and the key of its manifest.json.
func (r Report) Objects(t testing.TB) (manifest string, objects map[string][]byte) {
	t.Helper()
	r = r.withDefaults()
	base := path.Join(r.Prefix, r.SourceBucket, r.ConfigID)
	objects = make(map[string][]byte)
	type file struct {
		Key  string `json:"key"`
		Size int    `json:"size"`
		MD5  string `json:"MD5checksum"`
	}
	files := []file{}
	for _, rows := range r.Files {
		key := path.Join(base, "data", uuid.NewString()+".csv.gz")
		data := r.gzipCSV(t, rows)
		sum := md5.Sum(data)
		objects[key] = data
		files = append(files, file{Key: key, Size: len(data), MD5: hex.EncodeToString(sum[:])})
	}
	m, err := json.MarshalIndent(map[string]any{
		"sourceBucket":      r.SourceBucket,
		"destinationBucket": "arn:aws:s3:::" + r.DestinationBucket,
		"version":           "2016-11-30",
		"creationTimestamp": strconv.FormatInt(r.Created.UnixMilli(), 10),
		"fileFormat":        r.Format,
		"fileSchema":        r.Schema,
		"files":             files,
	}, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	manifest = path.Join(base, r.Created.UTC().Format("2006-01-02T15-04Z"), "manifest.json")
	objects[manifest] = m
	return manifest, objects
}

// gzipCSV writes rows as AWS does: every field quoted, no header.
func (r Report) gzipCSV(t testing.TB, rows []Row) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	if err != nil {
		t.Fatal(err)
	}
	names := strings.Split(r.Schema, ",")
	fields := make([]string, len(names))
	for _, row := range rows {
		for i, name := range names {
			fields[i] = r.field(strings.TrimSpace(name), row)
		}
		if _, err := zw.Write([]byte(`"` + strings.Join(fields, `","`) + "\"\n")); err != nil {
			t.Fatal(err)
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// field returns the CSV field of column name for row, quotes doubled.
func (r Report) field(name string, row Row) string {
	var v string
	switch name {
	case "Bucket":
		v = r.SourceBucket
	case "Key":
		v = r.EncodeKey(row.Key)
	case "VersionId":
		v = "v" + strconv.FormatInt(row.LastModified.UnixNano(), 36)
	case "IsLatest":
		v = strconv.FormatBool(!row.NotLatest)
	case "IsDeleteMarker":
		v = strconv.FormatBool(row.DeleteMarker)
	case "Size":
		if !row.DeleteMarker {
			v = strconv.FormatInt(row.Size, 10)
		}
	case "LastModifiedDate":
		v = row.LastModified.UTC().Format("2006-01-02T15:04:05.000Z")
	case "ETag":
		sum := md5.Sum([]byte(row.Key))
		v = hex.EncodeToString(sum[:])
	case "StorageClass":
		v = "STANDARD"
	}
	return strings.ReplaceAll(v, `"`, `""`)
}

// WriteDir writes the report under dir as `aws s3 sync` copies the
// destination bucket, and returns the path of its manifest.json.
func (r Report) WriteDir(t testing.TB, dir string) string {
	t.Helper()
	manifest, objects := r.Objects(t)
	for key, data := range objects {
		p := filepath.Join(dir, filepath.FromSlash(key))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return filepath.Join(dir, filepath.FromSlash(manifest))
}

// Upload puts the report into bucket b, as its destination bucket, and
// returns the s3:// address of its manifest.json.
func (r Report) Upload(t testing.TB, b *tests3.Bucket) string {
	t.Helper()
	r.DestinationBucket = b.Name
	manifest, objects := r.Objects(t)
	for key, data := range objects {
		if _, err := b.Client.PutObject(context.Background(), b.Name, key, bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	return "s3://" + b.Name + "/" + manifest
}
