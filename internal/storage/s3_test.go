package storage

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// s3Target is an S3 server to test against.
type s3Target struct {
	endpoint  string
	useSSL    bool
	transport http.RoundTripper // the base transport; the test closes it
	accessKey string
	secretKey string
	real      bool // a real server, whose buckets the test must clean up

	// putDirect, if set, stores an object without HTTP, which is much faster.
	putDirect func(bucket, name string, data []byte) error
}

// fakeS3 starts gofakes3 behind TLS, with handler wrapped by wrap if not nil.
func fakeS3(t *testing.T, wrap func(http.Handler) http.Handler) s3Target {
	t.Helper()
	backend := s3mem.New()
	var h http.Handler = gofakes3.New(backend).Server()
	if wrap != nil {
		h = wrap(h)
	}
	srv := httptest.NewUnstartedServer(h)
	// Closing the server may interrupt a TLS handshake of a connection the
	// client dialled but never used; that is noise.
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close) // also closes the idle connections of srv.Client()
	return s3Target{
		endpoint:  srv.Listener.Addr().String(),
		useSSL:    true,
		transport: srv.Client().Transport,
		accessKey: "fakeaccess",
		secretKey: "fakesecret-Zq8v",
		putDirect: func(bucket, name string, data []byte) error {
			// The HTTP handler would set Last-Modified; minio-go needs it.
			meta := map[string]string{"Last-Modified": time.Now().UTC().Format(http.TimeFormat)}
			_, err := backend.PutObject(bucket, name, meta, bytes.NewReader(data), int64(len(data)), nil)
			return err
		},
	}
}

// realS3 is the S3 server that `make test` starts (versitygw).
func realS3(t *testing.T) s3Target {
	t.Helper()
	endpoint := os.Getenv("TEST_S3_ENDPOINT")
	if endpoint == "" {
		t.Fatal("TEST_S3_ENDPOINT is not set: run `make test`, which starts an S3 server " +
			"and sets TEST_S3_ENDPOINT (host:port), TEST_S3_ACCESS_KEY and TEST_S3_SECRET_KEY")
	}
	transport, err := minio.DefaultTransport(false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(transport.CloseIdleConnections)
	return s3Target{
		endpoint:  endpoint,
		transport: transport,
		accessKey: os.Getenv("TEST_S3_ACCESS_KEY"),
		secretKey: os.Getenv("TEST_S3_SECRET_KEY"),
		real:      true,
	}
}

// rawClient returns a client that sees the whole bucket, not through S3.
func (tg s3Target) rawClient(t *testing.T, transport http.RoundTripper) *minio.Client {
	t.Helper()
	c, err := minio.New(tg.endpoint, &minio.Options{
		Creds:     credentials.NewStaticV4(tg.accessKey, tg.secretKey, ""),
		Secure:    tg.useSSL,
		Transport: transport,
		Region:    "us-east-1",
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// makeBucket creates a bucket with a new name, emptied and removed at the end.
func (tg s3Target) makeBucket(t *testing.T, c *minio.Client) string {
	t.Helper()
	bucket := "reconcile-test-" + strings.ToLower(rand.Text())
	if err := c.MakeBucket(t.Context(), bucket, minio.MakeBucketOptions{}); err != nil {
		t.Fatalf("make bucket %s: %v", bucket, err)
	}
	if tg.real {
		t.Cleanup(func() {
			// t.Context is already done when cleanups run.
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			objects := c.ListObjects(ctx, bucket, minio.ListObjectsOptions{Recursive: true})
			for res := range c.RemoveObjects(ctx, bucket, objects, minio.RemoveObjectsOptions{}) {
				t.Errorf("empty bucket %s: %q: %v", bucket, res.ObjectName, res.Err)
			}
			if err := c.RemoveBucket(ctx, bucket); err != nil {
				t.Errorf("remove bucket %s: %v", bucket, err)
			}
		})
	}
	return bucket
}

// s3Fixture returns an S3 store over a new bucket of tg with prefix.
func s3Fixture(t *testing.T, tg s3Target, prefix string, opts ...Option) *fixture {
	t.Helper()
	f, _ := newS3Fixture(t, tg, prefix, opts...)
	return f
}

// newS3Fixture returns an S3 store over a new bucket of tg with prefix, and
// the transport that counts its requests.
func newS3Fixture(t *testing.T, tg s3Target, prefix string, opts ...Option) (*fixture, *countingTransport) {
	t.Helper()
	counting := &countingTransport{base: tg.transport}
	raw := tg.rawClient(t, tg.transport)
	bucket := tg.makeBucket(t, raw)
	s, err := NewS3(t.Context(), S3Config{
		Endpoint:  tg.endpoint,
		Bucket:    bucket,
		Prefix:    prefix,
		AccessKey: tg.accessKey,
		SecretKey: tg.secretKey,
		UseSSL:    tg.useSSL,
		Transport: counting,
	}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })

	put := func(name string, data []byte) error {
		if tg.putDirect != nil {
			return tg.putDirect(bucket, name, data)
		}
		_, err := raw.PutObject(context.Background(), bucket, name, bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{})
		return err
	}
	exists := func(t *testing.T, name string) bool {
		t.Helper()
		_, err := raw.StatObject(t.Context(), bucket, name, minio.StatObjectOptions{})
		if minio.ToErrorResponse(err).Code == minio.NoSuchKey {
			return false
		}
		if err != nil {
			t.Fatalf("stat %q: %v", name, err)
		}
		return true
	}
	full := strings.TrimRight(prefix, "/") + "/"
	if full == "/" {
		full = ""
	}
	f := &fixture{
		store:  s,
		put:    func(key string, data []byte) error { return put(full+key, data) },
		exists: func(t *testing.T, key string) bool { return exists(t, full+key) },
		read: func(t *testing.T, key string) string {
			obj, err := raw.GetObject(t.Context(), bucket, full+key, minio.GetObjectOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer obj.Close()
			data, err := io.ReadAll(obj)
			if err != nil {
				t.Fatalf("read %q: %v", full+key, err)
			}
			return string(data)
		},
		requests: counting.take,
	}
	if full != "" {
		f.putAbove = func(t *testing.T, name string) {
			if err := put(name, []byte("keep me")); err != nil {
				t.Fatal(err)
			}
		}
		f.existsAbove = exists
	}
	return f, counting
}

func TestS3Fake(t *testing.T) {
	for _, prefix := range []string{"", "media/", "media", "forum/media"} {
		t.Run("prefix="+prefix, func(t *testing.T) {
			runStoreSuite(t, func(t *testing.T) *fixture { return s3Fixture(t, fakeS3(t, nil), prefix) })
		})
	}
}

func TestS3Real(t *testing.T) {
	tg := realS3(t)
	for _, prefix := range []string{"", "media/"} {
		t.Run("prefix="+prefix, func(t *testing.T) {
			runStoreSuite(t, func(t *testing.T) *fixture { return s3Fixture(t, tg, prefix) })
		})
	}
}

func TestS3CancelBetweenChunks(t *testing.T) {
	tg := fakeS3(t, nil)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	// Cancel once the first response has been read: the first round's
	// other requests, in flight at once, may complete or fail; the later
	// rounds are never sent.
	tg.transport = &countingTransport{base: tg.transport, afterDelete: cancel}
	f := s3Fixture(t, tg, "media/")

	keys := make([]string, 2100)
	for i := range keys {
		keys[i] = fmt.Sprintf("k/%04d", i)
	}
	f.mustPut(t, keys...)
	f.takeRequests()
	res := f.store.Remove(ctx, removals(queuedLater(), keys...))

	removed := 0
	for i, r := range res {
		switch {
		case r.Err == nil && r.Outcome == Removed && i < 1000:
			removed++
		case r.Err != nil && errors.Is(r.Err, context.Canceled):
		default:
			t.Fatalf("key %q: %+v; want removed (first round) or cancelled", keys[i], r)
		}
		// A request cut short may have been served: an error says only
		// that the object may still be there.
		if r.Err == nil && f.exists(t, keys[i]) {
			t.Fatalf("key %q: removed, yet the object exists", keys[i])
		}
		if i >= 1000 && !f.exists(t, keys[i]) {
			t.Fatalf("key %q of a later round is gone", keys[i])
		}
	}
	if removed < minDelete {
		t.Errorf("%d keys removed before the cancel, want the first request's at least", removed)
	}
	if lists, deletes := f.takeRequests(); len(deletes) > maxListings || lists != 1 {
		t.Errorf("sent %d listings and %d delete requests, want 1 and at most %d", lists, len(deletes), maxListings)
	}
}

// minio-go ends a listing without an error when its context is done
// between pages: the names of the later pages must not look missing.
func TestS3CancelBetweenListingPages(t *testing.T) {
	tg := fakeS3(t, nil)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	tg.transport = &countingTransport{base: tg.transport, afterList: cancel}
	f := s3Fixture(t, tg, "media/")

	// An object between each two keys: the keys span two pages.
	var keys, objects []string
	for i := range 1000 {
		keys = append(keys, fmt.Sprintf("k/%04d", i))
		objects = append(objects, keys[i], keys[i]+"~")
	}
	f.mustPut(t, objects...)
	f.takeRequests()
	res := f.store.Remove(ctx, removals(queuedLater(), keys...))
	want := make([]any, len(keys))
	for i := range want {
		want[i] = context.Canceled
	}
	requireResults(t, keys, res, want...)
	if lists, deletes := f.takeRequests(); lists != 1 || len(deletes) != 0 {
		t.Errorf("sent %d listings and deletes %v, want 1 listing and no delete", lists, deletes)
	}
}

// deleteResult is the response to a DeleteObjects request.
type deleteResult struct {
	XMLName xml.Name `xml:"DeleteResult"`
	Deleted []struct {
		Key string
	} `xml:"Deleted"`
	Error []deleteError `xml:"Error"`
}

type deleteError struct {
	Key     string `xml:",omitempty"`
	Code    string
	Message string
}

// answerDeletes serves DeleteObjects requests with answer, and everything
// else with the wrapped handler.
func answerDeletes(answer func(w http.ResponseWriter, keys []string)) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodPost || !r.URL.Query().Has("delete") {
				next.ServeHTTP(w, r)
				return
			}
			var req struct {
				Objects []struct{ Key string } `xml:"Object"`
			}
			if err := xml.NewDecoder(r.Body).Decode(&req); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			keys := make([]string, len(req.Objects))
			for i, o := range req.Objects {
				keys[i] = o.Key
			}
			answer(w, keys)
		})
	}
}

// answerLists serves ListObjectsV2 requests with answer, and everything
// else with the wrapped handler.
func answerLists(answer http.HandlerFunc) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if isListing(r) {
				answer(w, r)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

func TestS3ChecksEachKey(t *testing.T) {
	// A server answers 200 for the request, yet not every key was removed.
	tg := fakeS3(t, answerDeletes(func(w http.ResponseWriter, keys []string) {
		var res deleteResult
		for _, key := range keys {
			switch strings.TrimPrefix(key, "media/") {
			case "ok.jpg", "dup.jpg":
				res.Deleted = append(res.Deleted, struct{ Key string }{key})
			case "denied.jpg":
				res.Error = append(res.Error, deleteError{Key: key, Code: "AccessDenied", Message: "Access Denied."})
			case "gone.jpg":
				res.Error = append(res.Error, deleteError{Key: key, Code: "NoSuchKey", Message: "The specified key does not exist."})
			case "silent.jpg":
				// not in the response at all
			case "bare.jpg":
				// an error without a key, as gofakes3 reports them
				res.Error = append(res.Error, deleteError{Code: "InternalError", Message: "We encountered an internal error."})
			}
		}
		// A key nobody asked for, as a confused server might report it.
		res.Deleted = append(res.Deleted, struct{ Key string }{"media/silent.jpg/"})
		w.Header().Set("Content-Type", "application/xml")
		xml.NewEncoder(w).Encode(res)
	}))
	f := s3Fixture(t, tg, "media")
	// Only objects the listing shows are sent to the delete.
	f.mustPut(t, "ok.jpg", "denied.jpg", "gone.jpg", "silent.jpg", "dup.jpg", "bare.jpg")
	f.takeRequests()

	keys := []string{"ok.jpg", "denied.jpg", "gone.jpg", "silent.jpg", "dup.jpg", "dup.jpg"}
	res := f.store.Remove(t.Context(), removals(queuedLater(), keys...))
	// gone.jpg was listed, then the delete found nothing: someone else
	// removed it meanwhile.
	requireResults(t, keys, res, Removed, errAny, Missing, errNoResult, Removed, Missing)
	if _, deletes := f.takeRequests(); len(deletes) != 1 || deletes[0] != 5 {
		t.Errorf("delete requests carried %v keys, want [5]: a repeated key is sent once", deletes)
	}
	if got, want := res[1].Err.Error(), `remove "denied.jpg": Access Denied.`; got != want {
		t.Errorf("error = %q, want %q", got, want)
	}
	if got, want := res[3].Err.Error(), `remove "silent.jpg": not confirmed by the delete response`; got != want {
		t.Errorf("error = %q, want %q", got, want)
	}

	// An error the response does not tie to a key goes to every key not
	// confirmed.
	keys = []string{"bare.jpg", "ok.jpg", "silent.jpg"}
	res = f.store.Remove(t.Context(), removals(queuedLater(), keys...))
	requireResults(t, keys, res, errAny, Removed, errAny)
	for _, i := range []int{0, 2} {
		if !strings.Contains(res[i].Err.Error(), "internal error") {
			t.Errorf("error = %q, want the unattributed error", res[i].Err)
		}
	}
}

func TestS3ErrorBodyWith200(t *testing.T) {
	// S3 may answer 200 and put an error in the body; no key is confirmed.
	tg := fakeS3(t, answerDeletes(func(w http.ResponseWriter, keys []string) {
		w.Header().Set("Content-Type", "application/xml")
		io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code><Message>boom</Message></Error>`)
	}))
	f := s3Fixture(t, tg, "")
	keys := []string{"a.jpg", "b.jpg"}
	f.mustPut(t, keys...)
	requireResults(t, keys, f.store.Remove(t.Context(), removals(queuedLater(), keys...)), errAny, errAny)
	for _, key := range keys {
		if !f.exists(t, key) {
			t.Errorf("%q was removed", key)
		}
	}
}

func TestS3RequestRefused(t *testing.T) {
	tg := fakeS3(t, answerDeletes(func(w http.ResponseWriter, keys []string) {
		http.Error(w, "no", http.StatusForbidden)
	}))
	f := s3Fixture(t, tg, "")
	keys := []string{"a.jpg", "b.jpg"}
	f.mustPut(t, keys...)
	requireResults(t, keys, f.store.Remove(t.Context(), removals(queuedLater(), keys...)), errAny, errAny)
	for _, key := range keys {
		if !f.exists(t, key) {
			t.Errorf("%q was removed", key)
		}
	}
}

func TestNewS3MissingBucket(t *testing.T) {
	for name, tg := range map[string]s3Target{"fake": fakeS3(t, nil), "real": realS3(t)} {
		t.Run(name, func(t *testing.T) {
			_, err := NewS3(t.Context(), S3Config{
				Endpoint:  tg.endpoint,
				Bucket:    "reconcile-test-missing-" + strings.ToLower(rand.Text()),
				AccessKey: tg.accessKey,
				SecretKey: tg.secretKey,
				UseSSL:    tg.useSSL,
				Transport: tg.transport,
			})
			if err == nil {
				t.Fatal("NewS3 succeeded on a missing bucket")
			}
			t.Log(err)
			msg := err.Error()
			if !strings.Contains(msg, "does not exist") || !strings.Contains(msg, "reconcile-test-missing-") || !strings.Contains(msg, tg.endpoint) {
				t.Errorf("error %q should name the bucket and the endpoint", msg)
			}
			requireNoSecrets(t, err, tg)
		})
	}
}

func TestNewS3WrongSecret(t *testing.T) {
	tg := realS3(t)
	bucket := tg.makeBucket(t, tg.rawClient(t, tg.transport))
	for _, wrong := range []s3Target{
		{secretKey: tg.secretKey + "-wrong", accessKey: tg.accessKey},
		{secretKey: tg.secretKey, accessKey: tg.accessKey + "-wrong"},
	} {
		_, err := NewS3(t.Context(), S3Config{
			Endpoint:  tg.endpoint,
			Bucket:    bucket,
			AccessKey: wrong.accessKey,
			SecretKey: wrong.secretKey,
			Transport: tg.transport,
		})
		if err == nil {
			t.Fatal("NewS3 succeeded with wrong credentials")
		}
		t.Log(err)
		if !strings.Contains(err.Error(), bucket) {
			t.Errorf("error %q should name the bucket", err)
		}
		requireNoSecrets(t, err, wrong)
		requireNoSecrets(t, err, tg)
	}
}

// echoSecrets answers every request with an error that echoes the
// credentials of tg, like a careless server might.
func echoSecrets(tg *s3Target) func(http.Handler) http.Handler {
	return func(http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(http.StatusForbidden)
			xml.NewEncoder(w).Encode(struct {
				XMLName xml.Name `xml:"Error"`
				Code    string
				Message string
			}{Code: "SignatureDoesNotMatch", Message: "no: access " + tg.accessKey + " secret " + tg.secretKey})
		})
	}
}

func TestNewS3RedactsEchoedSecrets(t *testing.T) {
	var tg s3Target
	tg = fakeS3(t, echoSecrets(&tg))
	_, err := NewS3(t.Context(), S3Config{
		Endpoint:  tg.endpoint,
		Bucket:    "bucket",
		AccessKey: tg.accessKey,
		SecretKey: tg.secretKey,
		UseSSL:    true,
		Transport: tg.transport,
	})
	if err == nil {
		t.Fatal("NewS3 succeeded")
	}
	t.Log(err)
	if !strings.Contains(err.Error(), "[REDACTED]") {
		t.Errorf("error %q: the echoed credentials did not reach the error, the test tests nothing", err)
	}
	requireNoSecrets(t, err, tg)
}

func TestS3RemoveRedactsEchoedSecrets(t *testing.T) {
	var tg s3Target
	tg = fakeS3(t, answerDeletes(func(w http.ResponseWriter, keys []string) {
		echoSecrets(&tg)(nil).ServeHTTP(w, nil)
	}))
	f := s3Fixture(t, tg, "")
	f.mustPut(t, "a.jpg")
	res := f.store.Remove(t.Context(), removals(queuedLater(), "a.jpg"))
	if res[0].Err == nil {
		t.Fatalf("Remove = %+v, want an error", res[0])
	}
	t.Log(res[0].Err)
	if !strings.Contains(res[0].Err.Error(), "[REDACTED]") {
		t.Errorf("error %q: the echoed credentials did not reach the error, the test tests nothing", res[0].Err)
	}
	requireNoSecrets(t, res[0].Err, tg)
}

func TestS3ListingRedactsEchoedSecrets(t *testing.T) {
	var tg s3Target
	tg = fakeS3(t, answerLists(func(w http.ResponseWriter, r *http.Request) {
		echoSecrets(&tg)(nil).ServeHTTP(w, r)
	}))
	f := s3Fixture(t, tg, "")
	f.mustPut(t, "a.jpg")
	for _, err := range []error{
		f.store.Remove(t.Context(), removals(queuedLater(), "a.jpg"))[0].Err,
		f.store.Stat(t.Context(), []string{"a.jpg"})[0].Err,
	} {
		if err == nil || !strings.Contains(err.Error(), "[REDACTED]") {
			t.Fatalf("error %v: the echoed credentials did not reach the error, the test tests nothing", err)
		}
		requireNoSecrets(t, err, tg)
	}
	if !f.exists(t, "a.jpg") {
		t.Error("a.jpg was removed although its listing failed")
	}
}

func requireNoSecrets(t *testing.T, err error, tg s3Target) {
	t.Helper()
	for _, secret := range []string{tg.secretKey, tg.accessKey} {
		if secret != "" && strings.Contains(err.Error(), secret) {
			t.Errorf("error %q contains a credential", err)
		}
	}
}

func TestNewS3RefusesBadConfig(t *testing.T) {
	tg := fakeS3(t, nil)
	good := S3Config{Endpoint: tg.endpoint, Bucket: "b", UseSSL: true, Transport: tg.transport}
	for name, cfg := range map[string]S3Config{
		"no endpoint":   {Bucket: "b"},
		"no bucket":     {Endpoint: tg.endpoint},
		"prefix ..":     withPrefix(good, "../up"),
		"prefix inner":  withPrefix(good, "media/../../up/"),
		"prefix abs":    withPrefix(good, "/media"),
		"prefix double": withPrefix(good, "media//x"),
	} {
		s, err := NewS3(t.Context(), cfg)
		if err == nil {
			s.Close()
			t.Errorf("%s: NewS3 succeeded", name)
			continue
		}
		t.Logf("%s: %v", name, err)
	}
}

func withPrefix(cfg S3Config, prefix string) S3Config {
	cfg.Prefix = prefix
	return cfg
}

// countingTransport records the listings sent and how many keys each
// DeleteObjects request carries.
type countingTransport struct {
	base        http.RoundTripper
	afterDelete func() // if set, called once a delete response is read
	afterList   func() // if set, called once a listing response is read

	mu      sync.Mutex
	lists   []url.Values // the query of each listing
	batches []int
}

func (c *countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if isListing(req) {
		c.mu.Lock()
		c.lists = append(c.lists, req.URL.Query())
		c.mu.Unlock()
		resp, err := c.base.RoundTrip(req)
		if err == nil && c.afterList != nil {
			resp.Body = &closeHook{ReadCloser: resp.Body, after: c.afterList}
		}
		return resp, err
	}
	if req.Method != http.MethodPost || !req.URL.Query().Has("delete") {
		return c.base.RoundTrip(req)
	}
	body, err := io.ReadAll(req.Body)
	req.Body.Close()
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.batches = append(c.batches, bytes.Count(body, []byte("<Object>")))
	c.mu.Unlock()

	req = req.Clone(req.Context())
	req.Body = io.NopCloser(bytes.NewReader(body))
	req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	resp, err := c.base.RoundTrip(req)
	if err == nil && c.afterDelete != nil {
		resp.Body = &closeHook{ReadCloser: resp.Body, after: c.afterDelete}
	}
	return resp, err
}

// isListing tells a ListObjectsV2 request.
func isListing(r *http.Request) bool {
	return r.Method == http.MethodGet && r.URL.Query().Get("list-type") == "2"
}

// take returns the number of listings and the batches recorded since the
// last call.
func (c *countingTransport) take() (lists int, deletes []int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	lists, deletes = len(c.lists), c.batches
	c.lists, c.batches = nil, nil
	return lists, deletes
}

// takeLists returns the queries of the listings recorded since the last call.
func (c *countingTransport) takeLists() []url.Values {
	c.mu.Lock()
	defer c.mu.Unlock()
	lists := c.lists
	c.lists, c.batches = nil, nil
	return lists
}

func (c *countingTransport) CloseIdleConnections() {
	if t, ok := c.base.(interface{ CloseIdleConnections() }); ok {
		t.CloseIdleConnections()
	}
}

type closeHook struct {
	io.ReadCloser
	after func()
}

func (h *closeHook) Close() error {
	err := h.ReadCloser.Close()
	h.after()
	return err
}

// eachS3 runs test against gofakes3 and against the real S3 server.
func eachS3(t *testing.T, test func(t *testing.T, tg s3Target)) {
	t.Run("fake", func(t *testing.T) { test(t, fakeS3(t, nil)) })
	t.Run("real", func(t *testing.T) { test(t, realS3(t)) })
}

// Keys far apart among many objects cost a listing each, not a page per
// 1000 objects between them: each listing jumps to the next key.
func TestS3SparseKeysJump(t *testing.T) {
	f := s3Fixture(t, fakeS3(t, nil), "media/")
	var objects []string
	for i := range 10000 {
		objects = append(objects, fmt.Sprintf("forum/attachments/2025/10/04/%05d.jpg", i))
	}
	f.mustPut(t, objects...)
	keys := []string{objects[0], objects[4500], objects[7600], objects[9999], "forum/attachments/2025/10/04/99999.jpg"}
	f.takeRequests()
	infos := f.store.Stat(t.Context(), keys)
	for i, info := range infos {
		if info.Err != nil || info.Exists != (i < 4) {
			t.Fatalf("Stat(%q) = %+v", keys[i], info)
		}
	}
	// A listing that read on would take 10 pages.
	if lists, _ := f.takeRequests(); lists > len(keys) {
		t.Errorf("sent %d listings for %d keys", lists, len(keys))
	}
}

func TestS3RequestCounts(t *testing.T) {
	eachS3(t, func(t *testing.T, tg s3Target) {
		f := s3Fixture(t, tg, "media/")
		name := func(day int, format string, i int) string {
			return fmt.Sprintf("forum/attachments/2025/10/%02d/"+format, day, i)
		}
		var oneFolder, threeFolders, others []string
		for i := range 1000 {
			oneFolder = append(oneFolder, name(4, "leaf-%04d.jpg", i))
		}
		for i := range 300 {
			threeFolders = append(threeFolders, name(1+i%3, "leaf-%04d.jpg", i))
		}
		// More than a page of objects before and after the keys in their
		// folder, under the same prefix ("leaf-0"): the listing starts after
		// the first and stops at the last.
		for i := range 1100 {
			others = append(others, name(4, "leaf-0000.a%04d", i), name(4, "leaf-0999.jpg~%04d", i))
		}
		f.mustPut(t, slices.Concat(oneFolder, threeFolders, others)...)

		for _, tc := range []struct {
			name  string
			keys  []string
			lists int
		}{
			{"one folder", oneFolder, 1},
			// 300 objects in all in the three folders: one page.
			{"three folders", threeFolders, 1},
		} {
			f.takeRequests()
			for i, info := range f.store.Stat(t.Context(), tc.keys) {
				if info.Err != nil || !info.Exists {
					t.Fatalf("%s: Stat(%q) = %+v", tc.name, tc.keys[i], info)
				}
			}
			if lists, deletes := f.takeRequests(); lists != tc.lists || len(deletes) != 0 {
				t.Errorf("%s: Stat sent %d listings and deletes %v, want %d listings", tc.name, lists, deletes, tc.lists)
			}
			want := make([]any, len(tc.keys))
			for i := range want {
				want[i] = Removed
			}
			requireResults(t, tc.keys, f.store.Remove(t.Context(), removals(queuedLater(), tc.keys...)), want...)
			// The deletes go maxListings at a time, minDelete keys at least.
			per := max(minDelete, (len(tc.keys)+maxListings-1)/maxListings)
			wantDeletes := (len(tc.keys) + per - 1) / per
			if lists, deletes := f.takeRequests(); lists != tc.lists || len(deletes) != wantDeletes || sum(deletes) != len(tc.keys) {
				t.Errorf("%s: Remove sent %d listings and deletes %v, want %d listings and %d deletes of %d keys in all", tc.name, lists, deletes, tc.lists, wantDeletes, len(tc.keys))
			}
			// Once gone, they are Missing, and no delete is sent.
			for i := range want {
				want[i] = Missing
			}
			requireResults(t, tc.keys, f.store.Remove(t.Context(), removals(queuedLater(), tc.keys...)), want...)
			if lists, deletes := f.takeRequests(); lists != tc.lists || len(deletes) != 0 {
				t.Errorf("%s: Remove of missing keys sent %d listings and deletes %v, want %d listings", tc.name, lists, deletes, tc.lists)
			}
		}
		for _, key := range []string{others[0], others[len(others)-1]} {
			if !f.exists(t, key) {
				t.Errorf("%q was removed", key)
			}
		}
	})
}

// Names that sort around subfolders, and names whose common prefix ends
// inside a rune, are looked up right on every server.
func TestS3ListingOddNames(t *testing.T) {
	eachS3(t, func(t *testing.T, tg s3Target) {
		f, counting := newS3Fixture(t, tg, "media/")
		f.mustPut(t, "o/b.jpg", "o/b/x.jpg", "o/b/y/z.jpg", "o/c.jpg", "o/b.jpg.d/q", "o/ba/q",
			"u/é1.jpg", "u/è2.jpg", "u/写", "u/写真", "u/\U0001F600.png")
		counting.takeLists()
		keys := []string{"o/b.jpg", "o/c.jpg", "o/b/x.jpg", "o/bb.jpg", "o/b", "u/é1.jpg", "u/è2.jpg", "u/è3.jpg", "u/写", "u/写真", "u/\U0001F600.png"}
		requireResults(t, keys, f.store.Remove(t.Context(), removals(queuedLater(), keys...)),
			Removed, Removed, Removed, Missing, Missing, Removed, Removed, Missing, Removed, Removed, Removed)
		for _, q := range counting.takeLists() {
			if p, after := q.Get("prefix"), q.Get("start-after"); !utf8.ValidString(p) || !utf8.ValidString(after) || !strings.HasPrefix(p, "media/") {
				t.Errorf("listing with prefix %q, start-after %q", p, after)
			}
		}
		for _, key := range []string{"o/b/y/z.jpg", "o/b.jpg.d/q", "o/ba/q"} {
			if !f.exists(t, key) {
				t.Errorf("%q was removed", key)
			}
		}
	})
}

// Names that a listing does not give back as they are (gofakes3 and
// versitygw send "\x01" as U+FFFD) are looked up alone, and a mangled name
// in a listing is neither taken for a key nor ends the listing early.
func TestS3NamesListingsMangle(t *testing.T) {
	eachS3(t, func(t *testing.T, tg s3Target) {
		f := s3Fixture(t, tg, "media/")
		// "d/a.jpg\x01" sorts between the two keys of d/, but comes back
		// as "d/a.jpg\uFFFD", which sorts after them.
		f.mustPut(t, "d/a.jpg", "d/a.jpg\x01", "d/a.jpgz", "ctl\x01.jpg", "ctl\r.jpg")
		keys := []string{"d/a.jpg", "d/a.jpgz", "ctl\x01.jpg", "ctl\uFFFD.jpg", "ctl\r.jpg"}
		for i, info := range f.store.Stat(t.Context(), keys) {
			if want := i != 3; info.Err != nil || info.Exists != want {
				t.Errorf("Stat(%q) = %+v, want Exists %v", keys[i], info, want)
			}
		}
		requireResults(t, keys, f.store.Remove(t.Context(), removals(queuedLater(), keys...)), Removed, Removed, Removed, Missing, Removed)
		if !f.exists(t, "d/a.jpg\x01") {
			t.Error(`"d/a.jpg\x01" was removed`)
		}
		// The cleanup of the test bucket, which lists it, cannot remove it.
		keys = []string{"d/a.jpg\x01"}
		requireResults(t, keys, f.store.Remove(t.Context(), removals(queuedLater(), keys...)), Removed)
	})
}

func TestS3ListingRefused(t *testing.T) {
	for name, answer := range map[string]http.HandlerFunc{
		"xml": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(http.StatusForbidden)
			io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>`)
		},
		"bare": func(w http.ResponseWriter, r *http.Request) { http.Error(w, "no", http.StatusForbidden) },
	} {
		t.Run(name, func(t *testing.T) {
			f := s3Fixture(t, fakeS3(t, answerLists(answer)), "media")
			keys := []string{"forum/a.jpg", "forum/b.jpg", "../c.jpg"}
			f.mustPut(t, "forum/a.jpg")
			f.takeRequests()
			res := f.store.Remove(t.Context(), removals(queuedLater(), keys...))
			requireResults(t, keys, res, ErrMisconfigured, ErrMisconfigured, ErrUnsafeKey)
			infos := f.store.Stat(t.Context(), keys)
			for i, err := range []error{res[0].Err, res[1].Err, infos[0].Err, infos[1].Err} {
				want := `s3:ListBucket permission is needed on bucket "reconcile-test-`
				if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), `prefix "media/forum/`) {
					t.Errorf("error %d: %v, want it to say %q and name the prefix", i, err, want)
				}
			}
			if lists, deletes := f.takeRequests(); lists != 2 || len(deletes) != 0 {
				t.Errorf("sent %d listings and deletes %v, want 2 listings and no delete", lists, deletes)
			}
			if !f.exists(t, "forum/a.jpg") {
				t.Error("forum/a.jpg was removed")
			}
		})
	}
}

func TestRewrittenS3(t *testing.T) {
	queued := time.Date(2025, 10, 4, 12, 0, 7, 500_000_000, time.UTC)
	second := queued.Truncate(time.Second)
	for _, tc := range []struct {
		modified time.Time
		want     bool
	}{
		{queued.Add(time.Hour), true},
		{queued, true},
		{second, true}, // same second, before queued: kept
		{second.Add(-time.Millisecond), false},
		{second.Add(-time.Second), false},
	} {
		if got := rewrittenS3(tc.modified, queued); got != tc.want {
			t.Errorf("rewrittenS3(%v, %v) = %v, want %v", tc.modified, queued, got, tc.want)
		}
	}
}

func TestCommonPrefix(t *testing.T) {
	for _, tc := range []struct{ a, b, want string }{
		{"d/a.jpg", "d/b.jpg", "d/"},
		{"d/a.jpg", "d/a.jpg", "d/a.jpg"},
		{"d/a", "d/a.jpg", "d/a"},
		{"u/é1", "u/è2", "u/"}, // é and è share their first byte
		{"u/写", "u/写真", "u/写"},
		{"", "x", ""},
	} {
		if got := commonPrefix(tc.a, tc.b); got != tc.want {
			t.Errorf("commonPrefix(%q, %q) = %q, want %q", tc.a, tc.b, got, tc.want)
		}
	}
}

// FuzzS3Name checks that the object name of an accepted key is the prefix
// followed by the key, and stays under the prefix.
func FuzzS3Name(f *testing.F) {
	for _, seed := range [][2]string{
		{"media", "forum/a.jpg"}, {"media/", "../x"}, {"", "x"}, {"forum/media", "a/../../b"},
		{"media//", "./x"}, {"/", "x"}, {"..", "x"}, {"media", "写真/é.png"}, {"m", "a\x00b"},
	} {
		f.Add(seed[0], seed[1])
	}
	f.Fuzz(func(t *testing.T, prefix, key string) {
		p, err := s3Prefix(prefix)
		if err != nil {
			if !errors.Is(err, ErrUnsafeKey) {
				t.Fatalf("s3Prefix(%q) = %v, want ErrUnsafeKey", prefix, err)
			}
			return
		}
		if p != "" && (!strings.HasSuffix(p, "/") || ValidateKey(strings.TrimSuffix(p, "/")) != nil) {
			t.Fatalf("s3Prefix(%q) = %q, not a clean folder", prefix, p)
		}
		name, err := objectName(p, key)
		if err != nil {
			if ValidateKey(key) == nil {
				t.Fatalf("objectName(%q, %q) = %v for a valid key", p, key, err)
			}
			return
		}
		rest, ok := strings.CutPrefix(name, p)
		if !ok || rest != key {
			t.Fatalf("objectName(%q, %q) = %q: not the prefix followed by the key", p, key, name)
		}
		if path.Clean(name) != name || path.IsAbs(name) || !utf8.ValidString(name) {
			t.Fatalf("objectName(%q, %q) = %q: not a clean relative path", p, key, name)
		}
		for elem := range strings.SplitSeq(rest, "/") {
			if elem == ".." || elem == "." || elem == "" {
				t.Fatalf("objectName(%q, %q) = %q: element %q may leave the prefix", p, key, name, elem)
			}
		}
		if folder := name[:strings.LastIndexByte(name, '/')+1]; !strings.HasPrefix(folder, p) {
			t.Fatalf("objectName(%q, %q) = %q: its folder %q is not under the prefix", p, key, name, folder)
		}
	})
}

func sum(ns []int) int {
	total := 0
	for _, n := range ns {
		total += n
	}
	return total
}

// A server that lists names out of byte order could make an object that
// exists look missing (its name comes where it was not looked for): the
// lookup fails, and nothing is deleted or taken for missing.
func TestS3ListingOutOfOrderIsRefused(t *testing.T) {
	swap := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !isListing(r) {
				next.ServeHTTP(w, r)
				return
			}
			rec := httptest.NewRecorder()
			next.ServeHTTP(rec, r)
			body := rec.Body.String()
			// Put the second object first.
			a, b := "media/forum/a.jpg", "media/forum/b.jpg"
			body = strings.NewReplacer(a, b, b, a).Replace(body)
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			w.Header().Del("Content-Length")
			w.WriteHeader(rec.Code)
			io.WriteString(w, body)
		})
	}
	f := s3Fixture(t, fakeS3(t, swap), "media")
	f.mustPut(t, "forum/a.jpg", "forum/b.jpg")
	f.takeRequests()
	keys := []string{"forum/a.jpg", "forum/b.jpg"}
	res := f.store.Remove(t.Context(), removals(queuedLater(), keys...))
	for i, r := range res {
		if !errors.Is(r.Err, errUnordered) {
			t.Errorf("%s: %+v; want the listing refused as out of order", keys[i], r)
		}
	}
	if _, deletes := f.takeRequests(); len(deletes) != 0 {
		t.Errorf("sent deletes %v", deletes)
	}
	if !f.exists(t, "forum/a.jpg") || !f.exists(t, "forum/b.jpg") {
		t.Error("an object was removed")
	}
}

// A removal that carries the modification time a listing just gave is
// decided from it: no listing of its folder again, and a time at or after
// its queueing keeps it.
func TestS3RemovalOfAListedObject(t *testing.T) {
	eachS3(t, func(t *testing.T, tg s3Target) {
		f, counting := newS3Fixture(t, tg, "media")
		for _, key := range []string{"a/old.jpg", "a/new.jpg"} {
			if err := f.put(key, []byte("x")); err != nil {
				t.Fatal(err)
			}
		}
		counting.take()
		now := time.Now()
		results := f.store.Remove(t.Context(), []Removal{
			{Key: "a/old.jpg", QueuedAt: now, Listed: now.Add(-time.Hour)},
			{Key: "a/new.jpg", QueuedAt: now, Listed: now.Add(time.Second)},
		})
		if results[0].Outcome != Removed || results[1].Outcome != Rewritten || f.exists(t, "a/old.jpg") || !f.exists(t, "a/new.jpg") {
			t.Fatalf("results %+v", results)
		}
		if lists, deletes := counting.take(); lists != 0 || len(deletes) != 1 {
			t.Errorf("%d listings and %d deletes; want none and one", lists, len(deletes))
		}
	})
}
