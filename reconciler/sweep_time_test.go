package reconciler_test

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/reconcile/reconcile/index"
	"github.com/reconcile/reconcile/reconciler"
)

// With a naive deleted_at the cutoff is taken from the instant
// (now() - retention) and given in the zone's wall time; the timer must
// turn an entry's wall time into a wake-up with the zone's offset at that
// date, not today's. A row deleted before a change to summer time and due
// after it would make the timer wake an hour early and spin for that hour.
func TestNaiveDeletedAtAcrossSummerTimeDoesNotSpin(t *testing.T) {
	b := setup(t)
	if _, err := b.pool.Exec(b.ctx, `
		DROP INDEX forum_attac_is_acti_8d0ac7_idx;
		ALTER TABLE forum_attachment ALTER COLUMN deleted_at TYPE timestamp USING deleted_at AT TIME ZONE 'UTC'`); err != nil {
		t.Fatal(err)
	}
	// A zone and a retention such that the zone's offset was smaller when
	// the row was deleted than it is now (summer time began meanwhile).
	var (
		zone            string
		ret             time.Duration
		offThen, offNow time.Duration
	)
search:
	for _, z := range []string{"Australia/Sydney", "Europe/Paris", "America/New_York", "America/Santiago"} {
		for _, days := range []int{182, 120, 90, 60} {
			r := time.Duration(days) * 24 * time.Hour
			var then, nowS float64
			if err := b.pool.QueryRow(b.ctx, `
				SELECT extract(epoch FROM ((now() - $1 * interval '1 microsecond') AT TIME ZONE $2) - ((now() - $1 * interval '1 microsecond') AT TIME ZONE 'UTC'))::float8,
				       extract(epoch FROM (now() AT TIME ZONE $2) - (now() AT TIME ZONE 'UTC'))::float8`, r.Microseconds(), z).Scan(&then, &nowS); err != nil {
				t.Fatal(err)
			}
			if then < nowS {
				zone, ret = z, r
				offThen, offNow = time.Duration(then)*time.Second, time.Duration(nowS)*time.Second
				break search
			}
		}
	}
	if zone == "" {
		t.Skip("no zone changed to summer time within the retentions tried")
	}
	// Falls due in 30 minutes, by the database's own purge statement.
	ids := b.seed(row{key: "dst/soon.jpg"})
	if _, err := b.pool.Exec(b.ctx, `
		UPDATE forum_attachment SET is_active = false,
		       deleted_at = ((now() - $2 * interval '1 microsecond') AT TIME ZONE $3) + interval '30 minutes'
		WHERE id = $1`, ids[0], ret.Microseconds(), zone); err != nil {
		t.Fatal(err)
	}
	table := djangoTable
	table.TimeZone = zone
	db := &countingDB{Pool: b.pool}
	r, err := reconciler.New(b.ctx, db, b.store, b.index, table,
		reconciler.Config{Retention: ret, BatchSize: 10, Concurrency: 3, RemoveConcurrency: 2},
		slog.New(slog.NewTextHandler(&logBuffer{t: t}, nil)))
	if err != nil {
		t.Fatal(err)
	}
	rescanned(t, b.ctx, r)
	ctx, cancel := context.WithCancel(b.ctx)
	done := make(chan error, 1)
	go func() { done <- r.Sweep(ctx, reconciler.SweepConfig{MaxWait: time.Minute}) }()
	time.Sleep(300 * time.Millisecond) // the first sweep, then asleep
	start := db.calls.Load()
	time.Sleep(time.Second)
	calls := db.calls.Load() - start
	cancel()
	if err := <-done; err != nil {
		t.Errorf("sweep: %v", err)
	}
	if !b.rowExists(ids[0]) {
		t.Fatal("the row was purged 30 minutes early")
	}
	t.Logf("offset %s when deleted, %s now; %d statements in one second", offThen, offNow, calls)
	if calls > 10 {
		t.Fatalf("%d statements in one second while the only entry is due in 30 minutes: the timer spins", calls)
	}
}

// While the hourly budget is spent, the timer still takes the index's
// signals: a change that brings an entry due already, before the walk's
// position (a row soft-deleted with an old deleted_at, a stream catching
// up), sends the walk back for it once the budget allows.
func TestBudgetWaitKeepsAnEarlierDueEntry(t *testing.T) {
	b := setup(t)
	b.seed(dueRows(10, "blocked/%02d.jpg")...)
	rescanned(t, b.ctx, b.r)
	if err := b.index.Rescanned("test", 1, time.Now()); err != nil {
		t.Fatal(err)
	}
	// The stream's start, long ago: its restart was taken.
	<-b.index.Updates()
	b.index.TakeEarliest()
	clock := newFakeClock()
	sweeping(t, b.r, reconciler.SweepConfig{MaxWait: 50 * time.Millisecond, MaxDeletesPerHour: 4, Now: clock.Now})
	left := func() int { return b.count(`SELECT count(*) FROM forum_attachment WHERE image LIKE 'blocked/%'`) }
	eventually(t, func() bool { return left() == 6 }, func() string { return fmt.Sprintf("%d rows left, want 6", left()) })

	// The budget is spent; a row soft-deleted three hours ago arrives
	// through the stream.
	old := time.Now().Add(-3 * retention)
	ids := b.seed(row{key: "late/x.jpg", deletedAt: &old})
	if err := b.index.Apply([]index.Change{{Op: index.Upsert, Entry: index.Entry{ID: ids[0], DeletedAt: old.UTC().Truncate(time.Microsecond), Key: "late/x.jpg"}}}, 2); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // waitBlocked takes the signal
	for range 3 {
		clock.Add(time.Hour)
		time.Sleep(300 * time.Millisecond)
	}
	eventually(t, func() bool { return left() == 0 }, func() string { return fmt.Sprintf("%d rows left, want 0", left()) })
	time.Sleep(500 * time.Millisecond)
	if b.rowExists(ids[0]) {
		t.Fatal("the row due for three hours that arrived while the budget was spent was never purged (budget left this hour)")
	}
}
