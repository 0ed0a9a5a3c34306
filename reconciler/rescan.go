package reconciler

import (
	"context"
	"fmt"
	"time"

	"github.com/reconcile/reconcile/index"
)

// rescanChunk is how many entries one index transaction writes during a
// rescan: few enough to keep memory flat, many enough to keep commits rare.
const rescanChunk = 10000

// Rescan rebuilds the index from the database: every soft-deleted row, found
// through the partial index. It returns how many are due at cutoff.
func (r *Reconciler) Rescan(ctx context.Context, cutoff time.Time) (int, error) {
	if err := r.index.Reset(); err != nil {
		return 0, err
	}
	rows, err := r.db.Query(ctx, r.sql.rescan)
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
			if err := r.index.Put(chunk); err != nil {
				return 0, err
			}
			chunk = chunk[:0]
		}
	}
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("rescan: %w", err)
	}
	if err := r.index.Put(chunk); err != nil {
		return 0, err
	}
	return due, nil
}
