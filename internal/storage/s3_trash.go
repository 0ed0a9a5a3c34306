package storage

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"
	"golang.org/x/sync/errgroup"
)

// maxCopies bounds the CopyObject requests in flight: S3 copies one object
// per request, so latency is what costs.
const maxCopies = 16

// discard deletes the objects names, or, with a trash, copies them into it
// and deletes those copied: an object that could not be copied is kept,
// with the copy's error. seen is each name's modification time as the
// removal decided on it. It returns the names that were already gone, the
// error of each name not confirmed as deleted, as deleteInParallel, and
// the time of each object written again meanwhile, which stays.
func (s *S3) discard(ctx context.Context, names []string, seen map[string]time.Time) (gone map[string]bool, failed map[string]error, rewritten map[string]time.Time) {
	if s.trash == nil {
		gone, failed = s.deleteInParallel(ctx, names)
		return gone, failed, nil
	}
	copied, gone, failed := s.copyToTrash(ctx, names)
	// A copy takes time, a large one seconds: an upload under the name
	// meanwhile is looked for again before the delete, which would take
	// it, with its old version in the trash.
	now, lost := s.lookup(ctx, copied)
	rewritten = make(map[string]time.Time)
	copied = slices.DeleteFunc(copied, func(name string) bool {
		switch st, ok := now[name]; {
		case lost[name] != nil:
			failed[name] = lost[name]
		case !ok:
			gone[name] = true // deleted by someone else meanwhile
		case !st.modTime.Equal(seen[name]):
			rewritten[name] = st.modTime
		default:
			return false
		}
		return true
	})
	deletedGone, deleteFailed := s.deleteInParallel(ctx, copied)
	maps.Copy(gone, deletedGone)
	maps.Copy(failed, deleteFailed)
	return gone, failed, rewritten
}

// copyToTrash copies the objects names into this hour's trash bucket with
// server-side CopyObject requests, and returns the names copied, in order,
// those the copy found gone, and the error of each name not copied.
func (s *S3) copyToTrash(ctx context.Context, names []string) (copied []string, gone map[string]bool, failed map[string]error) {
	gone = make(map[string]bool)
	to, failed := s.trashNames(ctx, names)
	done := make(map[string]bool, len(to))
	var (
		mu sync.Mutex
		g  errgroup.Group
	)
	g.SetLimit(maxCopies)
	for name, dst := range to {
		g.Go(func() error {
			_, err := s.client.CopyObject(ctx,
				minio.CopyDestOptions{Bucket: s.bucket, Object: dst},
				minio.CopySrcOptions{Bucket: s.bucket, Object: name})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				done[name] = true
			case minio.ToErrorResponse(err).Code == minio.NoSuchKey:
				gone[name] = true // deleted by someone else meanwhile
			default:
				failed[name] = fmt.Errorf("copy into the trash as %q: %w", dst, err)
			}
			return nil
		})
	}
	g.Wait()
	for _, name := range names {
		if done[name] {
			copied = append(copied, name)
		}
	}
	return copied, gone, failed
}

// trashNames names a place in the trash for each of names: in this hour's
// first bucket that holds no copy of it yet, as a listing tells. It returns
// the error of each name it could not place.
func (s *S3) trashNames(ctx context.Context, names []string) (to map[string]string, failed map[string]error) {
	to, failed = make(map[string]string, len(names)), make(map[string]error)
	start := s.trash.hour()
	left := names
	for seq := 0; len(left) > 0 && seq < maxTrashTries; seq++ {
		b := newBucket(start, seq)
		from := make(map[string]string, len(left)) // name in the trash -> name
		candidates := make([]string, len(left))
		for i, name := range left {
			candidates[i] = s.trashName(b, strings.TrimPrefix(name, s.prefix))
			from[candidates[i]] = name
		}
		found, lookupFailed := s.lookup(ctx, candidates)
		var taken []string
		for _, c := range candidates {
			_, exists := found[c]
			switch {
			case lookupFailed[c] != nil:
				failed[from[c]] = fmt.Errorf("look for a place in the trash: %w", lookupFailed[c])
			case exists:
				taken = append(taken, from[c]) // trashed in this bucket already
			default:
				to[from[c]] = c
			}
		}
		left = taken
	}
	for _, name := range left {
		failed[name] = fmt.Errorf("trashed %d times this hour already; kept", maxTrashTries)
	}
	return to, failed
}

// trashName is the name of the copy of key in the trash bucket b.
func (s *S3) trashName(b bucket, key string) string {
	return s.prefix + s.trash.dir + "/" + b.name + "/" + key
}

// buckets lists the trash's buckets, newest first, from a listing of the
// trash folder's folders.
func (s *S3) buckets(ctx context.Context) ([]bucket, error) {
	if s.trash == nil {
		return nil, errNoTrash
	}
	prefix := s.prefix + s.trash.dir + "/"
	var buckets []bucket
	for obj := range s.client.ListObjectsIter(ctx, s.bucket, minio.ListObjectsOptions{Prefix: prefix}) {
		if obj.Err != nil {
			return nil, s.redact(s.listError(prefix, "to read the trash", obj.Err))
		}
		name, folder := strings.CutSuffix(strings.TrimPrefix(obj.Key, prefix), "/")
		if b, ok := parseBucket(name); folder && ok {
			buckets = append(buckets, b)
		}
	}
	// A listing ends without an error when ctx is done between pages.
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("list the trash: %w", err)
	}
	newestFirst(buckets)
	return buckets, nil
}

// EmptyTrash deletes the trash's buckets that ended before before (every
// object in them was trashed before it), with bulk DeleteObjects requests
// as it lists them, and returns how many objects went. Names in the trash
// that are no bucket are left alone, and so are objects whose names a
// listing may mangle (see listable), on servers that do not URL-encode
// listings. The trash can be emptied by an S3 lifecycle rule instead (see
// the README).
func (s *S3) EmptyTrash(ctx context.Context, before time.Time) (int, error) {
	buckets, err := s.buckets(ctx)
	if err != nil {
		return 0, fmt.Errorf("empty the trash: %w", err)
	}
	removed := 0
	for _, b := range buckets {
		if b.end().After(before) {
			continue
		}
		n, err := s.deleteFolder(ctx, s.trashName(b, ""))
		removed += n
		if err != nil {
			return removed, fmt.Errorf("empty the trash: %w", err)
		}
	}
	return removed, nil
}

// deleteFolder deletes every object under prefix and returns how many went.
func (s *S3) deleteFolder(ctx context.Context, prefix string) (int, error) {
	removed := 0
	batch := make([]string, 0, maxDeleteKeys)
	flush := func() error {
		gone, failed := s.deleteObjects(ctx, batch)
		removed += len(batch) - len(gone) - len(failed)
		batch = batch[:0]
		if len(failed) == 0 {
			return nil
		}
		first := slices.Sorted(maps.Keys(failed))[0]
		return s.redact(fmt.Errorf("%d objects not deleted, such as %q: %w", len(failed), first, failed[first]))
	}
	for obj := range s.client.ListObjectsIter(ctx, s.bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if obj.Err != nil {
			return removed, s.redact(s.listError(prefix, "to empty the trash", obj.Err))
		}
		if !listable(obj.Key) {
			// The listing may have mangled the name (see listable): a
			// delete by it could delete nothing and look confirmed.
			continue
		}
		if batch = append(batch, obj.Key); len(batch) == maxDeleteKeys {
			if err := flush(); err != nil {
				return removed, err
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return removed, fmt.Errorf("list bucket %q prefix %q: %w", s.bucket, prefix, err)
	}
	return removed, flush()
}

// Untrash puts back the newest trashed copy of each key and returns one
// error for each: nil when it is back. It refuses a key whose object exists
// again (a new upload is not overwritten), a key with no copy in the trash,
// and a key Check refuses. The object is copied back, so its LastModified
// is the time of the copy, and its copy in the trash is then deleted.
//
// S3 has no copy that refuses to overwrite: an upload to the key between
// the check and the copy, milliseconds, would be overwritten.
func (s *S3) Untrash(ctx context.Context, keys []string) []error {
	errs := make([]error, len(keys))
	buckets, err := s.buckets(ctx)
	if err != nil {
		for i := range errs {
			errs[i] = fmt.Errorf("untrash: %w", err)
		}
		return errs
	}
	for i, key := range keys {
		if errs[i] = s.trash.checkKey(key); errs[i] == nil {
			errs[i] = s.untrash(ctx, key, buckets)
		}
	}
	return errs
}

// untrash puts back the copy of key in the first of buckets that has one.
func (s *S3) untrash(ctx context.Context, key string, buckets []bucket) error {
	fail := func(err error) error { return s.redact(fmt.Errorf("untrash %q: %w", key, err)) }
	place := s.prefix + key
	there, err := s.statObject(ctx, place)
	switch {
	case err != nil:
		return fail(err)
	case len(there) > 0:
		return fail(errTaken)
	}
	names := make([]string, len(buckets))
	for i, b := range buckets {
		names[i] = s.trashName(b, key)
	}
	found, failed := s.lookup(ctx, names)
	from := ""
	for _, name := range names {
		if err := failed[name]; err != nil {
			return fail(err)
		}
		if _, ok := found[name]; ok {
			from = name
			break
		}
	}
	if from == "" {
		return fail(errNotInTrash)
	}
	_, err = s.client.CopyObject(ctx,
		minio.CopyDestOptions{Bucket: s.bucket, Object: place},
		minio.CopySrcOptions{Bucket: s.bucket, Object: from})
	if err != nil {
		return fail(fmt.Errorf("copy %q back: %w", from, err))
	}
	if err := s.client.RemoveObject(ctx, s.bucket, from, minio.RemoveObjectOptions{}); err != nil {
		return fail(fmt.Errorf("it is back, but its copy %q stays in the trash: %w", from, err))
	}
	return nil
}
