package reconciler

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	"github.com/reconcile/reconcile/index"
)

// rescanChunk is how many entries one index transaction writes during a
// rescan: few enough to keep memory flat, many enough to keep commits rare.
const rescanChunk = 10000

// Rescan rebuilds the index from the database: every soft-deleted row, found
// through the partial index. It returns how many are due at cutoff. The two
// buckets load at once, each from its own query, and both queries read one
// snapshot, so the buckets agree: one connection exports it, the other
// imports it.
func (r *Reconciler) Rescan(ctx context.Context, cutoff time.Time) (int, error) {
	return r.rescan(ctx, cutoff, false)
}

// RescanForStream is Rescan for the replication stream: it first waits for
// the transactions open when it begins, so that it covers every change the
// stream has received.
func (r *Reconciler) RescanForStream(ctx context.Context, cutoff time.Time) (int, error) {
	return r.rescan(ctx, cutoff, true)
}

func (r *Reconciler) rescan(ctx context.Context, cutoff time.Time, complete bool) (int, error) {
	if complete {
		if err := r.awaitOpenTransactions(ctx); err != nil {
			return 0, err
		}
	}
	opts := pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}
	byID, err := r.db.BeginTx(ctx, opts)
	if err != nil {
		return 0, fmt.Errorf("rescan: %w", err)
	}
	defer byID.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // read-only
	var snapshot string
	if err := byID.QueryRow(ctx, `SELECT pg_export_snapshot()`).Scan(&snapshot); err != nil {
		return 0, fmt.Errorf("rescan: export snapshot: %w", err)
	}
	byDue, err := r.db.BeginTx(ctx, opts)
	if err != nil {
		return 0, fmt.Errorf("rescan: %w", err)
	}
	defer byDue.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // read-only
	if _, err := byDue.Exec(ctx, fmt.Sprintf("SET TRANSACTION SNAPSHOT '%s'", snapshot)); err != nil {
		return 0, fmt.Errorf("rescan: import snapshot: %w", err)
	}
	// Emptied only now, so a rescan that could not start leaves the index.
	if err := r.index.Reset(); err != nil {
		return 0, err
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		_, err := loadIndex(gctx, byID, r.sql.rescanByID, r.index.LoadEntries, cutoff)
		return err
	})
	var due int
	g.Go(func() (err error) {
		due, err = loadIndex(gctx, byDue, r.sql.rescanByDue, r.index.LoadDue, cutoff)
		return err
	})
	return due, g.Wait()
}

// snapshotRetry is how often awaitOpenTransactions looks again.
const snapshotRetry = 10 * time.Millisecond

// awaitOpenTransactions waits until every transaction running now has
// ended, so that a snapshot taken next sees every transaction that has
// committed by now. That is what the service needs: a commit reaches the
// WAL, and the replication stream, a moment before other sessions see it
// (longer under synchronous replication, which waits in between), and the
// stream counts on a rescan covering every commit it has received.
func (r *Reconciler) awaitOpenTransactions(ctx context.Context) error {
	var open []string
	err := r.db.QueryRow(ctx, `
		SELECT coalesce(array_agg(x::text), '{}') FROM pg_snapshot_xip(pg_current_snapshot()) AS x`).Scan(&open)
	if err != nil {
		return fmt.Errorf("rescan: list open transactions: %w", err)
	}
	since := time.Now()
	for len(open) > 0 {
		err := r.db.QueryRow(ctx, `
			SELECT coalesce(array_agg(x::text), '{}')
			FROM unnest($1::text[]::xid8[]) AS x
			WHERE x IN (SELECT pg_snapshot_xip(pg_current_snapshot()))`, open).Scan(&open)
		if err != nil {
			return fmt.Errorf("rescan: wait for open transactions: %w", err)
		}
		if len(open) == 0 {
			break
		}
		if time.Since(since) > 10*time.Second {
			r.log.WarnContext(ctx, "the rescan waits for transactions that were open when it began", "xids", open)
			since = time.Now()
		}
		sleep(ctx, snapshotRetry)
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	return nil
}

// loadIndex streams a query's rows into load, in chunks, and counts those
// due at cutoff.
func loadIndex(ctx context.Context, tx pgx.Tx, sql string, load func([]index.Entry) error, cutoff time.Time) (int, error) {
	rows, err := tx.Query(ctx, sql)
	if err != nil {
		return 0, fmt.Errorf("rescan: %w", err)
	}
	defer rows.Close()

	due := 0
	chunk := make([]index.Entry, 0, rescanChunk)
	for rows.Next() {
		var e index.Entry
		if err := rows.Scan(&e.ID, &e.Key, &e.DeletedAt); err != nil {
			return 0, fmt.Errorf("rescan: %w", err)
		}
		if !e.DeletedAt.After(cutoff) {
			due++
		}
		chunk = append(chunk, e)
		if len(chunk) == rescanChunk {
			if err := load(chunk); err != nil {
				return 0, err
			}
			chunk = chunk[:0]
		}
	}
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("rescan: %w", err)
	}
	if err := load(chunk); err != nil {
		return 0, err
	}
	return due, nil
}
