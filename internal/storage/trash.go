package storage

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// WithTrash has Remove move each file into a trash under prefix (".trash/":
// a folder of the root, or of the S3 prefix, like a key's) instead of
// deleting it, for an operator's undo: Untrash puts files back, EmptyTrash
// deletes them for good. Every decision of Remove stays the same, and a
// moved file is Removed. Keys in the trash are refused, as unsafe. now is
// the clock that names the trash's buckets; nil is time.Now.
//
// A file trashed at t goes to <prefix><bucket>/<key>, the bucket being the
// UTC hour of t ("2026-11-30T01"): EmptyTrash deletes whole buckets, so a
// file outlives its keep by an hour at most, and a week's trash is 168
// folders; neither emptying nor Untrash reads a file's time, which S3 sets
// anew on every copy. The same key trashed twice in one hour goes to the
// next bucket of that hour ("2026-11-30T01.1", ".2", ...): no copy
// overwrites another, and a key never changes its name in the trash.
func WithTrash(prefix string, now func() time.Time) Option {
	return func(o *options) { o.trash = &trash{dir: prefix, now: now} }
}

// trash is where removed files go: dir is the trash folder's path under the
// root or prefix, without a trailing "/".
type trash struct {
	dir string
	now func() time.Time
}

// maxTrashTries bounds the buckets of one hour that a removal tries before
// it gives up and keeps the file: a key trashed this often in an hour is
// no upload a user made.
const maxTrashTries = 100

// errNoTrash is the error of Untrash and EmptyTrash without WithTrash.
var errNoTrash = errors.New("no trash is configured (storage.trash.prefix)")

// errNotInTrash is the error of Untrash for a key with no copy in the trash.
var errNotInTrash = errors.New("no copy in the trash")

// errTaken is the error of Untrash for a key whose place holds a file
// again: a new upload is never overwritten.
var errTaken = errors.New("a file exists at its place again; not overwritten")

// checkTrash returns the trash of WithTrash, its prefix checked and made
// dir, or nil without one.
func checkTrash(t *trash) (*trash, error) {
	if t == nil {
		return nil, nil
	}
	dir := strings.TrimRight(t.dir, "/")
	if dir == "" {
		return nil, fmt.Errorf("%w: trash prefix %q: must name a folder, such as .trash/", ErrMisconfigured, t.dir)
	}
	if err := ValidateKey(dir); err != nil {
		return nil, fmt.Errorf("%w: trash prefix %q: %w", ErrMisconfigured, t.dir, err)
	}
	now := t.now
	if now == nil {
		now = time.Now
	}
	return &trash{dir: dir, now: now}, nil
}

// checkKey is ValidateKey, refusing the keys in the trash too.
func (t *trash) checkKey(key string) error {
	if err := ValidateKey(key); err != nil {
		return err
	}
	return t.refuse(key)
}

// refuse refuses a key in the trash (or the trash folder itself): no row
// of the application names one, and removing one would undo the undo.
func (t *trash) refuse(key string) error {
	if t != nil && (key == t.dir || strings.HasPrefix(key, t.dir+"/")) {
		return unsafeKey(key, "is in the trash ("+t.dir+"/)")
	}
	return nil
}

// hour is the start of the trash's bucket for a file trashed now.
func (t *trash) hour() time.Time {
	return t.now().UTC().Truncate(time.Hour)
}

// bucketLayout names a bucket by the UTC hour it starts.
const bucketLayout = "2006-01-02T15"

// bucket is a folder of the trash: the files trashed in one UTC hour, the
// seq'th such folder of that hour.
type bucket struct {
	name  string
	start time.Time
	seq   int
}

func newBucket(start time.Time, seq int) bucket {
	name := start.Format(bucketLayout)
	if seq > 0 {
		name += "." + strconv.Itoa(seq)
	}
	return bucket{name: name, start: start, seq: seq}
}

// parseBucket reads a bucket's name; ok is false for any other name, which
// the trash leaves alone.
func parseBucket(name string) (b bucket, ok bool) {
	hour, seqText, dotted := strings.Cut(name, ".")
	start, err := time.Parse(bucketLayout, hour)
	if err != nil {
		return bucket{}, false
	}
	seq := 0
	if dotted {
		if seq, err = strconv.Atoi(seqText); err != nil || seq < 1 {
			return bucket{}, false
		}
	}
	b = newBucket(start, seq)
	return b, b.name == name // the one spelling of each bucket
}

// end is when the last file of b was trashed, at the latest.
func (b bucket) end() time.Time { return b.start.Add(time.Hour) }

// newestFirst sorts buckets from the last trashed to the first.
func newestFirst(buckets []bucket) {
	slices.SortFunc(buckets, func(a, b bucket) int {
		return cmp.Or(b.start.Compare(a.start), cmp.Compare(b.seq, a.seq))
	})
}
