package storage

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
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
}

// NewS3 connects to the bucket and checks that it exists. Its errors never
// contain the access key or the secret key.
func NewS3(ctx context.Context, cfg S3Config) (*S3, error) {
	secrets := []string{cfg.SecretKey, cfg.AccessKey}
	if cfg.Endpoint == "" {
		return nil, fmt.Errorf("%w: s3 endpoint is empty", ErrMisconfigured)
	}
	if cfg.Bucket == "" {
		return nil, fmt.Errorf("%w: s3 bucket is empty", ErrMisconfigured)
	}
	prefix := strings.TrimRight(cfg.Prefix, "/")
	if prefix != "" {
		// The prefix is trusted configuration, but a prefix with ".." would
		// let every key land outside it.
		if err := ValidateKey(prefix); err != nil {
			return nil, redact(fmt.Errorf("%w: s3 prefix %q: %w", ErrMisconfigured, cfg.Prefix, err), secrets)
		}
		prefix += "/"
	}
	transport := cfg.Transport
	if transport == nil {
		var err error
		if transport, err = minio.DefaultTransport(cfg.UseSSL); err != nil {
			return nil, fmt.Errorf("s3 transport: %w", err)
		}
	}
	client, err := minio.New(cfg.Endpoint, &minio.Options{
		Creds:     credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey, ""),
		Secure:    cfg.UseSSL,
		Region:    cfg.Region,
		Transport: transport,
	})
	if err != nil {
		return nil, redact(fmt.Errorf("%w: s3 endpoint %q: %w", ErrMisconfigured, cfg.Endpoint, err), secrets)
	}
	s := &S3{client: client, transport: transport, bucket: cfg.Bucket, prefix: prefix, secrets: secrets}
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
// request: a missing object counts as removed, and S3 has no links to
// follow.
func (s *S3) Check(_ context.Context, keys []string) []error {
	errs := make([]error, len(keys))
	for i, key := range keys {
		errs[i] = ValidateKey(key)
	}
	return errs
}

// Remove removes the objects named by keys with bulk DeleteObjects requests
// of at most 1000 keys, and returns one error per key, nil for an object
// removed or already missing. A request can succeed while single keys fail,
// so each key counts as removed only when the response confirms it.
// Once ctx is done, the remaining valid keys fail with its error.
func (s *S3) Remove(ctx context.Context, keys []string) []error {
	errs := make([]error, len(keys))
	// A key may appear twice; it is sent once and its result goes to both.
	at := make(map[string][]int, len(keys))
	var names []string
	for i, key := range keys {
		if err := ValidateKey(key); err != nil {
			errs[i] = err
			continue
		}
		name := s.prefix + key
		if _, ok := at[name]; !ok {
			names = append(names, name)
		}
		at[name] = append(at[name], i)
	}
	for chunk := range slices.Chunk(names, maxDeleteKeys) {
		results := s.removeChunk(ctx, chunk)
		for _, name := range chunk {
			for _, i := range at[name] {
				if err := results[name]; err != nil {
					errs[i] = s.redact(fmt.Errorf("remove %q: %w", keys[i], err))
				}
			}
		}
	}
	return errs
}

// removeChunk sends one DeleteObjects request and returns the error of each
// name that was not confirmed as removed.
func (s *S3) removeChunk(ctx context.Context, names []string) map[string]error {
	failed := make(map[string]error)
	if err := ctx.Err(); err != nil {
		for _, name := range names {
			failed[name] = err
		}
		return failed
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
		return failed
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
		case res.Err == nil, minio.ToErrorResponse(res.Err).Code == minio.NoSuchKey:
			removed[res.ObjectName] = true
		default:
			failed[res.ObjectName] = res.Err
		}
	}
	for _, name := range names {
		switch {
		case failed[name] != nil:
		case removed[name]:
		case unnamed != nil:
			failed[name] = unnamed
		default:
			failed[name] = errNoResult
		}
	}
	return failed
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
