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
	if err := r.index.Reset(); err != nil {
		return 0, err
	}
	opts := pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}
	byID, snapshot, err := r.completeSnapshot(ctx, opts)
	if err != nil {
		return 0, err
	}
	defer byID.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // read-only
	byDue, err := r.db.BeginTx(ctx, opts)
	if err != nil {
		return 0, fmt.Errorf("rescan: %w", err)
	}
	defer byDue.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // read-only
	if _, err := byDue.Exec(ctx, fmt.Sprintf("SET TRANSACTION SNAPSHOT '%s'", snapshot)); err != nil {
		return 0, fmt.Errorf("rescan: import snapshot: %w", err)
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

// snapshotRetry is how long to wait before taking a snapshot again.
const snapshotRetry = 10 * time.Millisecond

// completeSnapshot begins a transaction whose snapshot sees every
// transaction that has committed, and exports it. A commit is in the WAL,
// and so in the replication stream, a moment before other sessions see it
// (longer under synchronous replication, which waits in between); the
// stream relies on a rescan covering everything it has received, so a
// snapshot that misses a committed transaction is taken again.
func (r *Reconciler) completeSnapshot(ctx context.Context, opts pgx.TxOptions) (pgx.Tx, string, error) {
	for {
		tx, err := r.db.BeginTx(ctx, opts)
		if err != nil {
			return nil, "", fmt.Errorf("rescan: %w", err)
		}
		var missed int
		var snapshot string
		err = tx.QueryRow(ctx, `
			SELECT (SELECT count(*) FROM pg_snapshot_xip(pg_current_snapshot()) AS x
			        WHERE pg_xact_status(x) = 'committed'),
			       pg_export_snapshot()`).Scan(&missed, &snapshot)
		if err == nil && missed == 0 {
			return tx, snapshot, nil
		}
		_ = tx.Rollback(context.WithoutCancel(ctx))
		if err != nil {
			return nil, "", fmt.Errorf("rescan: export snapshot: %w", err)
		}
		sleep(ctx, snapshotRetry)
		if err := ctx.Err(); err != nil {
			return nil, "", err
		}
	}
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
