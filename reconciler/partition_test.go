package reconciler_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/reconcile/reconcile/internal/testdb"
)

// stallingProxy forwards TCP to target until stalled, then holds every
// byte and closes nothing: to the server, a client cut off by a partition,
// or behind a proxy that keeps the connection open. TCP keepalives go
// unnoticed through it: its own kernel answers them.
type stallingProxy struct {
	ln      net.Listener
	stalled atomic.Bool
}

func newStallingProxy(t *testing.T, target string) *stallingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &stallingProxy{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			client, err := ln.Accept()
			if err != nil {
				return
			}
			server, err := net.Dial("tcp", target)
			if err != nil {
				client.Close()
				continue
			}
			go p.pipe(server, client)
			go p.pipe(client, server)
		}
	}()
	return p
}

func (p *stallingProxy) pipe(dst, src net.Conn) {
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		for p.stalled.Load() {
			time.Sleep(100 * time.Millisecond)
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				return
			}
			return
		}
	}
}

// A holder cut off from the server loses its lock within the lock
// session's idle_session_timeout, and another instance takes over; the
// holder, whose pings go unanswered, stops on its own.
func TestALockHolderCutOffLosesTheLock(t *testing.T) {
	dbURL, direct := testdb.NewDjango(t)
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	p := newStallingProxy(t, u.Host)
	via := *u
	via.Host = p.ln.Addr().String()
	cutOff := setupOn(t, poolOn(t, via.String(), func(*pgxpool.Config) {}))
	held, pid := lockOn(t, cutOff, cutOff.r)

	p.stalled.Store(true)
	stalledAt := time.Now()
	other := setupOn(t, direct)
	conn, err := direct.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	for {
		_, release, err := other.r.Lock(context.Background(), conn)
		if err == nil {
			t.Logf("taken over %s after the partition", time.Since(stalledAt).Round(time.Millisecond))
			_ = release(context.Background())
			break
		}
		if time.Since(stalledAt) > time.Minute {
			var state string
			_ = direct.QueryRow(context.Background(), `SELECT coalesce((SELECT state FROM pg_stat_activity WHERE pid = $1), 'gone')`, pid).Scan(&state)
			t.Fatalf("a minute after the partition the lock is still held (the cut-off session: %s): %v", state, err)
		}
		time.Sleep(time.Second)
	}
	select {
	case <-held.Done():
	case <-time.After(30 * time.Second):
		t.Error("the cut-off holder never noticed it lost the lock")
	}
	p.stalled.Store(false)
}
