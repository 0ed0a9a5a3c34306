package reconciler

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Backlog is what the index holds against the database's clock, for
// `reconcile status` and the metrics.
type Backlog struct {
	Rows    int // soft-deleted rows in the index
	Due     int // rows past their retention
	Overdue int // rows due for longer than Config.OverdueAfter
	// NextDue is when the earliest row in the index falls due: in the past
	// while due rows wait; zero when the index is empty.
	NextDue time.Time
}

// Backlog counts the rows of the index that are due, and overdue, with the
// cutoffs the purge takes: the database's clock decides, in deleted_at's
// own terms.
func (r *Reconciler) Backlog(ctx context.Context) (Backlog, error) {
	var cutoff, overdue time.Time
	err := r.db.QueryRow(ctx, r.sql.cutoffs, r.retentionMicros(), (r.cfg.Retention+r.cfg.OverdueAfter).Microseconds()).Scan(&cutoff, &overdue)
	if err != nil {
		return Backlog{}, fmt.Errorf("read database clock: %w", err)
	}
	st, err := r.index.Stats(cutoff, overdue)
	if err != nil {
		return Backlog{}, err
	}
	b := Backlog{Rows: st.Rows, Due: st.Due, Overdue: st.Overdue}
	if !st.Earliest.IsZero() {
		if b.NextDue, err = r.dueAt(ctx, st.Earliest, 0); err != nil {
			return Backlog{}, err
		}
	}
	return b, nil
}

// OutboxStats returns how many files wait in the outbox for removal, when
// the oldest was queued (zero when none waits), and its age by the
// database's clock. It fails with ErrSetup when `reconcile migrate` has
// not created the outbox.
func (r *Reconciler) OutboxStats(ctx context.Context) (pending int, oldest time.Time, age time.Duration, err error) {
	var (
		first   *time.Time
		seconds float64
	)
	err = r.db.QueryRow(ctx, r.sql.outboxStats).Scan(&pending, &first, &seconds)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == pgerrcode.UndefinedTable {
		return 0, time.Time{}, 0, fmt.Errorf("outbox table %s is missing; run `reconcile migrate` first: %w", r.table.outbox(), ErrSetup)
	}
	if err != nil {
		return 0, time.Time{}, 0, fmt.Errorf("read outbox size: %w", err)
	}
	if first != nil {
		oldest = *first
	}
	return pending, oldest, time.Duration(seconds * float64(time.Second)), nil
}

// OutboxEmpty tells whether the outbox holds nothing, not even a file
// whose grace is not over.
func (r *Reconciler) OutboxEmpty(ctx context.Context) (bool, error) {
	if served, err := Served(ctx, r.db, r.table.Schema, r.table.Name); err != nil || !served {
		return true, err // no outbox: nothing in it
	}
	var empty bool
	if err := r.db.QueryRow(ctx, `SELECT NOT EXISTS (SELECT 1 FROM `+r.table.outbox()+`)`).Scan(&empty); err != nil {
		return false, fmt.Errorf("look at outbox %s: %w", r.table.outbox(), err)
	}
	return empty, nil
}

// Holder is the database session holding the advisory lock of Lock: the
// instance that purges the table.
type Holder struct {
	PID             int
	ApplicationName string
	ClientAddr      string    // empty: a Unix socket, or hidden from this role
	BackendStart    time.Time // zero: hidden from this role
}

// LockHolder tells which session holds the advisory lock of Lock; ok is
// false when none does.
func (r *Reconciler) LockHolder(ctx context.Context) (h Holder, ok bool, err error) {
	var started *time.Time
	err = r.db.QueryRow(ctx, r.sql.lockHolder).Scan(&h.PID, &h.ApplicationName, &h.ClientAddr, &started)
	if errors.Is(err, pgx.ErrNoRows) {
		return Holder{}, false, nil
	}
	if err != nil {
		return Holder{}, false, fmt.Errorf("look for the holder of the advisory lock: %w", err)
	}
	if started != nil {
		h.BackendStart = *started
	}
	return h, true, nil
}
