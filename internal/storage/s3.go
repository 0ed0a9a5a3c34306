package storage

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"golang.org/x/sync/errgroup"
)

// maxDeleteKeys is the most keys one S3 DeleteObjects request may carry.
const maxDeleteKeys = 1000

// errNoResult is returned for a key the bulk delete response does not
// mention: only a key the server confirms is counted as removed.
var errNoResult = errors.New("not confirmed by the delete response")

// S3Config says where the files are stored in S3.
type S3Config struct {
	Endpoint  string // host:port, without a scheme
	Bucket    string
	Prefix    string // "media" and "media/" both store key k as "media/k"; "" stores it as "k"
	AccessKey string
	SecretKey string
	Region    string // optional; looked up from the bucket when empty
	UseSSL    bool

	// Transport is optional; tests use it to trust a TLS test server.
	Transport http.RoundTripper
}

// S3 stores files as objects under a prefix in one bucket, like
// django-storages' S3 backend with its location.
type S3 struct {
	client    *minio.Client
	transport http.RoundTripper
	bucket    string
	prefix    string // "" or ending in "/"
	secrets   []string
	trash     *trash // nil: objects are deleted
}

// NewS3 connects to the bucket and checks that it exists. Its errors never
// contain the access key or the secret key.
func NewS3(ctx context.Context, cfg S3Config, opts ...Option) (*S3, error) {
	secrets := []string{cfg.SecretKey, cfg.AccessKey}
	if cfg.Endpoint == "" {
		return nil, fmt.Errorf("%w: s3 endpoint is empty", ErrMisconfigured)
	}
	if cfg.Bucket == "" {
		return nil, fmt.Errorf("%w: s3 bucket is empty", ErrMisconfigured)
	}
	prefix, err := s3Prefix(cfg.Prefix)
	if err != nil {
		return nil, redact(fmt.Errorf("%w: s3 prefix %q: %w", ErrMisconfigured, cfg.Prefix, err), secrets)
	}
	o := applyOptions(opts)
	tr, err := checkTrash(o.trash)
	if err != nil {
		return nil, err
	}
	transport := cfg.Transport
	if transport == nil {
		if transport, err = minio.DefaultTransport(cfg.UseSSL); err != nil {
			return nil, fmt.Errorf("s3 transport: %w", err)
		}
	}
	client, err := minio.New(cfg.Endpoint, &minio.Options{
		Creds:     credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey, ""),
		Secure:    cfg.UseSSL,
		Region:    cfg.Region,
		Transport: observedTransport{next: transport, observe: o.observe},
	})
	if err != nil {
		return nil, redact(fmt.Errorf("%w: s3 endpoint %q: %w", ErrMisconfigured, cfg.Endpoint, err), secrets)
	}
	s := &S3{client: client, transport: transport, bucket: cfg.Bucket, prefix: prefix, secrets: secrets, trash: tr}
	ok, err := client.BucketExists(ctx, cfg.Bucket)
	if err != nil {
		s.Close()
		if refusedCredentials(err) {
			err = fmt.Errorf("%w: %w", ErrMisconfigured, err)
		}
		return nil, redact(fmt.Errorf("check s3 bucket %q at %s: %w", cfg.Bucket, cfg.Endpoint, err), secrets)
	}
	if !ok {
		s.Close()
		return nil, redact(fmt.Errorf("%w: s3 bucket %q at %s does not exist", ErrMisconfigured, cfg.Bucket, cfg.Endpoint), secrets)
	}
	return s, nil
}

// s3Prefix returns the configured prefix as objectName wants it: "media"
// and "media/" both become "media/", and "" stays "". The prefix is trusted
// configuration, but a prefix with ".." would let every key land outside it,
// so it must be a valid key itself.
func s3Prefix(prefix string) (string, error) {
	prefix = strings.TrimRight(prefix, "/")
	if prefix == "" {
		return "", nil
	}
	if err := ValidateKey(prefix); err != nil {
		return "", err
	}
	return prefix + "/", nil
}

// refusedCredentials tells a server that refused the keys from one that
// could not be reached.
func refusedCredentials(err error) bool {
	switch minio.ToErrorResponse(err).Code {
	case "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken":
		return true
	}
	return false
}

// Check reports, for each key, whether it is safe to remove. It makes no
// request: a missing object is fine, and S3 has no links to follow.
func (s *S3) Check(_ context.Context, keys []string) []error {
	errs := make([]error, len(keys))
	for i, key := range keys {
		errs[i] = s.trash.checkKey(key)
	}
	return errs
}

// Stat tells, for each key, whether its object exists, when it was last
// modified and its size, from listings of the keys' folders (see lookup),
// not a request per object. Once ctx is done, the remaining valid keys fail
// with its error.
func (s *S3) Stat(ctx context.Context, keys []string) []FileInfo {
	infos := make([]FileInfo, len(keys))
	at, names := make(map[string][]int, len(keys)), make([]string, 0, len(keys))
	for i, key := range keys {
		name, err := objectName(s.prefix, key)
		if err == nil {
			err = s.trash.refuse(key)
		}
		if err != nil {
			infos[i].Err = err
			continue
		}
		if _, ok := at[name]; !ok {
			names = append(names, name)
		}
		at[name] = append(at[name], i)
	}
	for chunk := range slices.Chunk(names, maxDeleteKeys) {
		found, failed := s.lookup(ctx, chunk)
		for _, name := range chunk {
			for _, i := range at[name] {
				if err := failed[name]; err != nil {
					infos[i].Err = s.redact(fmt.Errorf("stat %q: %w", keys[i], err))
				} else if st, ok := found[name]; ok {
					infos[i] = FileInfo{Exists: true, ModTime: st.modTime, Changed: st.modTime, Size: st.size}
				}
			}
		}
	}
	return infos
}

// Remove removes the objects of removals and returns one Result for each.
// It works through at most 1000 distinct keys at a time: it lists their
// folders (see lookup), then removes with one bulk DeleteObjects request the
// objects that are there and were not modified since their removal was
// queued (see rewrittenS3). An object absent from the listing is Missing,
// and no delete is sent for it. A request can succeed while single keys
// fail, so an object counts as Removed only when the response confirms it.
// A key listed twice is removed once, then Missing. Once ctx is done, the
// remaining valid keys fail with its error. With a trash (WithTrash) each
// object is first copied into it, and one not copied is kept, with the
// copy's error.
func (s *S3) Remove(ctx context.Context, removals []Removal) []Result {
	results := make([]Result, len(removals))
	at, names := make(map[string][]int, len(removals)), make([]string, 0, len(removals))
	for i, r := range removals {
		name, err := objectName(s.prefix, r.Key)
		if err == nil {
			err = s.trash.refuse(r.Key)
		}
		switch {
		case err != nil:
			results[i].Err = err
			continue
		case r.QueuedAt.IsZero():
			results[i].Err = fmt.Errorf("remove %q: %w", r.Key, errNoQueuedAt)
			continue
		}
		if _, ok := at[name]; !ok {
			names = append(names, name)
		}
		at[name] = append(at[name], i)
	}
	for chunk := range slices.Chunk(names, maxDeleteKeys) {
		s.removeChunk(ctx, chunk, removals, at, results)
	}
	return results
}

// removeChunk removes at most maxDeleteKeys distinct names, at[name] being
// the indexes of their removals, and fills in their results.
func (s *S3) removeChunk(ctx context.Context, names []string, removals []Removal, at map[string][]int, results []Result) {
	fail := func(i int, err error) {
		results[i] = Result{Err: s.redact(fmt.Errorf("remove %q: %w", removals[i].Key, err))}
	}
	var look []string
	listed := map[string]time.Time{}
	for _, name := range names {
		if t := removals[at[name][0]].Listed; !t.IsZero() {
			listed[name] = t
		} else {
			look = append(look, name)
		}
	}
	found, failed := s.lookup(ctx, look)
	for name, t := range listed {
		found[name] = objectStat{modTime: t}
	}
	// Each name is decided removal by removal, in order, as Local does: a
	// removal queued before the object was written again is Rewritten; the
	// first removal queued after it deletes the object, and the later ones
	// share its result.
	deleter := make(map[string]int)
	var doomed []string
	for _, name := range names {
		st, exists := found[name]
		modTime := st.modTime
		for _, i := range at[name] {
			switch {
			case failed[name] != nil:
				fail(i, failed[name])
				continue
			case !exists:
				results[i] = Result{Outcome: Missing}
				continue
			case rewrittenS3(modTime, removals[i].QueuedAt):
				results[i] = Result{Outcome: Rewritten, ModTime: modTime}
				continue
			}
			deleter[name] = i
			doomed = append(doomed, name)
			break // the later removals of name share the deleter's result
		}
	}
	seen := make(map[string]time.Time, len(doomed))
	for _, name := range doomed {
		seen[name] = found[name].modTime
	}
	gone, failed, rewritten := s.discard(ctx, doomed, seen)
	for _, name := range doomed {
		first := deleter[name]
		for _, i := range at[name] {
			switch {
			case i < first:
			case failed[name] != nil:
				fail(i, failed[name])
			case !rewritten[name].IsZero():
				results[i] = Result{Outcome: Rewritten, ModTime: rewritten[name]}
			case i == first && !gone[name]:
				results[i] = Result{Outcome: Removed}
			default:
				results[i] = Result{Outcome: Missing}
			}
		}
	}
}

// rewrittenS3 reports whether an object last modified at lastModified may
// have been written again since its removal was queued at queuedAt, and must
// be kept. S3 keeps LastModified to the second (AWS lists it as
// "2025-10-04T12:00:07.000Z"), so an object modified in the same second as
// queuedAt, even before it, is kept: fail closed.
func rewrittenS3(lastModified, queuedAt time.Time) bool {
	return !lastModified.Before(queuedAt.Truncate(time.Second))
}

// maxListings bounds the listings one call runs at once: on S3, latency
// rather than bandwidth is what costs.
const maxListings = 4

// listPage is the most objects one listing request returns (S3's own
// bound); minPage the fewest a listing asks for. Pages are sized to the
// names they should serve: every object listed is bytes on the wire.
const (
	listPage = 1000
	minPage  = 32
)

// errNoModTime is the error of an object listed without a modification
// time: without it a rewritten object cannot be told apart.
var errNoModTime = errors.New("the listing gave no LastModified")

// objectStat is what a listing tells of an object.
type objectStat struct {
	modTime time.Time
	size    int64
}

// lookup returns the modification time and size of each of names (distinct
// object names) that exists, and the error of each name it could not look up.
//
// It lists ranges of names rather than asking for each object. A listing
// starts just before the first name not yet looked up and reads one page
// (1000 objects) at most: where the names are dense (a day folder of
// Django's dated layout, or a bucket where most objects are due) one
// request serves up to 1000 of them, across folders; where they are
// sparse, the next request jumps over the objects between them, so no name
// costs more than one request. The first page tells which: the names it
// leaves are cut into maxListings runs, listed concurrently, since latency
// is what costs on S3. Only a name that a listing may not give back as it
// is (see listable) is asked for alone.
func (s *S3) lookup(ctx context.Context, names []string) (found map[string]objectStat, failed map[string]error) {
	found = make(map[string]objectStat, len(names))
	failed = make(map[string]error)
	if len(names) == 0 {
		return found, failed
	}
	if err := ctx.Err(); err != nil {
		for _, name := range names {
			failed[name] = err
		}
		return found, failed
	}
	var listed, alone []string
	for _, name := range names {
		if listable(name) {
			listed = append(listed, name)
		} else {
			alone = append(alone, name)
		}
	}
	slices.Sort(listed)
	var (
		mu sync.Mutex
		g  errgroup.Group
	)
	record := func(run []string, stats map[string]objectStat, err error) {
		mu.Lock()
		defer mu.Unlock()
		for _, name := range run {
			st, ok := stats[name]
			switch {
			case err != nil:
				failed[name] = err
			case ok && st.modTime.IsZero():
				failed[name] = errNoModTime
			case ok:
				found[name] = st
			}
		}
	}
	g.SetLimit(maxListings)
	for _, name := range alone {
		g.Go(func() error {
			stats, err := s.statObject(ctx, name)
			record([]string{name}, stats, err)
			return nil
		})
	}
	if len(listed) > 0 {
		// The first page, of twice as many objects as names, tells how
		// many objects lie between the names; the runs' pages are sized
		// by it.
		stats := make(map[string]objectStat)
		n, seen, err := s.listFrom(ctx, listed, stats, pageFor(len(listed), 2))
		if err != nil {
			n = len(listed)
		}
		record(listed[:n], stats, err)
		if rest := listed[n:]; len(rest) > 0 {
			perName := float64(seen) / float64(n)
			per := (len(rest) + maxListings - 1) / maxListings
			for run := range slices.Chunk(rest, per) {
				g.Go(func() error {
					stats, err := s.listRun(ctx, run, pageFor(len(run), perName))
					record(run, stats, err)
					return nil
				})
			}
		}
	}
	g.Wait()
	return found, failed
}

// listable reports whether a listing gives name back as it is. A listing is
// XML, and a server that does not URL-encode the names in it (gofakes3 and
// versitygw do not) sends a character XML cannot carry, such as a control
// character, as U+FFFD; an XML reader also turns a raw '\r' into '\n'. A
// name with U+FFFD could be taken for such a mangled name.
func listable(name string) bool {
	for _, r := range name {
		if r == '\r' || r == utf8.RuneError || !validXMLChar(r) {
			return false
		}
	}
	return true
}

// validXMLChar reports whether r is a character of XML 1.0 (its Char
// production), as minio-go decides which keys a DeleteObjects request can
// carry.
func validXMLChar(r rune) bool {
	return r == '\t' || r == '\n' || r == '\r' ||
		r >= 0x20 && r <= 0xD7FF ||
		r >= 0xE000 && r <= 0xFFFD ||
		r >= 0x10000 && r <= 0x10FFFF
}

// statObject asks for one object (HEAD) and returns its modification time
// and size if it exists.
func (s *S3) statObject(ctx context.Context, name string) (map[string]objectStat, error) {
	info, err := s.client.StatObject(ctx, s.bucket, name, minio.StatObjectOptions{})
	switch {
	case minio.ToErrorResponse(err).Code == minio.NoSuchKey:
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("stat object %q in bucket %q: %w", name, s.bucket, err)
	}
	return map[string]objectStat{name: {modTime: info.LastModified, size: info.Size}}, nil
}

// pageFor sizes a listing meant to serve names names, where perName
// objects lie per name, with a quarter to spare.
func pageFor(names int, perName float64) int {
	return min(listPage, max(minPage, int(float64(names)*max(perName, 1)*1.25)))
}

// listRun looks up run (sorted, listable names) with pages of page objects
// and returns the modification time and size of those found.
func (s *S3) listRun(ctx context.Context, run []string, page int) (map[string]objectStat, error) {
	stats := make(map[string]objectStat, len(run))
	for i := 0; i < len(run); {
		next, _, err := s.listFrom(ctx, run[i:], stats, page)
		if err != nil {
			return nil, err
		}
		i += next
	}
	return stats, nil
}

// listFrom reads one page of at most page objects from just before
// names[0], records the modification times and sizes of the names it finds,
// and returns how many of names are decided (at least one: found, or
// missing) and how many objects it read. Names up to the last object listed are decided; a
// listing that ends before its page is full has seen every object there is
// up to the end of names.
func (s *S3) listFrom(ctx context.Context, names []string, stats map[string]objectStat, page int) (decided, seen int, err error) {
	lo, hi := names[0], names[len(names)-1]
	// StartAfter is exclusive: start after lo without its last rune, which
	// sorts just before lo and is still valid UTF-8.
	_, size := utf8.DecodeLastRuneInString(lo)
	fetchOwner := false
	opts := minio.ListObjectsOptions{
		Prefix:     commonPrefix(lo, hi),
		StartAfter: lo[:len(lo)-size],
		FetchOwner: &fetchOwner,
		Recursive:  true,
		MaxKeys:    page,
	}
	ctx, cancel := context.WithCancel(ctx) // ends the listing after its page
	defer cancel()
	last := ""
	for obj := range s.client.ListObjectsIter(ctx, s.bucket, opts) {
		if obj.Err != nil {
			return 0, 0, s.listError(opts.Prefix, "to check files before removing them", obj.Err)
		}
		seen++
		// A name that may have been mangled on the way may not be where
		// its true name sorts: it decides nothing.
		if !listable(obj.Key) {
			continue
		}
		if obj.Key < last {
			// Names would be taken for missing that come later.
			return 0, 0, fmt.Errorf("list bucket %q prefix %q: the server listed %q after %q, out of order: %w", s.bucket, opts.Prefix, obj.Key, last, errUnordered)
		}
		last = obj.Key
		for decided < len(names) && names[decided] <= obj.Key {
			if names[decided] == obj.Key {
				stats[obj.Key] = objectStat{modTime: obj.LastModified, size: obj.Size}
			}
			decided++
		}
		if seen%page == 0 && decided > 0 {
			// The page is over; the objects up to the next name are of no
			// use: jump there rather than read them. (A page that decided
			// nothing goes on to the next.) Until then the page, already
			// received, is read to its end even once every name is
			// decided, so that an object out of order in it is seen.
			return decided, seen, nil
		}
	}
	// The listing ends without an error when ctx is done between pages:
	// the names not seen yet are not known to be missing.
	if err := ctx.Err(); err != nil {
		return 0, 0, fmt.Errorf("list bucket %q prefix %q: %w", s.bucket, opts.Prefix, err)
	}
	return len(names), seen, nil // the listing ended: the rest, if any, are missing
}

// errUnordered marks a listing whose names do not come in byte order, as S3
// lists them: a name missing from it cannot be told missing.
var errUnordered = errors.New("listing out of order")

// listError explains a listing that failed; why says what the listing was for.
func (s *S3) listError(prefix, why string, err error) error {
	if minio.ToErrorResponse(err).Code == "AccessDenied" {
		return fmt.Errorf("%w: s3:ListBucket permission is needed on bucket %q prefix %q %s: %w",
			ErrMisconfigured, s.bucket, prefix, why, err)
	}
	return fmt.Errorf("list bucket %q prefix %q: %w", s.bucket, prefix, err)
}

// commonPrefix returns the longest common prefix of a and b that ends on a
// rune boundary: it is valid UTF-8 when they are.
func commonPrefix(a, b string) string {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	for n > 0 && n < len(a) && !utf8.RuneStart(a[n]) {
		n--
	}
	return a[:n]
}

// objectName returns the name of the object that stores key under prefix
// ("" or ending in '/', as NewS3 makes it), or the error of a key that
// ValidateKey refuses. A valid key has no "." or ".." element, so the name
// stays under the prefix.
func objectName(prefix, key string) (string, error) {
	if err := ValidateKey(key); err != nil {
		return "", err
	}
	return prefix + key, nil
}

// deleteInParallel deletes names with up to maxListings DeleteObjects
// requests at once: a server deletes the keys of one request one after
// another, and a group of removals is as large as one request takes.
func (s *S3) deleteInParallel(ctx context.Context, names []string) (gone map[string]bool, failed map[string]error) {
	gone, failed = make(map[string]bool), make(map[string]error)
	var (
		mu sync.Mutex
		g  errgroup.Group
	)
	per := max(minDelete, (len(names)+maxListings-1)/maxListings)
	for part := range slices.Chunk(names, per) {
		g.Go(func() error {
			partGone, partFailed := s.deleteObjects(ctx, part)
			mu.Lock()
			defer mu.Unlock()
			maps.Copy(gone, partGone)
			maps.Copy(failed, partFailed)
			return nil
		})
	}
	g.Wait()
	return gone, failed
}

// minDelete is the fewest keys a delete request of a group carries.
const minDelete = 100

// deleteObjects sends one DeleteObjects request for names (at most
// maxDeleteKeys) and returns the names the server says were already gone
// and the error of each name that was not confirmed as removed.
func (s *S3) deleteObjects(ctx context.Context, names []string) (gone map[string]bool, failed map[string]error) {
	gone = make(map[string]bool)
	failed = make(map[string]error)
	if len(names) == 0 {
		return gone, failed
	}
	if err := ctx.Err(); err != nil {
		for _, name := range names {
			failed[name] = err
		}
		return gone, failed
	}
	objects := func(yield func(minio.ObjectInfo) bool) {
		for _, name := range names {
			if !yield(minio.ObjectInfo{Key: name}) {
				return
			}
		}
	}
	// RemoveObjectsWithIter rather than RemoveObjectsWithResult: it runs in
	// this goroutine and reports a failed single DELETE (used for keys XML
	// cannot carry) once, not twice.
	results, err := s.client.RemoveObjectsWithIter(ctx, s.bucket, objects, minio.RemoveObjectsOptions{})
	if err != nil {
		for _, name := range names {
			failed[name] = err
		}
		return gone, failed
	}
	sent := make(map[string]bool, len(names))
	for _, name := range names {
		sent[name] = true
	}
	removed := make(map[string]bool, len(names))
	var unnamed error // an error the response does not tie to a key we sent
	for res := range results {
		switch {
		case !sent[res.ObjectName]:
			if unnamed == nil {
				unnamed = res.Err
			}
		case res.Err == nil:
			removed[res.ObjectName] = true
		case minio.ToErrorResponse(res.Err).Code == minio.NoSuchKey:
			gone[res.ObjectName] = true
		default:
			failed[res.ObjectName] = res.Err
		}
	}
	for _, name := range names {
		switch {
		case failed[name] != nil, removed[name], gone[name]:
		case unnamed != nil:
			failed[name] = unnamed
		default:
			failed[name] = errNoResult
		}
	}
	return gone, failed
}

func (s *S3) redact(err error) error { return redact(err, s.secrets) }

// Close releases idle connections.
func (s *S3) Close() error {
	if t, ok := s.transport.(interface{ CloseIdleConnections() }); ok {
		t.CloseIdleConnections()
	}
	return nil
}

// redact hides the credentials should a server echo them in an error.
func redact(err error, secrets []string) error {
	msg := err.Error()
	hidden := msg
	for _, secret := range secrets {
		if secret != "" {
			hidden = strings.ReplaceAll(hidden, secret, "[REDACTED]")
		}
	}
	if hidden == msg {
		return err
	}
	return &redactedError{msg: hidden, err: err}
}

type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

// RemovalGroup is how many keys a removal takes at once: a round of
// listings and one bulk delete serve up to 1000, where the objects of a
// smaller batch would each cost as much.
func (s *S3) RemovalGroup() int { return maxDeleteKeys }
