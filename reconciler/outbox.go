package reconciler

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
)

// outboxPage bounds the keys handled together: one S3 bulk delete.
const outboxPage = 1000

// recordTimeout bounds recording removals after the run was cancelled.
const recordTimeout = 30 * time.Second

// removeFiles removes the files of keys taken from the outbox: keys that a
// row uses again are dropped from the outbox and keep their files; the rest
// are removed, and leave the outbox only once their file is gone.
func (r *Reconciler) removeFiles(ctx context.Context, keys []string) (Summary, error) {
	var s Summary
	rows, err := r.db.Query(ctx, r.sql.keepShared, keys)
	if err != nil {
		return s, fmt.Errorf("check keys before removing files: %w", err)
	}
	kept, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return s, fmt.Errorf("check keys before removing files: %w", err)
	}
	for _, key := range kept {
		r.log.InfoContext(ctx, "[CLEANUP] Kept file still used by another row", "storage_key", key)
	}
	s.FilesKept = len(kept)
	if len(kept) > 0 {
		keys = slices.DeleteFunc(slices.Clone(keys), func(k string) bool { return slices.Contains(kept, k) })
	}
	if len(keys) == 0 {
		return s, nil
	}

	errs := r.store.Remove(ctx, keys)
	var removed, failed, reasons []string
	for i, key := range keys {
		if errs[i] == nil {
			removed = append(removed, key)
			continue
		}
		failed = append(failed, key)
		reasons = append(reasons, errs[i].Error())
		r.log.ErrorContext(ctx, "[CLEANUP] Failed to remove file; it stays in the outbox for a retry",
			"storage_key", key, "error", errs[i])
	}
	// Record the outcome even when the run is being cancelled, so that no
	// removed file is tried again for nothing. The commit need not wait for
	// the disk: should it be lost, the next run removes the same files again
	// and finds them gone, which counts as removed. Not waiting keeps these
	// commits from queueing behind the file system's journal.
	record, cancel := context.WithTimeout(context.WithoutCancel(ctx), recordTimeout)
	defer cancel()
	err = pgx.BeginTxFunc(record, r.db, pgx.TxOptions{}, func(tx pgx.Tx) error {
		if _, err := tx.Exec(record, "SET LOCAL synchronous_commit = off"); err != nil {
			return err
		}
		_, err := tx.Exec(record, r.sql.finishRemoval, removed, failed, reasons)
		return err
	})
	if err != nil {
		return s, fmt.Errorf("record removed files in the outbox: %w", err)
	}
	s.FilesRemoved, s.FilesPending = len(removed), len(failed)
	return s, nil
}

// DrainOutbox removes the files left in the outbox by an earlier run that
// stopped or failed between a commit and the removal. With all set it takes
// every entry; otherwise only those whose next try is due.
func (r *Reconciler) DrainOutbox(ctx context.Context, all bool) (Summary, error) {
	var total Summary
	after := ""
	for {
		rows, err := r.db.Query(ctx, r.sql.outboxPage, after, all, outboxPage)
		if err != nil {
			return total, fmt.Errorf("read outbox: %w", err)
		}
		keys, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return total, fmt.Errorf("read outbox: %w", err)
		}
		if len(keys) == 0 {
			return total, nil
		}
		after = keys[len(keys)-1]
		s, err := r.removeFiles(ctx, keys)
		total.add(s)
		if err != nil {
			return total, err
		}
	}
}

// CheckOutbox fails with ErrSetup when `reconcile migrate` has not created
// the outbox table.
func (r *Reconciler) CheckOutbox(ctx context.Context) error {
	var exists bool
	if err := r.db.QueryRow(ctx, r.sql.outboxExists, r.table.outbox()).Scan(&exists); err != nil {
		return fmt.Errorf("look for the outbox table: %w", err)
	}
	if !exists {
		return fmt.Errorf("outbox table %s is missing; run `reconcile migrate` first: %w", r.table.outbox(), ErrSetup)
	}
	return nil
}
