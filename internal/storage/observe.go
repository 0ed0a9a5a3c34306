package storage

import (
	"net/http"
	"time"
)

// Observer hears how long each storage request took, by operation: OpStat,
// OpRemove, OpList or OpOther. It must not block.
type Observer func(op string, took time.Duration)

// The operations an Observer hears of.
const (
	OpStat   = "stat"   // a file or object looked at
	OpRemove = "remove" // a file removed, or a request removing objects
	OpList   = "list"   // a page of a listing
	OpOther  = "other"  // the bucket's location, a probe
)

// Option tunes a storage backend.
type Option func(*options)

type options struct {
	observe Observer
	trash   *trash
}

// WithObserver has the backend report each request's duration to observe.
func WithObserver(observe Observer) Option {
	return func(o *options) { o.observe = observe }
}

func applyOptions(opts []Option) options {
	o := options{observe: func(string, time.Duration) {}}
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// observedTransport times each S3 request, by the operation its method and
// query say.
type observedTransport struct {
	next    http.RoundTripper
	observe Observer
}

func (t observedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	start := time.Now()
	resp, err := t.next.RoundTrip(req)
	t.observe(s3Op(req), time.Since(start))
	return resp, err
}

func s3Op(req *http.Request) string {
	q := req.URL.Query()
	switch {
	case req.Method == http.MethodHead:
		return OpStat
	case req.Method == http.MethodDelete, req.Method == http.MethodPost && q.Has("delete"):
		return OpRemove
	case req.Method == http.MethodGet && q.Has("list-type"):
		return OpList
	}
	return OpOther
}
