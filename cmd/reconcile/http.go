package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/reconcile/reconcile/internal/metrics"
)

// role is where the service stands, for /readyz.
type role int32

const (
	roleStarting role = iota // checking the database, taking the lock
	roleStandby              // another instance holds the lock: this one waits
	roleLeader               // this instance holds the lock and purges
)

// pinger is what readiness needs of the database; *pgxpool.Pool has it.
type pinger interface {
	Ping(ctx context.Context) error
}

// readiness answers /readyz: the database answers, and the stream is up or
// this instance waits as a standby.
type readiness struct {
	db        pinger // unused in a one-shot run
	metrics   *metrics.Metrics
	oneShot   bool // a run that ends by itself: ready while it runs
	role      atomic.Int32
	streaming atomic.Bool
}

// readyPing bounds the database check of one /readyz request.
const readyPing = 2 * time.Second

// check says whether the service is ready, and why not.
func (r *readiness) check(ctx context.Context) (bool, string) {
	ctx, cancel := context.WithTimeout(ctx, readyPing)
	defer cancel()
	ready, why := r.judge(ctx)
	r.metrics.SetReady(ready)
	return ready, why
}

func (r *readiness) judge(ctx context.Context) (bool, string) {
	if r.oneShot {
		return true, "a one-shot run"
	}
	if err := r.db.Ping(ctx); err != nil {
		return false, fmt.Sprintf("the database does not answer: %v", err)
	}
	switch role(r.role.Load()) {
	case roleStandby:
		return true, "standby: another instance holds the advisory lock"
	case roleLeader:
		if r.streaming.Load() {
			return true, "streaming"
		}
		return false, "the replication stream is not up (connecting, or rebuilding the index)"
	}
	return false, "starting"
}

// streamObserver hears the stream for the metrics and for readiness.
type streamObserver struct {
	*metrics.Metrics
	ready *readiness
}

func (o streamObserver) Connected(up bool) {
	o.ready.streaming.Store(up)
	o.Metrics.Connected(up)
}

// httpHandler serves /metrics, /healthz, /readyz and, when status is not
// nil, /status.
func httpHandler(metrics http.Handler, ready *readiness, status http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, req *http.Request) {
		ok, why := ready.check(req.Context())
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		fmt.Fprintln(w, why)
	})
	if status != nil {
		mux.Handle("GET /status", status)
	}
	return mux
}

// serveHTTP listens on addr and serves h until ctx ends; stop shuts the
// server down and waits for it. The address is taken before it returns, so
// a port in use is an error at start, not a line in the log.
func serveHTTP(ctx context.Context, addr string, h http.Handler, log *slog.Logger) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("http.listen %s: %w", addr, err)
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	log.Info("serving /metrics, /healthz, /readyz", "address", ln.Addr().String())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http server stopped", "error", err)
		}
	}()
	return func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		<-done
	}, nil
}
