package storage

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/minio/minio-go/v7"
)

// Fetch opens the object key of bucket for reading: the files of an S3
// Inventory report, which AWS delivers to a bucket of its own. Unlike the
// other calls it takes the object's full name in any bucket the credentials
// may read: the configured bucket and prefix do not apply. A missing object
// fails here, not at the first read. Its errors, reading included, never
// contain the credentials; credentials without s3:GetObject give an error
// wrapping ErrMisconfigured.
func (s *S3) Fetch(ctx context.Context, bucket, key string) (io.ReadCloser, error) {
	// Core's GetObject sends its one request now, where Client's would
	// wait for the first read, or send a HEAD first to Stat.
	body, _, _, err := minio.Core{Client: s.client}.GetObject(ctx, bucket, key, minio.GetObjectOptions{})
	if err != nil {
		if minio.ToErrorResponse(err).Code == "AccessDenied" {
			err = fmt.Errorf("%w: s3:GetObject permission is needed: %w", ErrMisconfigured, err)
		}
		return nil, s.redact(fmt.Errorf("get object %q of bucket %q: %w", key, bucket, err))
	}
	return &fetched{ReadCloser: body, s: s, bucket: bucket, key: key}, nil
}

// fetched is an object being read, whose read errors are redacted.
type fetched struct {
	io.ReadCloser
	s           *S3
	bucket, key string
}

func (f *fetched) Read(p []byte) (int, error) {
	n, err := f.ReadCloser.Read(p)
	if err != nil && !errors.Is(err, io.EOF) {
		err = f.s.redact(fmt.Errorf("read object %q of bucket %q: %w", f.key, f.bucket, err))
	}
	return n, err
}
