package reconciler_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"

	"github.com/reconcile/reconcile/index"
	"github.com/reconcile/reconcile/internal/storage"
	"github.com/reconcile/reconcile/internal/testdb"
	"github.com/reconcile/reconcile/reconciler"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var djangoTable = reconciler.Table{
	Schema: "public", Name: "forum_attachment",
	ID: "id", Key: "image", OriginalFilename: "original_filename", IsActive: "is_active", DeletedAt: "deleted_at",
}

// retention is short so rows can be made due by their deleted_at alone.
const retention = time.Hour

// bundle is what a test works with: a fresh database with the Django table
// migrated, local storage in a temporary root and a fresh index.
type bundle struct {
	t     *testing.T
	ctx   context.Context
	pool  *pgxpool.Pool
	root  string
	store reconciler.Store
	index *index.Index
	r     *reconciler.Reconciler
}

type option func(*reconciler.Config)

func setup(t *testing.T, opts ...option) *bundle {
	t.Helper()
	_, pool := testdb.NewDjango(t)
	return setupOn(t, pool, opts...)
}

// setupOn is setup on a pool of the test's own, with local storage.
func setupOn(t *testing.T, pool *pgxpool.Pool, opts ...option) *bundle {
	t.Helper()
	root := t.TempDir()
	store, err := storage.NewLocal(root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	return newBundle(t, context.Background(), pool, root, store, opts...)
}

// poolOn opens a pool on url, as change makes its configuration: another
// role, session settings.
func poolOn(t *testing.T, url string, change func(*pgxpool.Config)) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	change(cfg)
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// dueRows are n due rows, their keys format with their number.
func dueRows(n int, format string) []row {
	rows := make([]row, n)
	for i := range rows {
		rows[i] = due(fmt.Sprintf(format, i))
	}
	return rows
}

func newBundle(t *testing.T, ctx context.Context, pool *pgxpool.Pool, root string, store reconciler.Store, opts ...option) *bundle {
	t.Helper()
	idx, err := index.Open(filepath.Join(t.TempDir(), "index.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := idx.Check(); err != nil {
			t.Errorf("index consistency check: %v", err)
		}
		idx.Close()
	})
	cfg := reconciler.Config{Retention: retention, BatchSize: 10, Concurrency: 3, RemoveConcurrency: 2}
	for _, o := range opts {
		o(&cfg)
	}
	r, err := reconciler.New(ctx, pool, store, idx, djangoTable, cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	return &bundle{t: t, ctx: ctx, pool: pool, root: root, store: store, index: idx, r: r}
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

// row is an attachment to seed.
type row struct {
	id        string
	key       string
	active    bool
	deletedAt *time.Time // nil: no deleted_at
	noFile    bool
}

func ago(d time.Duration) *time.Time {
	t := time.Now().Add(-d)
	return &t
}

// due is a row soft-deleted long enough ago to be purged.
func due(key string) row { return row{key: key, deletedAt: ago(2 * retention)} }

// seed inserts rows and writes their files; it returns the ids.
func (b *bundle) seed(rows ...row) []string {
	b.t.Helper()
	ids := make([]string, len(rows))
	for i, r := range rows {
		if r.id == "" {
			r.id = uuid.NewString()
		}
		ids[i] = r.id
		_, err := b.pool.Exec(b.ctx, `INSERT INTO forum_attachment (id, image, original_filename, is_active, deleted_at) VALUES ($1, $2, $3, $4, $5)`,
			r.id, r.key, "orig-"+filepath.Base(r.key), r.active, r.deletedAt)
		if err != nil {
			b.t.Fatalf("seed %+v: %v", r, err)
		}
		if !r.noFile && r.key != "" {
			b.writeFile(r.key)
		}
	}
	return ids
}

func (b *bundle) writeFile(key string) {
	b.t.Helper()
	if b.root == "" {
		b.t.Fatalf("writeFile(%q) on a bundle without a local root", key)
	}
	path := filepath.Join(b.root, key)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		b.t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("image bytes of "+key), 0o644); err != nil {
		b.t.Fatal(err)
	}
	// Uploaded before it was soft-deleted, as files are: a file modified
	// about the time its removal is queued is a new upload, which stays.
	uploaded := time.Now().Add(-3 * retention)
	if err := os.Chtimes(path, uploaded, uploaded); err != nil {
		b.t.Fatal(err)
	}
}

func (b *bundle) fileExists(key string) bool {
	_, err := os.Lstat(filepath.Join(b.root, key))
	return err == nil
}

func (b *bundle) rowExists(id string) bool {
	b.t.Helper()
	var n int
	if err := b.pool.QueryRow(b.ctx, `SELECT count(*) FROM forum_attachment WHERE id = $1`, id).Scan(&n); err != nil {
		b.t.Fatal(err)
	}
	return n == 1
}

func (b *bundle) count(sql string, args ...any) int {
	b.t.Helper()
	var n int
	if err := b.pool.QueryRow(b.ctx, sql, args...).Scan(&n); err != nil {
		b.t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// run is one `reconcile --rescan`: drain the outbox, rescan, purge.
// rescanned fills r's index from the table at the database's cutoff, and
// returns that cutoff.
func rescanned(t *testing.T, ctx context.Context, r *reconciler.Reconciler) time.Time {
	t.Helper()
	cutoff, err := r.Cutoff(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Rescan(ctx, cutoff); err != nil {
		t.Fatal(err)
	}
	return cutoff
}

func (b *bundle) run() reconciler.Summary {
	b.t.Helper()
	s, err := b.runErr()
	if err != nil {
		b.t.Fatal(err)
	}
	return s
}

func (b *bundle) runErr() (reconciler.Summary, error) {
	left, err := b.r.DrainOutbox(b.ctx, true)
	if err != nil {
		return left, err
	}
	cutoff, err := b.r.Cutoff(b.ctx)
	if err != nil {
		return left, err
	}
	if _, err := b.r.Rescan(b.ctx, cutoff); err != nil {
		return left, err
	}
	s, err := b.r.Purge(b.ctx, cutoff, nil)
	s.FilesRemoved += left.FilesRemoved
	s.FilesMissing += left.FilesMissing
	s.FilesKept += left.FilesKept
	s.FilesRewritten += left.FilesRewritten
	s.FilesPending += left.FilesPending
	return s, err
}

func TestPurgeRemovesDueRowsAndTheirFilesOnly(t *testing.T) {
	b := setup(t)
	var dueRows []row
	for i := range 25 {
		dueRows = append(dueRows, due(fmt.Sprintf("forum/attachments/2025/10/%02d/due-%d.jpg", i%28+1, i)))
	}
	dueIDs := b.seed(dueRows...)
	keep := b.seed(
		row{key: "forum/a/active.jpg", active: true},
		row{key: "forum/a/recent.jpg", deletedAt: ago(retention / 2)},
		row{key: "forum/a/inconsistent.jpg"},
		due("forum/a/missing-file.jpg"),
	)
	b.seed()

	s := b.run()
	if s.Purged != 26 || s.Failed != 0 || s.FilesRemoved != 26 || s.FilesPending != 0 {
		t.Fatalf("summary = %+v, want 26 purged and 26 files removed", s)
	}
	for i, id := range dueIDs {
		if b.rowExists(id) || b.fileExists(dueRows[i].key) {
			t.Errorf("due row %s (%s) survived", id, dueRows[i].key)
		}
	}
	for i, key := range []string{"forum/a/active.jpg", "forum/a/recent.jpg", "forum/a/inconsistent.jpg"} {
		if !b.rowExists(keep[i]) || !b.fileExists(key) {
			t.Errorf("row %s (%s) or its file was removed, want kept", keep[i], key)
		}
	}
	if n := b.count(`SELECT count(*) FROM reconcile_forum_attachment_outbox`); n != 0 {
		t.Errorf("outbox holds %d entries after a clean run", n)
	}
	// The rescan indexed every soft-deleted row, the one not due yet too.
	if entries, _, err := b.index.Due(nil, time.Now().Add(time.Hour), 100); err != nil || len(entries) != 27 {
		t.Errorf("index holds %d entries due within the hour (err %v), want 27", len(entries), err)
	}
}

// Rule 1: a restore that commits first wins; one that comes later finds no
// row. The race runs many times with the restore before, while the purge
// waits on the restore's row lock, and at random moments around it.
func TestRestoreRacingPurgeKeepsRestoredRow(t *testing.T) {
	b := setup(t)
	const rounds = 30
	for round := range rounds {
		mode := []string{"before", "during", "racing", "after"}[round%4]
		var others []row
		for i := range 15 {
			others = append(others, due(fmt.Sprintf("r%d/other-%d.jpg", round, i)))
		}
		otherIDs := b.seed(others...)
		key := fmt.Sprintf("r%d/restored.jpg", round)
		id := b.seed(due(key))[0]
		cutoff, err := b.r.Cutoff(b.ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.r.Rescan(b.ctx, cutoff); err != nil {
			t.Fatal(err)
		}
		restoreSQL := `UPDATE forum_attachment SET is_active = true, deleted_at = NULL WHERE id = $1`

		var restored bool
		switch mode {
		case "before":
			tag, err := b.pool.Exec(b.ctx, restoreSQL, id)
			if err != nil {
				t.Fatal(err)
			}
			restored = tag.RowsAffected() == 1
			if err := purgeErr(b, cutoff); err != nil {
				t.Fatal(err)
			}
		case "during":
			tx, err := b.pool.Begin(b.ctx)
			if err != nil {
				t.Fatal(err)
			}
			tag, err := tx.Exec(b.ctx, restoreSQL, id)
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan error)
			go func() { done <- purgeErr(b, cutoff) }()
			waitForLockWait(t, b)
			if err := tx.Commit(b.ctx); err != nil {
				t.Fatal(err)
			}
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			restored = tag.RowsAffected() == 1
		case "racing":
			done := make(chan error)
			go func() { done <- purgeErr(b, cutoff) }()
			time.Sleep(time.Duration(round%7) * time.Millisecond)
			tag, err := b.pool.Exec(b.ctx, restoreSQL, id)
			if err != nil {
				t.Fatal(err)
			}
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			restored = tag.RowsAffected() == 1
		case "after":
			if err := purgeErr(b, cutoff); err != nil {
				t.Fatal(err)
			}
			tag, err := b.pool.Exec(b.ctx, restoreSQL, id)
			if err != nil {
				t.Fatal(err)
			}
			restored = tag.RowsAffected() == 1
		}

		switch {
		case mode == "before" || mode == "during":
			if !restored || !b.rowExists(id) || !b.fileExists(key) {
				t.Fatalf("round %d (%s): restored row %s or its file is gone", round, mode, id)
			}
		case mode == "after":
			if restored || b.rowExists(id) || b.fileExists(key) {
				t.Fatalf("round %d (after): restore found the row, or the file survived", round)
			}
		case restored:
			if !b.rowExists(id) || !b.fileExists(key) {
				t.Fatalf("round %d (racing): the restore committed, yet row or file is gone", round)
			}
		default:
			if b.rowExists(id) || b.fileExists(key) {
				t.Fatalf("round %d (racing): the restore found no row, yet row or file remains", round)
			}
		}
		for i, oid := range otherIDs {
			if b.rowExists(oid) || b.fileExists(others[i].key) {
				t.Fatalf("round %d (%s): unrelated due row %s survived", round, mode, oid)
			}
		}
	}
}

func purgeErr(b *bundle, cutoff time.Time) error {
	_, err := b.r.Purge(b.ctx, cutoff, nil)
	return err
}

// waitForLockWait returns once a backend of the test database waits on a
// row lock: the purge statement is blocked behind the restore.
func waitForLockWait(t *testing.T, b *bundle) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if b.count(`SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`) > 0 {
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
	t.Fatal("the purge never waited on the restore's row lock")
}

// One purger per table: a second Lock is refused, and losing the session
// that holds the lock ends the run's context.
func TestLockIsExclusiveAndWatched(t *testing.T) {
	b := setup(t)
	conn, err := b.pool.Acquire(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	var pid int // asked before Lock: from then on the lock's watch owns conn
	if err := conn.QueryRow(b.ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	held, release, err := b.r.Lock(b.ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	other, err := b.pool.Acquire(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.r.Lock(b.ctx, other); !errors.Is(err, reconciler.ErrBusy) {
		t.Fatalf("second Lock: %v, want ErrBusy", err)
	}
	other.Release()

	if _, err := b.pool.Exec(b.ctx, `SELECT pg_terminate_backend($1)`, pid); err != nil {
		t.Fatal(err)
	}
	select {
	case <-held.Done():
		if !errors.Is(context.Cause(held), reconciler.ErrLockLost) {
			t.Fatalf("cause = %v, want ErrLockLost", context.Cause(held))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the run went on after its lock's session was terminated")
	}
	_ = release(b.ctx) // the session is gone; unlocking fails, and that is fine
}
