package storage

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/xml"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

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
func s3Fixture(t *testing.T, tg s3Target, prefix string) *fixture {
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
	})
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
		store:   s,
		put:     func(key string, data []byte) error { return put(full+key, data) },
		exists:  func(t *testing.T, key string) bool { return exists(t, full+key) },
		batches: counting.take,
	}
	if full != "" {
		f.putAbove = func(t *testing.T, name string) {
			if err := put(name, []byte("keep me")); err != nil {
				t.Fatal(err)
			}
		}
		f.existsAbove = exists
	}
	return f
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
	// Cancel once the first response has been read, so that the first
	// chunk completes and the other two are never sent.
	tg.transport = &countingTransport{base: tg.transport, afterDelete: cancel}
	f := s3Fixture(t, tg, "media/")

	keys := make([]string, 2100)
	for i := range keys {
		keys[i] = fmt.Sprintf("k/%04d", i)
	}
	f.mustPut(t, keys...)
	f.batches()
	errs := f.store.Remove(ctx, keys)

	want := make([]error, len(keys))
	for i := 1000; i < len(keys); i++ {
		want[i] = context.Canceled
	}
	requireErrs(t, keys, errs, want...)
	if got := f.batches(); len(got) != 1 {
		t.Errorf("sent %d delete requests, want 1", len(got))
	}
	if f.exists(t, keys[999]) || !f.exists(t, keys[1000]) || !f.exists(t, keys[2099]) {
		t.Error("the keys removed are not the first chunk")
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

	keys := []string{"ok.jpg", "denied.jpg", "gone.jpg", "silent.jpg", "dup.jpg", "dup.jpg"}
	errs := f.store.Remove(t.Context(), keys)
	requireErrs(t, keys, errs, nil, errAny, nil, errNoResult, nil, nil)
	if got := f.batches(); len(got) != 1 || got[0] != 5 {
		t.Errorf("delete requests carried %v keys, want [5]: a repeated key is sent once", got)
	}
	if got, want := errs[1].Error(), `remove "denied.jpg": Access Denied.`; got != want {
		t.Errorf("error = %q, want %q", got, want)
	}
	if got, want := errs[3].Error(), `remove "silent.jpg": not confirmed by the delete response`; got != want {
		t.Errorf("error = %q, want %q", got, want)
	}

	// An error the response does not tie to a key goes to every key not
	// confirmed.
	keys = []string{"bare.jpg", "ok.jpg", "silent.jpg"}
	errs = f.store.Remove(t.Context(), keys)
	requireErrs(t, keys, errs, errAny, nil, errAny)
	for _, i := range []int{0, 2} {
		if !strings.Contains(errs[i].Error(), "internal error") {
			t.Errorf("error = %q, want the unattributed error", errs[i])
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
	requireErrs(t, keys, f.store.Remove(t.Context(), keys), errAny, errAny)
}

func TestS3RequestRefused(t *testing.T) {
	tg := fakeS3(t, answerDeletes(func(w http.ResponseWriter, keys []string) {
		http.Error(w, "no", http.StatusForbidden)
	}))
	f := s3Fixture(t, tg, "")
	keys := []string{"a.jpg", "b.jpg"}
	requireErrs(t, keys, f.store.Remove(t.Context(), keys), errAny, errAny)
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
	errs := f.store.Remove(t.Context(), []string{"a.jpg"})
	if errs[0] == nil {
		t.Fatal("Remove succeeded")
	}
	t.Log(errs[0])
	if !strings.Contains(errs[0].Error(), "[REDACTED]") {
		t.Errorf("error %q: the echoed credentials did not reach the error, the test tests nothing", errs[0])
	}
	requireNoSecrets(t, errs[0], tg)
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

// countingTransport records how many keys each DeleteObjects request carries.
type countingTransport struct {
	base        http.RoundTripper
	afterDelete func() // if set, called once a delete response is read

	mu      sync.Mutex
	batches []int
}

func (c *countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
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

// take returns the batches recorded since the last call.
func (c *countingTransport) take() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.batches
	c.batches = nil
	return b
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
