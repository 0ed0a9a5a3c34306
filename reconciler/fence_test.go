package reconciler_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/reconcile/reconcile/reconciler"
)

// lockOn takes r's advisory lock on a connection of its own and returns the
// session's backend pid; the lock is released at the end of the test.
func lockOn(t *testing.T, b *bundle, r *reconciler.Reconciler) (context.Context, int32) {
	t.Helper()
	conn, err := b.pool.Acquire(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	var pid int32 // asked before Lock: from then on the lock's watch owns conn
	if err := conn.QueryRow(b.ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	held, release, err := r.Lock(b.ctx, conn)
	if err != nil {
		conn.Release()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = release(context.Background()) // a lost session has released it already
		conn.Release()
	})
	return held, pid
}

// terminate ends a backend and returns once it is gone, its locks with it.
func terminate(t *testing.T, pool *pgxpool.Pool, pid int32) {
	t.Helper()
	var ok bool
	if err := pool.QueryRow(context.Background(), `SELECT pg_terminate_backend($1, 5000)`, pid).Scan(&ok); err != nil || !ok {
		t.Fatalf("terminate backend %d: %v, %v", pid, ok, err)
	}
}

func (b *bundle) another() *reconciler.Reconciler {
	b.t.Helper()
	r, err := reconciler.New(b.ctx, b.pool, b.store, b.index, djangoTable,
		reconciler.Config{Retention: retention, BatchSize: 10, Concurrency: 3, RemoveConcurrency: 2}, testLogger(b.t))
	if err != nil {
		b.t.Fatal(err)
	}
	return r
}

// Once the lock's session is gone, the holder deletes no row and removes
// no file, even before the lock's watch notices; its run ends at once. A
// reconciler that never took the lock purges nothing while another holds
// it.
func TestFenceStopsAHolderWhoseSessionIsGone(t *testing.T) {
	b := setup(t)
	ids := b.seed(dueRows(5, "fence/%d.jpg")...)
	b.writeFile("fence/queued.jpg") // of a row purged by an earlier run
	if _, err := b.pool.Exec(b.ctx, `INSERT INTO reconcile_forum_attachment_outbox (storage_key, attachment_id) VALUES ('fence/queued.jpg', 'gone')`); err != nil {
		t.Fatal(err)
	}
	cutoff := rescanned(t, b.ctx, b.r)

	held, pid := lockOn(t, b, b.r)
	terminate(t, b.pool, pid)
	if _, err := b.r.DrainOutbox(b.ctx, true); !errors.Is(err, reconciler.ErrLockLost) {
		t.Fatalf("drain after the session went: %v; want ErrLockLost", err)
	}
	if s, err := b.r.Purge(b.ctx, cutoff, nil); !errors.Is(err, reconciler.ErrLockLost) || s.Purged != 0 {
		t.Fatalf("purge after the session went: %+v, %v; want ErrLockLost and nothing purged", s, err)
	}
	if held.Err() == nil || !errors.Is(context.Cause(held), reconciler.ErrLockLost) {
		t.Fatalf("the run goes on (cause %v); want it ended with ErrLockLost", context.Cause(held))
	}
	for i, id := range ids {
		if !b.rowExists(id) || !b.fileExists(fmt.Sprintf("fence/%d.jpg", i)) {
			t.Fatalf("row %s or its file went after the lock's session was gone", id)
		}
	}
	if !b.fileExists("fence/queued.jpg") || b.count(`SELECT count(*) FROM reconcile_forum_attachment_outbox`) != 1 {
		t.Fatal("the queued file was removed after the lock's session was gone")
	}

	// Another holder: the first stays fenced out, one that never locked too.
	other := b.another()
	lockOn(t, b, other)
	if _, err := b.r.Purge(b.ctx, cutoff, nil); !errors.Is(err, reconciler.ErrLockLost) {
		t.Fatalf("purge of the old holder: %v; want ErrLockLost", err)
	}
	if _, err := b.another().Purge(b.ctx, cutoff, nil); !errors.Is(err, reconciler.ErrBusy) {
		t.Fatalf("purge of a reconciler without the lock: %v; want ErrBusy", err)
	}
	if b.count(`SELECT count(*) FROM forum_attachment WHERE NOT is_active`) != 5 {
		t.Fatal("rows went while another held the lock")
	}
	if _, err := other.DrainOutbox(b.ctx, true); err != nil {
		t.Fatal(err)
	}
	if s, err := other.Purge(b.ctx, cutoff, nil); err != nil || s.Purged != 5 || s.FilesRemoved != 5 {
		t.Fatalf("purge of the new holder: %+v, %v; want 5 rows and files", s, err)
	}
	if b.fileExists("fence/queued.jpg") {
		t.Fatal("the new holder left the queued file")
	}
}

// A statement of the old holder that passed the fence before its session
// went may still finish; the new holder's Lock waits for it.
func TestLockWaitsForTheStatementsOfThePreviousHolder(t *testing.T) {
	b := setup(t)
	ids := b.seed(due("wait/row.jpg"))
	cutoff := rescanned(t, b.ctx, b.r)
	// A forum transaction holds the row: the purge statement waits on it.
	// Its own connection: the bundle's pool is small.
	fc, err := pgx.ConnectConfig(b.ctx, b.pool.Config().ConnConfig.Copy())
	if err != nil {
		t.Fatal(err)
	}
	defer fc.Close(b.ctx)
	forum, err := fc.Begin(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = forum.Rollback(b.ctx) }()
	if _, err := forum.Exec(b.ctx, `SELECT 1 FROM forum_attachment WHERE id = $1 FOR UPDATE`, ids[0]); err != nil {
		t.Fatal(err)
	}
	_, pid := lockOn(t, b, b.r)
	purged := make(chan error, 1)
	go func() {
		_, err := b.r.Purge(b.ctx, cutoff, nil)
		purged <- err
	}()
	waitForLockWait(t, b)
	terminate(t, b.pool, pid)

	other := b.another()
	conn, err := b.pool.Acquire(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	type locked struct {
		release func(context.Context) error
		err     error
	}
	took := make(chan locked, 1)
	go func() {
		_, release, err := other.Lock(b.ctx, conn)
		took <- locked{release, err}
	}()
	select {
	case l := <-took:
		t.Fatalf("the new holder took the lock (%v) while the old holder's statement runs", l.err)
	case <-time.After(500 * time.Millisecond):
	}
	if err := forum.Commit(b.ctx); err != nil {
		t.Fatal(err)
	}
	l := <-took
	if l.err != nil {
		t.Fatal(l.err)
	}
	defer func() { _ = l.release(b.ctx) }()
	// The statement finished; the old holder's file removal then found
	// the lock another's.
	if err := <-purged; !errors.Is(err, reconciler.ErrLockLost) {
		t.Fatalf("the old holder's purge: %v; want ErrLockLost", err)
	}
	if b.rowExists(ids[0]) || !b.fileExists("wait/row.jpg") {
		t.Fatal("want the row deleted by the statement that passed the fence, and its file left in the outbox")
	}
	if s, err := other.DrainOutbox(b.ctx, true); err != nil || s.FilesRemoved != 1 {
		t.Fatalf("the new holder's drain: %+v, %v; want the file removed", s, err)
	}
}

// A session that ends releases its advisory locks one at a time: a new
// holder that finds the lock free waits until the holder key of the old
// session has gone too, or the old holder's statements would still pass
// the fence.
func TestLockWaitsForTheHolderKeyOfAnEndingSession(t *testing.T) {
	b := setup(t)
	old, err := pgx.ConnectConfig(b.ctx, b.pool.Config().ConnConfig.Copy())
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close(b.ctx)
	if _, err := old.Exec(b.ctx, `SELECT pg_advisory_lock(hashtext('reconcile holder:"public"."forum_attachment"'), pg_backend_pid())`); err != nil {
		t.Fatal(err)
	}
	conn, err := b.pool.Acquire(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	took := make(chan error, 1)
	var release func(context.Context) error
	go func() {
		var err error
		_, release, err = b.r.Lock(b.ctx, conn)
		took <- err
	}()
	select {
	case err := <-took:
		t.Fatalf("took the lock (%v) while an old holder key is held", err)
	case <-time.After(500 * time.Millisecond):
	}
	if _, err := old.Exec(b.ctx, `SELECT pg_advisory_unlock_all()`); err != nil {
		t.Fatal(err)
	}
	if err := <-took; err != nil {
		t.Fatal(err)
	}
	if err := release(b.ctx); err != nil {
		t.Fatal(err)
	}
}
