package reconciler

import (
	"context"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/reconcile/reconcile/internal/storage"
)

// outboxPage bounds the keys handled together: one S3 bulk delete.
const outboxPage = 1000

// recordTimeout bounds recording removals after the run was cancelled.
const recordTimeout = 30 * time.Second

// removeFiles removes the files of keys taken from the outbox. Keys that a
// row uses again leave the outbox and keep their files; keys no longer in
// the outbox are left alone. Each other file is removed unless it was
// modified after its key was queued (a new upload under the freed name,
// which keeps it); such keys, and keys whose file was removed or missing,
// leave the outbox. A removal that failed stays, with its error, for a
// retry.
//
// A batch whose every file is missing may mean the storage went away since
// the last probe: it is probed again, and if it holds none of the table's
// files the keys stay in the outbox and ErrNoFiles ends the run.
func (r *Reconciler) removeFiles(ctx context.Context, keys []string) (Summary, error) {
	var s Summary
	removals, kept, err := r.claimRemovals(ctx, keys)
	if err != nil {
		return s, err
	}
	for _, key := range kept {
		r.log.InfoContext(ctx, "[CLEANUP] Kept file still used by another row", "storage_key", key)
	}
	// A row may own a file no row names as its key: under another
	// spelling of its path ("a//b.jpg"), or, with derived patterns, through
	// a derived location (a thumbnail folder) of any table on the storage.
	stillOwned, err := r.stillOwned(ctx, removals)
	if err != nil {
		return s, err
	}
	var owned []string
	removals = slices.DeleteFunc(removals, func(rm storage.Removal) bool {
		if stillOwned[rm.Key] {
			r.log.InfoContext(ctx, "[CLEANUP] Kept file a remaining row still owns, under another spelling of its path or through a derived location", "storage_key", rm.Key)
			owned = append(owned, rm.Key)
		}
		return stillOwned[rm.Key]
	})
	if len(owned) > 0 {
		if _, err := r.db.Exec(ctx, r.sql.finishRemoval, owned, []string{}, []string{}); err != nil {
			return s, fmt.Errorf("record kept files in the outbox: %w", err)
		}
	}
	s.FilesKept = len(kept) + len(owned)
	r.cfg.Observer.Files(0, 0, s.FilesKept)
	if len(removals) == 0 {
		return s, nil
	}

	var done, failed, reasons, missing []string
	defer func() {
		r.cfg.Observer.Files(s.FilesRemoved+s.DerivedRemoved, s.FilesMissing, s.DerivedKept)
		r.cfg.Observer.PurgeErrors(ErrorStorage, len(failed))
	}()
	fail := func(key string, err error) {
		failed = append(failed, key)
		reasons = append(reasons, err.Error())
		r.log.ErrorContext(ctx, "[CLEANUP] Failed to remove file; it stays in the outbox for a retry",
			"storage_key", key, "error", err)
	}
	if len(r.table.Derived) > 0 {
		// The derived files go first: a file whose derived files are left
		// stays, with its key in the outbox, so that a retry finds both.
		removed, kept, unsure, err := r.removeDerived(ctx, removals)
		if err != nil {
			return s, err
		}
		s.DerivedRemoved, s.DerivedKept = removed, kept
		ready := removals[:0:0]
		for i, rm := range removals {
			if err, ok := unsure[i]; ok {
				fail(rm.Key, err)
				continue
			}
			ready = append(ready, rm)
		}
		removals = ready
	}

	results := r.store.Remove(ctx, removals)
	for i, res := range results {
		key := removals[i].Key
		switch {
		case res.Err != nil:
			fail(key, res.Err)
			continue
		case res.Outcome == storage.Removed:
			s.FilesRemoved++
		case res.Outcome == storage.Missing:
			missing = append(missing, key)
			continue
		case res.Outcome == storage.Rewritten:
			s.FilesRewritten++
			r.log.WarnContext(ctx, "[CLEANUP] Kept file written again after its removal was queued: it belongs to a new upload",
				"storage_key", key, "modified_at", res.ModTime.UTC().Format(time.RFC3339Nano),
				"queued_at", removals[i].QueuedAt.UTC().Format(time.RFC3339Nano))
		default:
			return s, fmt.Errorf("remove %q: the storage answered no outcome", key)
		}
		done = append(done, key)
	}
	if len(missing) > 0 && len(missing) == len(removals) {
		if err := r.probeFiles(ctx); err != nil {
			if errors.Is(err, ErrNoFiles) {
				r.log.ErrorContext(ctx, "[CLEANUP] Failed: every file of a batch is missing and the storage holds none of the table's files; the keys stay in the outbox",
					"files", len(missing), "error", err)
			}
			return s, err
		}
	}
	var judgeErr error
	if len(missing) > 0 {
		verdict, err := r.confirmMissing(ctx, missing)
		switch {
		case err != nil:
			// Still record what was removed; the missing files are tried
			// again.
			judgeErr = err
			for _, key := range missing {
				fail(key, fmt.Errorf("missing; could not tell whether its folder is away: %w", err))
			}
		default:
			done = append(done, verdict.confirmed...)
			s.FilesMissing = len(verdict.confirmed)
			for _, key := range missing {
				if reason, ok := verdict.unsure[key]; ok {
					fail(key, reason)
				}
			}
			s.FilesPending += len(verdict.later) // left as they are, for the next look
		}
	}

	// Record the outcome even when the run is being cancelled, so that no
	// removed file is tried again for nothing. The commit need not wait for
	// the disk: should it be lost, the next run removes the same files again
	// and finds them gone. Not waiting keeps these commits from queueing
	// behind the file system's journal.
	record, cancel := context.WithTimeout(context.WithoutCancel(ctx), recordTimeout)
	defer cancel()
	err = pgx.BeginTxFunc(record, r.db, pgx.TxOptions{}, func(tx pgx.Tx) error {
		if _, err := tx.Exec(record, "SET LOCAL synchronous_commit = off"); err != nil {
			return err
		}
		_, err := tx.Exec(record, r.sql.finishRemoval, done, failed, reasons)
		return err
	})
	if err != nil {
		return s, fmt.Errorf("record removed files in the outbox: %w", err)
	}
	s.FilesPending += len(failed)
	return s, judgeErr
}

// stillOwned tells which of the files to remove a row still owns: the
// ownership query of derived files when the tables have patterns, else
// the keys spelled otherwise alone (the claim has checked the keys).
func (r *Reconciler) stillOwned(ctx context.Context, removals []storage.Removal) (map[string]bool, error) {
	files := make([]string, len(removals))
	for i, rm := range removals {
		files[i] = rm.Key
	}
	if len(r.patterns) > 0 && len(files) > 0 {
		return r.ownedFiles(ctx, files)
	}
	u, err := r.uncleanOwners(ctx)
	if err != nil {
		return nil, err
	}
	owned := map[string]bool{}
	for _, f := range files {
		_, owned[f] = u.owns(r, f)
	}
	return owned, nil
}

// claimRemovals makes the shared-key check again and returns the removals
// of the keys still in the outbox, each with the moment it was queued in
// this host's clock, and the keys a row uses again.
func (r *Reconciler) claimRemovals(ctx context.Context, keys []string) ([]storage.Removal, []string, error) {
	// Taken before the query: the database's now() is then no earlier than
	// it, so the queue times come out early, never late, and a file
	// written just after its key was queued is never taken for an older
	// one.
	local := time.Now()
	rows, err := r.db.Query(ctx, r.sql.claimRemovals, keys, r.holderPID())
	if err != nil {
		return nil, nil, fmt.Errorf("check keys before removing files: %w", err)
	}
	var (
		removals []storage.Removal
		kept     []string
		held     bool
		shut     bool // the fence's own row: nothing was claimed
		key      string
		queued   time.Time
		dbNow    time.Time
		used     bool
	)
	_, err = pgx.ForEachRow(rows, []any{&held, &key, &queued, &dbNow, &used}, func() error {
		switch {
		case !held:
			shut = true
		case used:
			kept = append(kept, key)
		default:
			removals = append(removals, storage.Removal{Key: key, QueuedAt: local.Add(queued.Sub(dbNow))})
		}
		return nil
	})
	if err == nil && shut {
		err = r.fenceShut()
	}
	if err != nil {
		return nil, nil, fmt.Errorf("check keys before removing files: %w", err)
	}
	return removals, kept, nil
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
		// Probed once there is something to remove: a table with nothing
		// to do does not fail for a storage that holds none of its files.
		if after == "" {
			if err := r.ensureFiles(ctx); err != nil {
				return total, err
			}
		}
		after = keys[len(keys)-1]
		s, err := r.removeFiles(ctx, keys)
		total.Add(s)
		if err != nil {
			r.endIfLost(err)
			return total, err
		}
	}
}

// CheckSetup fails with ErrSetup when `reconcile migrate` has not created
// the outbox table, or the index of a derived pattern; and when the storage
// refuses the listing that derived files need.
func (r *Reconciler) CheckSetup(ctx context.Context) error {
	var exists bool
	if err := r.db.QueryRow(ctx, r.sql.outboxExists, r.table.outbox()).Scan(&exists); err != nil {
		return fmt.Errorf("look for the outbox table: %w", err)
	}
	if !exists {
		return fmt.Errorf("outbox table %s is missing; run `reconcile migrate` first: %w", r.table.outbox(), ErrSetup)
	}
	if err := r.db.QueryRow(ctx, r.sql.outboxCurrent, r.table.outbox()).Scan(&exists); err != nil {
		return fmt.Errorf("look at the outbox table: %w", err)
	}
	if !exists {
		return fmt.Errorf("outbox table %s lacks the column not_before of this version; run `reconcile migrate`: %w", r.table.outbox(), ErrSetup)
	}
	return r.checkDerived(ctx)
}

// GoneRow is a row deleted outright, as its DELETE showed it.
type GoneRow struct {
	// Table names the row's table as the index does (Table.IndexName),
	// for Tables.QueueGone.
	Table   string
	ID, Key string
	// SoftDeleted: it was soft-deleted at DeletedAt, as the index holds
	// such times.
	SoftDeleted bool
	DeletedAt   time.Time
	// At is when the DELETE committed.
	At time.Time
}

// QueueGone queues the files of rows deleted outright in the outbox, to be
// removed once grace has passed since their DELETE, with the rules of
// every removal: a key a row uses then keeps its file (a row put back with
// the same key), a file written after the DELETE is a new upload's. A row
// that was soft-deleted and due when it was deleted was purged (by this
// service, or another purger): its file is the outbox's already.
func (r *Reconciler) QueueGone(ctx context.Context, rows []GoneRow, grace time.Duration) error {
	at := make([]time.Time, len(rows))
	for i, row := range rows {
		at[i] = row.At
	}
	q, err := r.db.Query(ctx, r.sql.cutoffsAt, at, r.retentionMicros())
	if err != nil {
		return fmt.Errorf("read the cutoffs of rows deleted outright: %w", err)
	}
	cutoffs, err := pgx.CollectRows(q, pgx.RowTo[time.Time])
	if err != nil {
		return fmt.Errorf("read the cutoffs of rows deleted outright: %w", err)
	}
	var keys, ids []string
	var ats []time.Time
	for i, row := range rows {
		if row.Key == "" {
			continue
		}
		if row.SoftDeleted && !row.DeletedAt.After(cutoffs[i]) {
			// Purged by this service, or another purger who took its
			// file; should that be someone else, the orphan scan finds it.
			r.log.DebugContext(ctx, "a due row was deleted: its file is the purge's", "id", row.ID, "storage_key", row.Key)
			continue
		}
		// A key that spells its path otherwise ("a//b.jpg") names the
		// file of the clean one, which the storage takes.
		key := strings.TrimPrefix(path.Clean("/"+row.Key), "/")
		if err := storage.ValidateKey(key); err != nil {
			r.log.WarnContext(ctx, "[CLEANUP] Left the file of a row deleted outright: its key is refused", "id", row.ID, "storage_key", row.Key, "error", err)
			continue
		}
		keys, ids, ats = append(keys, key), append(ids, row.ID), append(ats, row.At)
		r.log.InfoContext(ctx, "[CLEANUP] Queued the file of a row deleted outright: it goes after orphans.grace unless a row uses it again",
			"id", row.ID, "storage_key", key, "grace", grace.String())
	}
	if len(keys) == 0 {
		return nil
	}
	if _, err := r.db.Exec(ctx, r.sql.queueDeleted, keys, ids, ats, grace.Microseconds()); err != nil {
		return fmt.Errorf("queue the files of rows deleted outright: %w", err)
	}
	return nil
}

// IdentityWarning says, when the table's DELETEs do not carry the storage
// key (its replica identity is not FULL), that the files of rows deleted
// outright are left to the orphan scan; "" otherwise.
func (r *Reconciler) IdentityWarning(ctx context.Context) (string, error) {
	// The table and each of its partitions: one made after `migrate` has
	// the default.
	rows, err := r.db.Query(ctx, r.sql.notFull, r.table.qualified())
	if err != nil {
		return "", fmt.Errorf("read the replica identity of %s: %w", r.table.qualified(), err)
	}
	partial, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return "", fmt.Errorf("read the replica identity of %s: %w", r.table.qualified(), err)
	}
	if len(partial) == 0 {
		return "", nil
	}
	return fmt.Sprintf("the replica identity of %s is not FULL: a DELETE there does not carry the storage key, so the files of rows deleted outright stay until `reconcile orphans`; `reconcile migrate` sets it", strings.Join(partial, ", ")), nil
}
