package reconciler_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/reconcile/reconcile/internal/storage"
	"github.com/reconcile/reconcile/internal/testdb"
	"github.com/reconcile/reconcile/reconciler"
)

// The guard rails: what operators get wrong and what their systems do by
// surprise must never delete what has to stay, nor stop the purge for good.

// logBuffer collects a reconciler's log lines for a test to read while it
// writes them, and passes them on to t.Log.
type logBuffer struct {
	t  *testing.T
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	l.b.Write(p)
	l.mu.Unlock()
	l.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

func (l *logBuffer) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.b.String(), s)
}

// withLogs replaces the bundle's reconciler by one that logs to a buffer.
func (b *bundle) withLogs(opts ...option) *logBuffer {
	b.t.Helper()
	logs := &logBuffer{t: b.t}
	cfg := reconciler.Config{Retention: retention, BatchSize: 10, Concurrency: 3, RemoveConcurrency: 2}
	for _, o := range opts {
		o(&cfg)
	}
	r, err := reconciler.New(b.ctx, b.pool, b.store, b.index, djangoTable, cfg, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		b.t.Fatal(err)
	}
	b.r = r
	return logs
}

// Row 3: a storage root that holds none of the table's files (a volume not
// mounted) would make every file look missing and every due row purged,
// with the real files left behind untracked. The run refuses, names the
// root, and deletes nothing.
func TestEmptyStorageRootDeletesNothing(t *testing.T) {
	b := setup(t)
	rows := dueRows(20, "forum/attachments/2025/10/04/%02d.jpg")
	rows = append(rows, row{key: "forum/attachments/2026/01/02/live.jpg", active: true})
	b.seed(rows...)

	unmounted := t.TempDir() // the mount point, without its volume
	store, err := storage.NewLocal(unmounted)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	empty := newBundle(t, b.ctx, b.pool, unmounted, store, func(c *reconciler.Config) {
		c.StorageName = "local directory " + unmounted
	})
	// A key left in the outbox by an earlier run must not be dropped either.
	if _, err := b.pool.Exec(b.ctx, `INSERT INTO reconcile_forum_attachment_outbox (storage_key, attachment_id) VALUES ('forum/attachments/left.jpg', 'x')`); err != nil {
		t.Fatal(err)
	}
	_, err = empty.runErr()
	if !errors.Is(err, reconciler.ErrNoFiles) || !strings.Contains(err.Error(), unmounted) || !strings.Contains(err.Error(), "files probed") {
		t.Fatalf("run error = %v; want ErrNoFiles naming the root and the probe", err)
	}
	if n := b.count(`SELECT count(*) FROM forum_attachment`); n != len(rows) {
		t.Fatalf("%d rows left of %d", n, len(rows))
	}
	if n := b.count(`SELECT count(*) FROM reconcile_forum_attachment_outbox`); n != 1 {
		t.Fatalf("outbox holds %d keys, want the one left by the earlier run", n)
	}
	// The right root purges as usual.
	if s := b.run(); s.Purged != 20 || s.FilesRemoved != 20 || s.FilesMissing != 1 {
		t.Fatalf("with the right root: %+v", s)
	}
}

// Beyond row 3: files removed by hand do not stop the run; their rows are
// purged and counted apart from the files removed.
func TestFilesRemovedByHandAreCountedMissing(t *testing.T) {
	b := setup(t)
	rows := dueRows(10, "hand/%02d.jpg")
	ids := b.seed(rows...)
	for _, r := range rows[:3] {
		if err := os.Remove(filepath.Join(b.root, r.key)); err != nil {
			t.Fatal(err)
		}
	}
	s := b.run()
	if s.Purged != 10 || s.FilesRemoved != 7 || s.FilesMissing != 3 || s.Failed != 0 {
		t.Fatalf("summary = %+v; want 10 purged, 7 files removed, 3 missing", s)
	}
	for _, id := range ids {
		if b.rowExists(id) {
			t.Fatalf("row %s survived", id)
		}
	}
}

// A part of the media root on a volume of its own, not mounted: the probe
// finds the other part's files, but a file missing among neighbours that
// are all missing too is not taken for missing: its row is purged and its
// key stays in the outbox until the folder is back.
func TestPartlyMountedRootKeepsKeysInTheOutbox(t *testing.T) {
	b := setup(t)
	rows := dueRows(10, "forum/attachments/2024/12/%02d.jpg")
	rows = append(rows, row{key: "forum/attachments/2024/12/live.jpg", active: true})
	away := dueRows(10, "forum/attachments/2025/01/%02d.jpg")
	for i := range away {
		away[i].noFile = true // on the volume that is not mounted
	}
	rows = append(rows, away...)
	rows = append(rows, row{key: "forum/attachments/2025/01/live.jpg", active: true, noFile: true})
	b.seed(rows...)

	s, err := b.runErr()
	if err != nil {
		t.Fatal(err)
	}
	if s.Purged != 20 || s.FilesRemoved != 10 || s.FilesMissing != 0 || s.FilesPending != 10 {
		t.Fatalf("summary %+v; want 20 purged, 10 files removed and 10 waiting in the outbox", s)
	}
	if n := b.count(`SELECT count(*) FROM reconcile_forum_attachment_outbox WHERE storage_key LIKE 'forum/attachments/2025/%' AND last_error LIKE '%not mounted%'`); n != 10 {
		t.Fatalf("%d keys of the missing folder wait in the outbox, want 10", n)
	}
	// The volume is back.
	for _, r := range away {
		b.writeFile(r.key)
	}
	b.writeFile("forum/attachments/2025/01/live.jpg")
	s, err = b.r.DrainOutbox(b.ctx, true)
	if err != nil || s.FilesRemoved != 10 {
		t.Fatalf("drain: %+v, %v; want the 10 files removed", s, err)
	}
	if !b.fileExists("forum/attachments/2025/01/live.jpg") || !b.fileExists("forum/attachments/2024/12/live.jpg") {
		t.Fatal("an active row's file was removed")
	}
}

// A folder's keys are together in byte order ("C"), not in a linguistic
// collation: with glibc's en_US.UTF-8 (here ICU with punctuation
// ignorable), '/' is ignored at the first level and the keys of a/u15/ come
// between those of a/u1/. The nearest neighbours of a key of the unmounted
// a/u1/ must still be taken in byte order, or its key would leave the
// outbox, counted missing, and its file be tracked by nothing.
func TestNeighboursAreTakenInByteOrder(t *testing.T) {
	for _, tc := range []struct {
		name, collation string
	}{
		{"C", `"C"`},
		{"punctuation ignorable", "punctuation_ignored"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := setup(t)
			if _, err := b.pool.Exec(b.ctx, `
				CREATE COLLATION IF NOT EXISTS punctuation_ignored (provider = icu, locale = 'en-US-u-ka-shifted');
				ALTER TABLE forum_attachment ALTER COLUMN image TYPE varchar(100) COLLATE `+tc.collation); err != nil {
				t.Fatal(err)
			}
			var rows []row
			for _, name := range []string{"k1", "k2", "k3", "k4", "k5", "k6", "k7", "k8", "n1", "n2", "n3", "n4", "n5", "n6", "n7", "n8"} {
				rows = append(rows, row{key: "a/u15/" + name + ".jpg", active: true})
			}
			// a/u1/ is on a volume of its own, not mounted: none of its
			// files can be seen.
			rows = append(rows,
				row{key: "a/u1/0a.jpg", active: true, noFile: true},
				row{key: "a/u1/9z.jpg", active: true, noFile: true})
			away := due("a/u1/5m.jpg")
			away.noFile = true
			rows = append(rows, away)
			b.seed(rows...)

			s, err := b.runErr()
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("summary %+v", s)
			if s.Purged != 1 || s.FilesMissing != 0 || s.FilesPending != 1 {
				t.Fatalf("summary %+v; want the row purged and its key kept in the outbox: its folder's other files are missing too", s)
			}
		})
	}
}

// Row 5: a due row whose key is ” (FileField(blank=True)) or NULL is
// purged as a row without a file, counted apart; nothing in storage is
// touched, and the run succeeds.
func TestRowsWithoutAFileArePurged(t *testing.T) {
	b := setup(t)
	if _, err := b.pool.Exec(b.ctx, `ALTER TABLE forum_attachment ALTER COLUMN image DROP NOT NULL`); err != nil {
		t.Fatal(err)
	}
	ids := b.seed(due(""), due("nofile/real.jpg"), due(""))
	if _, err := b.pool.Exec(b.ctx, `UPDATE forum_attachment SET image = NULL WHERE id = $1`, ids[2]); err != nil {
		t.Fatal(err)
	}
	b.writeFile("nofile/bystander.jpg")
	s, err := b.runErr()
	if err != nil {
		t.Fatal(err)
	}
	if s.Purged != 3 || s.NoFile != 2 || s.Failed != 0 || s.FilesRemoved != 1 {
		t.Fatalf("summary = %+v; want 3 purged, 2 of them without a file, 1 file removed", s)
	}
	for _, id := range ids {
		if b.rowExists(id) {
			t.Fatalf("row %s survived", id)
		}
	}
	if !b.fileExists("nofile/bystander.jpg") {
		t.Fatal("a file no row names was removed")
	}
	if n := b.count(`SELECT count(*) FROM reconcile_forum_attachment_outbox`); n != 0 {
		t.Fatalf("outbox holds %d keys", n)
	}
}

// Row 11: a row whose DELETE fails with an error outside any list of
// row-level errors (a trigger's own SQLSTATE, a corrupt page) is isolated,
// reported and skipped; the rest of its batch, and later rows, go on.
func TestRowErrorsOfAnyKindAreIsolated(t *testing.T) {
	b := setup(t)
	rows := dueRows(30, "odd/%02d.jpg")
	ids := b.seed(rows...)
	_, err := b.pool.Exec(b.ctx, fmt.Sprintf(`
		CREATE FUNCTION odd_row() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF OLD.id = '%s' THEN RAISE EXCEPTION 'the app says no' USING ERRCODE = 'U0001'; END IF;
			IF OLD.id = '%s' THEN RAISE EXCEPTION 'invalid page in block 7' USING ERRCODE = 'XX001'; END IF;
			RETURN OLD;
		END $$;
		CREATE TRIGGER odd_row BEFORE DELETE ON forum_attachment FOR EACH ROW EXECUTE FUNCTION odd_row()`, ids[4], ids[21]))
	if err != nil {
		t.Fatal(err)
	}
	s, err := b.runErr()
	if err != nil {
		t.Fatalf("run error = %v; want the two rows reported and the rest purged", err)
	}
	if s.Purged != 28 || s.Failed != 2 {
		t.Fatalf("summary = %+v; want 28 purged, 2 failed", s)
	}
	for i, id := range ids {
		kept := i == 4 || i == 21
		if b.rowExists(id) != kept || b.fileExists(rows[i].key) != kept {
			t.Errorf("row %d: exists %v, file %v; want both %v", i, b.rowExists(id), b.fileExists(rows[i].key), kept)
		}
	}
}

// Row 13: a file written under a queued key after it was queued (a new
// upload reusing the freed name) is kept, counted apart, and its key leaves
// the outbox; a file older than its queueing goes.
func TestFileWrittenAfterItsKeyWasQueuedIsKept(t *testing.T) {
	b := setup(t)
	b.writeFile("reused/leaf.jpg")
	b.writeFile("reused/old.jpg") // written long ago
	now := time.Now()
	if err := os.Chtimes(filepath.Join(b.root, "reused/leaf.jpg"), now, now); err != nil {
		t.Fatal(err)
	}
	b.seed(row{key: "reused/live.jpg", active: true})
	// Both keys were queued a minute ago by a purge; since then the app
	// wrote a new leaf.jpg, whose row has not committed yet.
	if _, err := b.pool.Exec(b.ctx, `
		INSERT INTO reconcile_forum_attachment_outbox (storage_key, attachment_id, enqueued_at)
		VALUES ('reused/leaf.jpg', 'gone-1', now() - interval '1 minute'), ('reused/old.jpg', 'gone-2', now() - interval '1 minute')`); err != nil {
		t.Fatal(err)
	}
	logs := b.withLogs()
	s, err := b.r.DrainOutbox(b.ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if s.FilesRewritten != 1 || s.FilesRemoved != 1 || !b.fileExists("reused/leaf.jpg") || b.fileExists("reused/old.jpg") {
		t.Fatalf("summary = %+v, leaf.jpg exists %v, old.jpg exists %v; want the rewritten file kept and the old one removed",
			s, b.fileExists("reused/leaf.jpg"), b.fileExists("reused/old.jpg"))
	}
	if logs.count("written again after its removal was queued") != 1 {
		t.Error("the kept file was not reported")
	}
	if n := b.count(`SELECT count(*) FROM reconcile_forum_attachment_outbox`); n != 0 {
		t.Fatalf("outbox holds %d keys", n)
	}
}

// Row 12: with Django's USE_TZ = False, deleted_at holds wall times of
// TIME_ZONE. West of the server's zone, taking them for the server's would
// purge rows hours early; table.time_zone says which zone they are in.
func TestTimeZoneOfANaiveDeletedAt(t *testing.T) {
	b := setup(t)
	if _, err := b.pool.Exec(b.ctx, `
		DROP INDEX forum_attac_is_acti_8d0ac7_idx;
		ALTER TABLE forum_attachment ALTER COLUMN deleted_at TYPE timestamp USING deleted_at AT TIME ZONE 'UTC'`); err != nil {
		t.Fatal(err)
	}
	var serverZone string
	if err := b.pool.QueryRow(b.ctx, `SHOW TimeZone`).Scan(&serverZone); err != nil {
		t.Fatal(err)
	}
	const zone = "America/Los_Angeles" // UTC-8 or -7: never the test server's
	if serverZone == zone {
		t.Fatalf("the server runs in %s", zone)
	}
	ids := b.seed(row{key: "tz/recent.jpg"}, row{key: "tz/due.jpg"})
	if _, err := b.pool.Exec(b.ctx, `
		UPDATE forum_attachment SET is_active = false,
		       deleted_at = (now() AT TIME ZONE $3) - CASE WHEN id = $1 THEN interval '30 minutes' ELSE interval '2 hours' END
		WHERE id IN ($1, $2)`, ids[0], ids[1], zone); err != nil {
		t.Fatal(err)
	}
	table := djangoTable
	table.TimeZone = zone
	logs := &logBuffer{t: t}
	r, err := reconciler.New(b.ctx, b.pool, b.store, b.index, table,
		reconciler.Config{Retention: retention, BatchSize: 10, Concurrency: 3, RemoveConcurrency: 2},
		slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	b.r = r
	if s := b.run(); s.Purged != 1 || !b.rowExists(ids[0]) || b.rowExists(ids[1]) {
		t.Fatalf("summary %+v; want the row deleted 2 hours ago (Los Angeles time) purged and the one deleted 30 minutes ago kept", s)
	}
	if logs.count("table.time_zone") != 0 {
		t.Error("warned although table.time_zone is set")
	}

	// Without the key, a warning names it.
	logs = b.withLogs()
	if logs.count("set table.time_zone") != 1 {
		t.Error("no warning names table.time_zone for a naive deleted_at")
	}

	// Names only: PostgreSQL reads an offset as a POSIX zone, backwards.
	for _, zone := range []string{"Mars/Olympus_Mons", "UTC+2", "+02:00", "-05:00", "CET"} {
		table.TimeZone = zone
		if _, err := reconciler.New(b.ctx, b.pool, b.store, b.index, table, reconciler.Config{Retention: retention, BatchSize: 10, Concurrency: 3, RemoveConcurrency: 2}, nil); !errors.Is(err, reconciler.ErrSetup) || !strings.Contains(err.Error(), "table.time_zone") {
			t.Fatalf("zone %q: %v; want ErrSetup naming table.time_zone", zone, err)
		}
	}
}

// Row 9: a partitioned attachment table is migrated (indexes built on each
// partition, concurrently, and attached), rescanned and purged.
func TestPartitionedTable(t *testing.T) {
	ctx := context.Background()
	_, pool := testdb.New(t)
	if _, err := pool.Exec(ctx, testdb.PartitionedSchema); err != nil {
		t.Fatal(err)
	}
	b := setupOn(t, pool) // migrates
	if err := b.r.Migrate(ctx); err != nil {
		t.Fatalf("second migrate: %v", err)
	}
	var invalid, ours int
	if err := pool.QueryRow(ctx, `
		SELECT count(*) FILTER (WHERE NOT i.indisvalid), count(*) FILTER (WHERE c.relname LIKE 'reconcile_%')
		FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
		WHERE i.indrelid IN (SELECT relid FROM pg_partition_tree('forum_attachment'))`).Scan(&invalid, &ours); err != nil {
		t.Fatal(err)
	}
	if invalid != 0 || ours != 2*6 {
		t.Fatalf("%d invalid indexes, %d of ours; want none invalid and 2 on each of the 6 tables", invalid, ours)
	}
	rows := dueRows(40, "part/%02d.jpg")
	rows = append(rows, row{key: "part/active.jpg", active: true}, row{key: "part/recent.jpg", deletedAt: ago(retention / 2)})
	ids := b.seed(rows...)
	s := b.run()
	if s.Purged != 40 || s.FilesRemoved != 40 || s.Failed != 0 {
		t.Fatalf("summary = %+v; want 40 purged", s)
	}
	if !b.rowExists(ids[40]) || !b.rowExists(ids[41]) || !b.fileExists("part/active.jpg") {
		t.Fatal("a row that is not due, or its file, is gone")
	}
}

// safety.max_deletes: a run purges at most that many rows and says how
// many it left; the next run goes on.
func TestDeletionBudgetOfARun(t *testing.T) {
	b := setup(t)
	rows := dueRows(23, "budget/%02d.jpg")
	b.seed(rows...)
	b.withLogs(func(c *reconciler.Config) { c.MaxDeletes = 10 })
	for run, want := range []reconciler.Summary{{Purged: 10, Left: 13}, {Purged: 10, Left: 3}, {Purged: 3, Left: 0}} {
		s := b.run()
		if s.Purged != want.Purged || s.Left != want.Left || s.FilesRemoved != want.Purged {
			t.Fatalf("run %d: %+v; want %d purged, %d left", run+1, s, want.Purged, want.Left)
		}
	}
}

// safety.max_deletes_per_hour: past it the service stops purging, says so
// once, and goes on in the next hour.
func TestHourlyDeletionBudget(t *testing.T) {
	b := setup(t)
	rows := dueRows(10, "hourly/%02d.jpg")
	b.seed(rows...)
	logs := &logBuffer{t: t}
	db := &countingDB{Pool: b.pool}
	r, err := reconciler.New(b.ctx, db, b.store, b.index, djangoTable,
		reconciler.Config{Retention: retention, BatchSize: 10, Concurrency: 3, RemoveConcurrency: 2},
		slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	b.r = r
	rescanned(t, b.ctx, b.r)
	clock := newFakeClock()
	sweeping(t, b.r, reconciler.SweepConfig{MaxWait: 50 * time.Millisecond, MaxDeletesPerHour: 4, Now: clock.Now})
	left := func() int { return b.count(`SELECT count(*) FROM forum_attachment`) }
	eventually(t, func() bool { return left() == 6 }, func() string { return fmt.Sprintf("%d rows left, want 6", left()) })
	before := db.calls.Load()
	time.Sleep(500 * time.Millisecond) // ten wakes of the timer
	if left() != 6 || logs.count("hourly deletion budget is spent") != 1 {
		t.Fatalf("%d rows left, budget logged %d times; want 6 left and one error line", left(), logs.count("hourly deletion budget is spent"))
	}
	// Asleep meanwhile: a look at the clock and the outbox each wake, not
	// a spin on the rows that are due.
	if calls := db.calls.Load() - before; calls > 60 {
		t.Fatalf("%d statements in half a second with the budget spent: the timer spins", calls)
	}
	clock.Add(time.Hour)
	eventually(t, func() bool { return left() == 2 }, func() string { return fmt.Sprintf("%d rows left in the next hour, want 2", left()) })
	clock.Add(time.Hour)
	eventually(t, func() bool { return left() == 0 }, func() string { return fmt.Sprintf("%d rows left in the third hour, want 0", left()) })
}

// Row 8: a due row locked by another session at its due time is reported,
// then tried again with backoff, and purged soon after the lock goes; rows
// behind it are not held up.
func TestLockedRowIsTriedAgain(t *testing.T) {
	ctx := context.Background()
	url, admin := testdb.NewDjango(t)
	b := setupOn(t, poolOn(t, url, func(c *pgxpool.Config) { c.ConnConfig.RuntimeParams["lock_timeout"] = "200" }))
	ids := b.seed(due("locked/a.jpg"), due("locked/b.jpg"))
	logs := b.withLogs()

	tx, err := admin.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	if _, err := tx.Exec(ctx, `SELECT 1 FROM forum_attachment WHERE id = $1 FOR UPDATE`, ids[0]); err != nil {
		t.Fatal(err)
	}
	cutoff, err := b.r.Cutoff(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.r.Rescan(ctx, cutoff); err != nil {
		t.Fatal(err)
	}
	sweeping(t, b.r, reconciler.SweepConfig{MaxWait: time.Minute})
	eventually(t, func() bool { return !b.rowExists(ids[1]) && logs.count("Failed to delete attachment") >= 1 },
		func() string { return "the unlocked row was not purged, or the locked one not reported" })
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() bool { return !b.rowExists(ids[0]) && !b.fileExists("locked/a.jpg") },
		func() string { return "the row was not purged after its lock went" })
}

// eventually waits up to 15 s for ok.
func eventually(t *testing.T, ok func() bool, why func() string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatal(why())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// countingDB counts the statements a reconciler sends to a real database.
type countingDB struct {
	*pgxpool.Pool
	calls atomic.Int64
}

func (c *countingDB) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	c.calls.Add(1)
	return c.Pool.Exec(ctx, sql, args...)
}

func (c *countingDB) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	c.calls.Add(1)
	return c.Pool.Query(ctx, sql, args...)
}

func (c *countingDB) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	c.calls.Add(1)
	return c.Pool.QueryRow(ctx, sql, args...)
}

// sweeping runs r's timer until the test ends.
func sweeping(t *testing.T, r *reconciler.Reconciler, cfg reconciler.SweepConfig) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Sweep(ctx, cfg) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("sweep: %v", err)
		}
	})
}

// fakeClock is a time the test moves, for the timer's hourly budget.
type fakeClock struct{ at atomic.Int64 }

func newFakeClock() *fakeClock {
	c := &fakeClock{}
	c.at.Store(time.Date(2026, 11, 29, 10, 15, 0, 0, time.UTC).UnixNano())
	return c
}

func (c *fakeClock) Now() time.Time      { return time.Unix(0, c.at.Load()) }
func (c *fakeClock) Add(d time.Duration) { c.at.Add(int64(d)) }
