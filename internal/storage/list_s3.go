package storage

import (
	"context"
	"fmt"
	"strings"

	"github.com/minio/minio-go/v7"
)

// listWhy says, in an AccessDenied error, what the listing was for.
const listWhy = "to list the files under it"

// List calls fn for every object (and refused entry) under opts.Prefix
// after opts.StartAfter, in byte order of keys (the order of S3 listings,
// and of Go's string comparison). An error of fn stops the listing and is
// returned as it is.
//
// It reads ListObjectsV2 pages of up to 1000 objects one after another, so
// memory stays flat; keys come without the configured prefix. A folder
// marker ("a/"), a key ValidateKey refuses and a name the listing may have
// mangled (see listable) are listed as refused. A mangled name may not be
// where its true name sorts, so it alone is not held to the order: resume
// after the key before it. Any other key out of order, at or before
// opts.StartAfter, or outside the prefix is an error, since a consumer
// merging the listing with sorted keys would take the keys it skipped for
// missing. Credentials without s3:ListBucket give an error wrapping
// ErrMisconfigured.
func (s *S3) List(ctx context.Context, opts ListOptions, fn func(Object) error) error {
	if _, _, err := splitPrefix(opts.Prefix); err != nil {
		return err
	}
	fetchOwner := false
	lo := minio.ListObjectsOptions{
		Prefix:     s.prefix + opts.Prefix,
		FetchOwner: &fetchOwner,
		Recursive:  true,
	}
	if opts.StartAfter != "" {
		lo.StartAfter = s.prefix + opts.StartAfter
	}
	last := lo.StartAfter
	for obj := range s.client.ListObjectsIter(ctx, s.bucket, lo) {
		if obj.Err != nil {
			return s.redact(s.listError(lo.Prefix, listWhy, obj.Err))
		}
		if !strings.HasPrefix(obj.Key, lo.Prefix) {
			return fmt.Errorf("list bucket %q prefix %q: the server listed %q, outside the prefix", s.bucket, lo.Prefix, obj.Key)
		}
		o := Object{Key: obj.Key[len(s.prefix):], Size: obj.Size, ModTime: obj.LastModified}
		switch {
		case !listable(obj.Key):
			o.Refused = fmt.Errorf("%q: %w", o.Key, errMangled)
		case obj.Key <= last:
			return fmt.Errorf("list bucket %q prefix %q: the server listed %q after %q, out of order: %w", s.bucket, lo.Prefix, obj.Key, last, errUnordered)
		case strings.HasSuffix(o.Key, "/") || o.Key == "":
			last = obj.Key
			o.Refused = notFile(o.Key, "folder marker")
		default:
			last = obj.Key
			o.Refused = ValidateKey(o.Key)
		}
		if err := fn(o); err != nil {
			return err
		}
	}
	// The listing ends without an error when ctx is done between pages.
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("list bucket %q prefix %q: %w", s.bucket, lo.Prefix, err)
	}
	return nil
}

// CheckList tells whether listing under prefix is allowed, before any work
// depends on it: it lists one object under prefix. Credentials without
// s3:ListBucket give an error wrapping ErrMisconfigured that names the
// bucket and prefix.
func (s *S3) CheckList(ctx context.Context, prefix string) error {
	if _, _, err := splitPrefix(prefix); err != nil {
		return err
	}
	fetchOwner := false
	lo := minio.ListObjectsOptions{
		Prefix:     s.prefix + prefix,
		FetchOwner: &fetchOwner,
		Recursive:  true,
		MaxKeys:    1,
	}
	for obj := range s.client.ListObjectsIter(ctx, s.bucket, lo) {
		if obj.Err != nil {
			return s.redact(s.listError(lo.Prefix, listWhy, obj.Err))
		}
		break // one page is enough
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("list bucket %q prefix %q: %w", s.bucket, lo.Prefix, err)
	}
	return nil
}
