// Package inventory reads S3 Inventory reports: a manifest.json naming
// gzipped CSV files that list a bucket's objects, which AWS writes daily or
// weekly for buckets too large to list.
//
// A report is read from the bucket AWS delivered it to (s3://bucket/key of
// manifest.json) or from a local copy of that bucket's tree, as
// `aws s3 sync` makes it. AWS lays a report out as
//
//	<prefix>/<source-bucket>/<config-id>/<date>/manifest.json
//	<prefix>/<source-bucket>/<config-id>/data/<name>.csv.gz
//
// and the manifest names each file by its key in the destination bucket.
// From S3, the files are fetched by those keys from the manifest's
// destinationBucket. Locally, a file whose key ends in "data/<name>" is read
// from <manifest's folder>/../data/<name>: the folder two levels above
// manifest.json stands for <config-id>, whatever the folders above it, or
// the local folders themselves, are called.
//
// Each file is checked against the size and MD5 checksum the manifest gives
// before any of its rows is read, and files are read one at a time, each
// streamed: memory does not grow with the report. A file from S3 is first
// copied to a temporary file (in os.TempDir) while its checksum is
// computed, and removed once read.
package inventory

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"
)

// Fetcher opens an object of a bucket by its full key; *storage.S3 is one.
type Fetcher interface {
	Fetch(ctx context.Context, bucket, key string) (io.ReadCloser, error)
}

// ErrUnsupported marks a report this package cannot read: not in CSV format,
// or without the columns that tell an object's key and age.
var ErrUnsupported = errors.New("unsupported inventory report")

// maxManifest bounds the manifest read: a manifest names one file per few
// million objects, so a larger one is not a manifest.
const maxManifest = 64 << 20

// Report is an inventory report whose manifest has been read.
type Report struct {
	// Created is when AWS began to scan the bucket for the report: an
	// object written or removed since may be missing from it, or listed
	// though gone.
	Created time.Time
	// SourceBucket is the bucket the report lists.
	SourceBucket string

	manifest string  // as given to Open, for errors
	files    []file  // in the manifest's order
	columns  columns // where each field is in a row

	// Where the files are: fetched from bucket, or read from dir.
	fetch  Fetcher
	bucket string
	dir    string
}

// file is a data file the manifest names.
type file struct {
	Key  string `json:"key"`
	Size *int64 `json:"size"` // of the gzipped file; nil if not given
	MD5  string `json:"MD5checksum"`
}

// manifestJSON is manifest.json as AWS writes it.
type manifestJSON struct {
	SourceBucket      string      `json:"sourceBucket"`
	DestinationBucket string      `json:"destinationBucket"`
	CreationTimestamp json.Number `json:"creationTimestamp"` // ms since the epoch, as a string
	FileFormat        string      `json:"fileFormat"`
	FileSchema        string      `json:"fileSchema"`
	Files             []file      `json:"files"`
}

// Open reads the manifest of a report: a local path to manifest.json, or
// s3://bucket/key/of/manifest.json, which needs fetch (nil is fine for a
// local manifest). A report not in CSV format, or without the Key and
// LastModifiedDate columns, gives an error wrapping ErrUnsupported.
func Open(ctx context.Context, manifest string, fetch Fetcher) (*Report, error) {
	r := &Report{manifest: manifest}
	var (
		body io.ReadCloser
		err  error
	)
	if rest, ok := strings.CutPrefix(manifest, "s3://"); ok {
		bucket, key, _ := strings.Cut(rest, "/")
		switch {
		case bucket == "" || key == "":
			return nil, fmt.Errorf("inventory manifest %q: want s3://bucket/key/of/manifest.json", manifest)
		case fetch == nil:
			return nil, fmt.Errorf("inventory manifest %q: reading a report from S3 needs storage.backend s3", manifest)
		}
		body, err = fetch.Fetch(ctx, bucket, key)
		r.fetch = fetch
	} else {
		body, err = os.Open(manifest)
		r.dir = filepath.Join(filepath.Dir(manifest), "..")
	}
	if err != nil {
		return nil, fmt.Errorf("open inventory manifest: %w", err)
	}
	defer body.Close()
	m, err := decodeManifest(body)
	if err != nil {
		return nil, fmt.Errorf("read inventory manifest %s: %w", manifest, err)
	}
	if err := r.fill(m); err != nil {
		return nil, fmt.Errorf("inventory manifest %s: %w", manifest, err)
	}
	return r, nil
}

func decodeManifest(body io.Reader) (*manifestJSON, error) {
	var m manifestJSON
	data, err := io.ReadAll(io.LimitReader(body, maxManifest+1))
	switch {
	case err != nil:
		return nil, err
	case len(data) > maxManifest:
		return nil, fmt.Errorf("larger than %d MiB", maxManifest>>20)
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, err
	}
	return &m, nil
}

// fill checks the manifest and sets up r to read the files it names.
func (r *Report) fill(m *manifestJSON) error {
	if !strings.EqualFold(m.FileFormat, "CSV") {
		return fmt.Errorf("%w: fileFormat %q: only CSV reports can be read (set the inventory's output format to CSV)", ErrUnsupported, m.FileFormat)
	}
	ms, err := m.CreationTimestamp.Int64()
	if err != nil || ms <= 0 {
		return fmt.Errorf("creationTimestamp %q: want milliseconds since 1970", m.CreationTimestamp)
	}
	if m.SourceBucket == "" {
		return errors.New("no sourceBucket")
	}
	r.Created, r.SourceBucket, r.files = time.UnixMilli(ms), m.SourceBucket, m.Files
	if r.columns, err = parseSchema(m.FileSchema); err != nil {
		return err
	}
	if r.fetch != nil {
		r.bucket, err = bucketName(m.DestinationBucket)
		return err
	}
	for _, f := range r.files {
		if _, err := r.localPath(f); err != nil {
			return err
		}
	}
	return nil
}

// bucketName returns the name of a bucket the manifest names by its ARN
// (arn:aws:s3:::name, in any partition) or by name.
func bucketName(dest string) (string, error) {
	name := dest
	if rest, ok := strings.CutPrefix(dest, "arn:"); ok {
		parts := strings.SplitN(rest, ":", 5) // partition, service, region, account, name
		if len(parts) != 5 || parts[1] != "s3" {
			return "", fmt.Errorf("destinationBucket %q: want arn:aws:s3:::bucket", dest)
		}
		name = parts[4]
	}
	if name == "" || strings.ContainsAny(name, ":/") {
		return "", fmt.Errorf("destinationBucket %q: want arn:aws:s3:::bucket", dest)
	}
	return name, nil
}

// localPath returns where the data file f of a local report is: key
// ".../data/<name>" is read from r.dir/data/<name> (see the package doc).
func (r *Report) localPath(f file) (string, error) {
	dir, name := path.Split(f.Key)
	if path.Base(dir) != "data" || name == "" || name == "." || name == ".." || strings.ContainsRune(name, filepath.Separator) {
		return "", fmt.Errorf("file key %q: want <config-id>/data/<file>, as AWS names the files", f.Key)
	}
	return filepath.Join(r.dir, "data", name), nil
}

// where names the data file f for errors.
func (r *Report) where(f file) string {
	if r.fetch != nil {
		return "s3://" + r.bucket + "/" + f.Key
	}
	p, _ := r.localPath(f) // checked by fill
	return p
}
