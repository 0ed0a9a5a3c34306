package reconciler

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/reconcile/reconcile/index"
)

// rescanChunk is how many entries one index transaction writes during a
// rescan: few enough to keep memory flat, many enough to keep commits rare.
const rescanChunk = 10000

// Rescan rebuilds the index from the database: every soft-deleted row, found
// through the partial index. It returns how many are due at cutoff. Both
// passes read one snapshot, so the two buckets agree.
func (r *Reconciler) Rescan(ctx context.Context, cutoff time.Time) (int, error) {
	if err := r.index.Reset(); err != nil {
		return 0, err
	}
	tx, err := r.db.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return 0, fmt.Errorf("rescan: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // read-only

	if _, err := loadIndex(ctx, tx, r.sql.rescanByID, r.index.LoadEntries, cutoff); err != nil {
		return 0, err
	}
	return loadIndex(ctx, tx, r.sql.rescanByDue, r.index.LoadDue, cutoff)
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
