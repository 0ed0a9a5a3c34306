package reconciler

import (
	"bytes"
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/reconcile/reconcile/index"
)

// SweepConfig tunes the service's timer.
type SweepConfig struct {
	// MaxWait is the longest the timer sleeps: the outbox's retries and
	// any entry a missed signal left behind wait no longer than this.
	MaxWait time.Duration
	// DryRun logs what is due instead of purging it.
	DryRun bool
}

const (
	// sweepBackoff caps the wait after a failed sweep.
	sweepBackoff = 30 * time.Second
	// outboxEvery is how often, at most, the timer looks for removals to
	// retry.
	outboxEvery = time.Second
)

// Sweep runs the service's timer until ctx ends: it sleeps until the next
// entry of the index falls due (or a change brings an earlier one), then
// purges what is due through the same path as Purge, each row verified by
// the database. The outbox is drained at start and its failed removals are
// retried as their next try comes. A failed sweep is logged and tried
// again with backoff; Sweep returns only when ctx ends.
func (r *Reconciler) Sweep(ctx context.Context, cfg SweepConfig) error {
	if !cfg.DryRun {
		r.drainOutbox(ctx, true)
	}
	var (
		from      index.Position // entries before it have been handled
		backoff   = time.Second
		lastDrain = time.Now()
	)
	for ctx.Err() == nil {
		cutoff, offset, err := r.clock(ctx)
		if err == nil {
			if cfg.DryRun {
				err = r.logDue(ctx, from, cutoff)
			} else {
				// Failed removals come back after 10 s at the soonest: a
				// look a second is enough, however often the timer wakes.
				if time.Since(lastDrain) >= outboxEvery {
					r.drainOutbox(ctx, false)
					lastDrain = time.Now()
				}
				_, err = r.purgeFrom(ctx, from, cutoff, nil)
			}
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			r.log.ErrorContext(ctx, "[CLEANUP] Failed: sweep stopped short; retrying", "error", err, "retry_in", backoff)
			sleep(ctx, backoff)
			backoff = min(2*backoff, sweepBackoff)
			continue
		}
		backoff = time.Second
		from = index.After(cutoff)
		from = r.waitForDue(ctx, cfg, from, cutoff, offset)
	}
	return nil
}

// waitForDue sleeps until the first entry from position from falls due,
// MaxWait at most, and returns the position the next sweep starts from:
// earlier than from when a change brought an entry that is due already.
func (r *Reconciler) waitForDue(ctx context.Context, cfg SweepConfig, from index.Position, cutoff time.Time, offset time.Duration) index.Position {
	deadline := time.Now().Add(cfg.MaxWait)
	for {
		wake := deadline
		next, ok, err := r.index.Next(from)
		if err != nil {
			r.log.ErrorContext(ctx, "read the index", "error", err)
		}
		if ok {
			// The database's clock decides what is due: wake when it says so.
			if due := next.Add(r.cfg.Retention).Add(-offset); due.Before(wake) {
				wake = due
			}
		}
		timer := time.NewTimer(time.Until(wake))
		select {
		case <-ctx.Done():
			timer.Stop()
			return from
		case <-timer.C:
			return from
		case <-r.index.Updates():
			timer.Stop()
			earliest, restart := r.index.TakeEarliest()
			if restart {
				return nil
			}
			// A zero earliest is a token whose value an earlier call took.
			if !earliest.IsZero() && !earliest.After(cutoff) {
				// Due already when it arrived: look again from there.
				if at := index.After(earliest.Add(-time.Nanosecond)); bytes.Compare(at, from) < 0 {
					return at
				}
			}
		}
	}
}

// clock returns the cutoff by the database's clock, and how far that clock
// is ahead of this host's.
func (r *Reconciler) clock(ctx context.Context) (time.Time, time.Duration, error) {
	var now, cutoff time.Time
	local := time.Now()
	err := r.db.QueryRow(ctx, r.sql.clock, r.retentionMicros()).Scan(&now, &cutoff)
	if err != nil {
		return time.Time{}, 0, fmt.Errorf("read database clock: %w", err)
	}
	return cutoff, now.Sub(local), nil
}

func (r *Reconciler) drainOutbox(ctx context.Context, all bool) {
	s, err := r.DrainOutbox(ctx, all)
	if err != nil && ctx.Err() == nil {
		r.log.ErrorContext(ctx, "[CLEANUP] Failed to drain the outbox; retrying later", "error", err)
	}
	if s.FilesRemoved+s.FilesKept+s.FilesPending > 0 {
		r.log.InfoContext(ctx, "drained the outbox",
			"files_removed", s.FilesRemoved, "files_kept", s.FilesKept, "files_pending", s.FilesPending)
	}
}

// logDue logs, for the dry run, each entry from position from up to cutoff
// that the database holds as due: what a purge would delete now.
func (r *Reconciler) logDue(ctx context.Context, from index.Position, cutoff time.Time) error {
	page := r.cfg.BatchSize
	for {
		entries, next, err := r.index.Due(from, cutoff, page)
		if err != nil {
			return err
		}
		ids := make([]string, len(entries))
		for i, e := range entries {
			ids[i] = e.ID
		}
		if len(ids) > 0 {
			rows, err := r.db.Query(ctx, r.sql.stillDue, ids, r.retentionMicros())
			if err != nil {
				return fmt.Errorf("check due rows: %w", err)
			}
			due, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				return fmt.Errorf("check due rows: %w", err)
			}
			set := make(map[string]bool, len(due))
			for _, id := range due {
				set[id] = true
			}
			for _, e := range entries {
				if set[e.ID] {
					r.log.InfoContext(ctx, "[CLEANUP] Dry run: would delete attachment",
						"id", e.ID, "storage_key", e.Key, "deleted_at", e.DeletedAt.Format(TimeLayout))
				}
			}
		}
		if next == nil {
			return nil
		}
		from = next
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
