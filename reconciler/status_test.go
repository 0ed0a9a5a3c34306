package reconciler_test

import (
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/reconcile/reconcile/internal/testdb"
	"github.com/reconcile/reconcile/reconciler"
)

// near fails unless got is within a few seconds of want: the database and
// the test read the clock at different moments.
func near(t *testing.T, what string, got, want time.Time) {
	t.Helper()
	if d := got.Sub(want); d < -5*time.Second || d > 5*time.Second {
		t.Fatalf("%s = %s; want about %s", what, got.UTC(), want.UTC())
	}
}

func TestBacklogCountsDueAndOverdueRows(t *testing.T) {
	b := setup(t, func(c *reconciler.Config) { c.OverdueAfter = 30 * time.Minute })
	if bl, err := b.r.Backlog(b.ctx); err != nil || bl != (reconciler.Backlog{}) {
		t.Fatalf("empty index: %+v, %v", bl, err)
	}
	oldest := ago(retention + 45*time.Minute) // due for 45 minutes: overdue
	b.seed(
		row{key: "b/overdue.jpg", deletedAt: oldest},
		row{key: "b/due.jpg", deletedAt: ago(retention + 10*time.Minute)},
		row{key: "b/due-too.jpg", deletedAt: ago(retention + 20*time.Minute)},
		row{key: "b/recent.jpg", deletedAt: ago(retention / 2)},
		row{key: "b/active.jpg", active: true},
	)
	rescanned(t, b.ctx, b.r)
	bl, err := b.r.Backlog(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if bl.Rows != 4 || bl.Due != 3 || bl.Overdue != 1 {
		t.Fatalf("Backlog = %+v; want 4 rows, 3 due, 1 overdue", bl)
	}
	near(t, "NextDue", bl.NextDue, oldest.Add(retention))
}

// A deleted_at without time zone holds wall times of table.time_zone: the
// counts and the next due time are read in that zone.
func TestBacklogOfANaiveDeletedAt(t *testing.T) {
	b := setup(t)
	if _, err := b.pool.Exec(b.ctx, `
		DROP INDEX forum_attac_is_acti_8d0ac7_idx;
		ALTER TABLE forum_attachment ALTER COLUMN deleted_at TYPE timestamp USING deleted_at AT TIME ZONE 'UTC'`); err != nil {
		t.Fatal(err)
	}
	const zone = "America/Los_Angeles" // UTC-8 or -7: never the test server's
	ids := b.seed(row{key: "tz/recent.jpg"}, row{key: "tz/due.jpg"})
	if _, err := b.pool.Exec(b.ctx, `
		UPDATE forum_attachment SET is_active = false,
		       deleted_at = (now() AT TIME ZONE $3) - CASE WHEN id = $1 THEN interval '30 minutes' ELSE interval '90 minutes' END
		WHERE id IN ($1, $2)`, ids[0], ids[1], zone); err != nil {
		t.Fatal(err)
	}
	table := djangoTable
	table.TimeZone = zone
	r, err := reconciler.New(b.ctx, b.pool, b.store, b.index, table,
		reconciler.Config{Retention: retention, BatchSize: 10, Concurrency: 3, RemoveConcurrency: 2, OverdueAfter: time.Hour}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	rescanned(t, b.ctx, r)
	bl, err := r.Backlog(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if bl.Rows != 2 || bl.Due != 1 || bl.Overdue != 0 {
		t.Fatalf("Backlog = %+v; want 2 rows, 1 due, none overdue", bl)
	}
	near(t, "NextDue", bl.NextDue, time.Now().Add(-30*time.Minute))
}

func TestOutboxStats(t *testing.T) {
	b := setup(t)
	if n, oldest, _, err := b.r.OutboxStats(b.ctx); err != nil || n != 0 || !oldest.IsZero() {
		t.Fatalf("empty outbox: %d, %s, %v", n, oldest, err)
	}
	queued := time.Now().Add(-3 * time.Hour).Truncate(time.Microsecond)
	if _, err := b.pool.Exec(b.ctx, `
		INSERT INTO reconcile_forum_attachment_outbox (storage_key, attachment_id, enqueued_at)
		VALUES ('o/a.jpg', '1', $1), ('o/b.jpg', '2', now())`, queued); err != nil {
		t.Fatal(err)
	}
	if n, oldest, _, err := b.r.OutboxStats(b.ctx); err != nil || n != 2 || !oldest.Equal(queued) {
		t.Fatalf("OutboxStats = %d, %s, %v; want 2, %s", n, oldest, err, queued)
	}
	if _, err := b.pool.Exec(b.ctx, `DROP TABLE reconcile_forum_attachment_outbox`); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := b.r.OutboxStats(b.ctx); !errors.Is(err, reconciler.ErrSetup) {
		t.Fatalf("without the outbox: %v; want ErrSetup", err)
	}
}

func TestLockHolderNamesTheSession(t *testing.T) {
	url, pool := testdb.NewDjango(t)
	b := setupOn(t, pool)
	if _, ok, err := b.r.LockHolder(b.ctx); err != nil || ok {
		t.Fatalf("before Lock: held %v, %v", ok, err)
	}
	// The same lock in another database, and another advisory lock here,
	// are not it.
	_, otherPool := testdb.NewDjango(t)
	o := setupOn(t, otherPool)
	oconn, err := otherPool.Acquire(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer oconn.Release()
	_, orelease, err := o.r.Lock(b.ctx, oconn)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = orelease(b.ctx) }()
	if _, err := b.pool.Exec(b.ctx, `SELECT pg_advisory_lock(hashtextextended('reconcile:"public"."other"', 0))`); err != nil {
		t.Fatal(err)
	}
	if h, ok, err := b.r.LockHolder(b.ctx); err != nil || ok {
		t.Fatalf("with other locks only: held %v by %+v, %v", ok, h, err)
	}

	named := poolOn(t, url, func(c *pgxpool.Config) { c.ConnConfig.RuntimeParams["application_name"] = "reconcile-holder" })
	conn, err := named.Acquire(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	pid := int(conn.Conn().PgConn().PID())
	_, release, err := b.r.Lock(b.ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	h, ok, err := b.r.LockHolder(b.ctx)
	if err != nil || !ok {
		t.Fatalf("while locked: held %v, %v", ok, err)
	}
	if h.PID != pid || h.ApplicationName != "reconcile-holder" || h.ClientAddr != "127.0.0.1" || time.Since(h.BackendStart) > time.Minute {
		t.Fatalf("Holder = %+v; want pid %d, reconcile-holder, 127.0.0.1, started just now", h, pid)
	}
	if err := release(b.ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := b.r.LockHolder(b.ctx); err != nil || ok {
		t.Fatalf("after release: held %v, %v", ok, err)
	}
}

// The timer records its sweeps in the index, for status.
func TestSweepIsRecorded(t *testing.T) {
	b := setup(t)
	before := time.Now()
	sweeping(t, b.r, reconciler.SweepConfig{MaxWait: time.Minute})
	eventually(t, func() bool {
		st, err := b.index.State()
		return err == nil && !st.SweptAt.Before(before)
	}, func() string { return "no sweep recorded" })
}
