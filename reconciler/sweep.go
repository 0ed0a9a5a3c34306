package reconciler

import (
	"bytes"
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/reconcile/reconcile/index"
	"github.com/reconcile/reconcile/internal/retry"
)

// SweepConfig tunes the service's timer.
type SweepConfig struct {
	// MaxWait is the longest the timer sleeps: the outbox's retries and
	// any entry a missed signal left behind wait no longer than this.
	MaxWait time.Duration
	// DryRun logs what is due instead of purging it.
	DryRun bool
	// MaxDeletesPerHour bounds the rows purged in one clock hour; 0 is no
	// bound.
	MaxDeletesPerHour int
	// Now tells the time for the hourly budget and the retries of refused
	// rows; nil is time.Now.
	Now func() time.Time
	// Retired are tables that left the configuration while their outbox
	// held files to remove: their outboxes are drained, their rows purged
	// no more, and Drained is told of each once its outbox is empty.
	Retired Tables
	Drained func(r *Reconciler)
}

const (
	// sweepBackoff caps the wait after a failed sweep.
	sweepBackoff = 30 * time.Second
	// sweepTries is how many sweeps may fail in a row (about three minutes
	// of backoff) before the service gives up and exits.
	sweepTries = 10
	// outboxEvery is how often, at most, the timer looks for removals to
	// retry.
	outboxEvery = time.Second
	// sweptEvery is how often, at most, a sweep is recorded in the index:
	// a busy timer wakes far more often, and each record is a write to
	// disk.
	sweptEvery = time.Minute
)

// Sweep runs the service's timer until ctx ends: it sleeps until the next
// entry of the index falls due (or a change brings an earlier one), then
// purges what is due through the same path as Purge, each row verified by
// the database. The outbox is drained at start and its failed removals are
// retried as their next try comes; rows the database refused (a lock, a
// trigger) are tried again with backoff. A failed sweep is logged and tried
// again with backoff; after sweepTries failures in a row Sweep returns the
// error. It returns nil when ctx ends.
func (r *Reconciler) Sweep(ctx context.Context, cfg SweepConfig) error {
	return Tables{r}.Sweep(ctx, cfg)
}

// Sweep is Reconciler.Sweep for every table, whose indexes are parts of
// one index, with one timer: it sleeps until the next entry of any table
// falls due, by the table's own retention, then sweeps the tables one
// after the other. A file two tables share is then never freed by two
// statements at once, each seeing the other's row. The hourly budget
// counts the rows of every table.
func (rs Tables) Sweep(ctx context.Context, cfg SweepConfig) error {
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	budget := &hourlyBudget{max: cfg.MaxDeletesPerHour}
	ss := make([]*sweeper, len(rs))
	for i, r := range rs {
		ss[i] = &sweeper{r: r, cfg: cfg, now: now, retries: retryQueue{}, budget: budget}
	}
	for _, r := range cfg.Retired {
		ss = append(ss, &sweeper{r: r, cfg: cfg, now: now, retries: retryQueue{}, budget: budget, retired: true})
	}
	for _, s := range ss {
		s.backoff = retry.Backoff{Min: time.Second, Max: sweepBackoff, Tries: sweepTries}
	}
	for round := 0; ctx.Err() == nil; round++ {
		// A table that fails waits for its retry; the others go on. Each
		// round starts with the next table: a backlog in one does not
		// spend the hourly budget of all, every hour.
		swept := false
		for i := range ss {
			s := ss[(i+round)%len(ss)]
			if s.gone || time.Now().Before(s.retryAt) {
				continue
			}
			var err error
			if s.retired {
				err = s.drainRetired(ctx)
			} else if s.cutoff, s.offset, err = s.r.clock(ctx); err == nil {
				err = s.sweep(ctx, s.cutoff)
			}
			if ctx.Err() != nil {
				return nil
			}
			if err == nil {
				s.backoff.Succeeded()
				s.retryAt, swept = time.Time{}, true
				continue
			}
			s.r.stopped(err)
			wait := s.backoff.Next()
			s.r.log.ErrorContext(ctx, "[CLEANUP] Failed: sweep stopped short; retrying", "error", err, "retry_in", wait)
			if err := s.backoff.Count(err); err != nil {
				return fmt.Errorf("sweep of %s: %w", s.r.IndexName(), err)
			}
			s.retryAt = time.Now().Add(wait)
		}
		if !swept {
			waitRetry(ctx, ss)
			continue
		}
		ss[0].r.cfg.Observer.Swept(time.Now())
		ss[0].record(ctx)
		if budget.spent(now()) {
			waitBlocked(ctx, cfg, ss, wakeAt(ss))
			continue
		}
		waitForDue(ctx, cfg, ss, wakeAt(ss))
	}
	return nil
}

// sweeper is the timer's state between sweeps, for one table.
type sweeper struct {
	r       *Reconciler
	cfg     SweepConfig
	now     func() time.Time
	from    index.Position // entries before it have been handled
	cutoff  time.Time      // of the last sweep
	offset  time.Duration  // how far the database's clock was ahead, then
	drained bool           // the whole outbox was drained once
	drainAt time.Time      // when the outbox was last looked at
	sweptAt time.Time      // when a sweep was last recorded in the index
	retries retryQueue
	budget  *hourlyBudget // shared by the tables
	retired bool          // the table left the configuration: see SweepConfig.Retired
	gone    bool          // retired, and its outbox drained
	// After a failed sweep the table waits until retryAt; sweepTries
	// failures in a row end the service.
	backoff retry.Backoff
	retryAt time.Time
}

// waitRetry waits, after a round where every table due for a try failed,
// until the next table's retry.
func waitRetry(ctx context.Context, ss []*sweeper) {
	var next time.Time
	for _, s := range ss {
		if !s.gone && !s.retryAt.IsZero() && (next.IsZero() || s.retryAt.Before(next)) {
			next = s.retryAt
		}
	}
	sleep(ctx, time.Until(next))
}

// drainRetired drains a retired table's outbox, and tells when it is
// empty.
func (s *sweeper) drainRetired(ctx context.Context) error {
	if s.drained && time.Since(s.drainAt) < outboxEvery {
		return nil
	}
	if err := s.drain(ctx); err != nil {
		return err
	}
	empty, err := s.r.OutboxEmpty(ctx)
	if err != nil || !empty {
		return err
	}
	s.gone = true
	if s.cfg.Drained != nil {
		s.cfg.Drained(s.r)
	}
	return nil
}

// sweep handles what is due at cutoff.
func (s *sweeper) sweep(ctx context.Context, cutoff time.Time) error {
	r := s.r
	if s.cfg.DryRun {
		if err := r.logDue(ctx, s.from, cutoff); err != nil {
			return err
		}
		s.from = index.After(cutoff)
		return nil
	}
	// Failed removals come back after 10 s at the soonest: a look a second
	// is enough, however often the timer wakes.
	if !s.drained || time.Since(s.drainAt) >= outboxEvery {
		if err := s.drain(ctx); err != nil {
			return err
		}
	}
	remaining := s.budget.remaining(s.now())
	if remaining == 0 {
		s.budget.warn(ctx, r, s.now())
		return nil
	}
	if due := s.retries.due(s.now(), remaining); len(due) > 0 {
		sum, refused, err := r.purge(ctx, entries(due), nil)
		s.budget.spend(sum.Purged)
		if err != nil {
			// Not all were tried: they all stay, for their next try.
			s.retries.add(refused, s.now())
			return err
		}
		s.retries.settle(due, refused, s.now())
		if remaining = s.budget.remaining(s.now()); remaining == 0 {
			s.budget.warn(ctx, r, s.now())
			return nil
		}
	}
	walk := dueWalk{from: s.from, cutoff: cutoff, limit: max(remaining, 0)}
	sum, refused, err := r.purge(ctx, walk.source(r), nil)
	s.budget.spend(sum.Purged)
	s.retries.add(refused, s.now())
	if err != nil {
		return err
	}
	if walk.next != nil {
		s.from = walk.next // the budget stopped the walk there
		s.budget.warn(ctx, r, s.now())
		return nil
	}
	s.from = index.After(cutoff)
	return nil
}

// record notes in the index, for status and metrics, that a sweep
// finished, once every sweptEvery at most: the time recorded may be that
// long behind the last sweep.
func (s *sweeper) record(ctx context.Context) {
	now := time.Now()
	if now.Sub(s.sweptAt) < sweptEvery {
		return
	}
	s.sweptAt = now
	if err := s.r.index.Swept(now); err != nil {
		s.r.log.WarnContext(ctx, "record the sweep in the index", "error", err)
	}
}

// drain removes the files the outbox holds: all of them at the first
// sweep, then those whose next try has come.
func (s *sweeper) drain(ctx context.Context) error {
	sum, err := s.r.DrainOutbox(ctx, !s.drained)
	if err != nil {
		return fmt.Errorf("drain the outbox: %w", err)
	}
	s.drained, s.drainAt = true, time.Now()
	if sum.FilesRemoved+sum.FilesMissing+sum.FilesKept+sum.FilesRewritten+sum.FilesPending > 0 {
		s.r.log.InfoContext(ctx, "drained the outbox",
			"files_removed", sum.FilesRemoved, "files_missing", sum.FilesMissing, "files_kept", sum.FilesKept,
			"files_rewritten", sum.FilesRewritten, "files_pending", sum.FilesPending)
	}
	return nil
}

// wakeAt is the earliest moment, in this host's clock, at which a sweep
// has work that is not in the index's due order: a refused row to try
// again, or a spent budget renewed. Zero: none.
func wakeAt(ss []*sweeper) time.Time {
	var wake time.Time
	for _, s := range ss {
		if at := s.retries.earliest(); !at.IsZero() && (wake.IsZero() || at.Before(wake)) {
			wake = at
		}
	}
	s := ss[0]
	if s.budget.spent(s.now()) {
		// Nothing can be purged before the next hour, retries included.
		wake = s.budget.renewal()
	}
	if !wake.IsZero() {
		// The clocks may differ (tests move Now): wait for the difference.
		wake = time.Now().Add(wake.Sub(s.now()))
	}
	// A table that failed is tried again at its time, by this host's clock.
	for _, s := range ss {
		if !s.gone && !s.retryAt.IsZero() && (wake.IsZero() || s.retryAt.Before(wake)) {
			wake = s.retryAt
		}
	}
	return wake
}

// waitForDue sleeps until the first entry of a table from its sweeper's
// position falls due, or until wake (unless zero), MaxWait at most, and
// moves a sweeper's position back when a change brought an entry that is
// due already.
func waitForDue(ctx context.Context, cfg SweepConfig, ss []*sweeper, wake time.Time) {
	deadline := time.Now().Add(cfg.MaxWait)
	if !wake.IsZero() && wake.Before(deadline) {
		deadline = wake
	}
	// Changes wake the loop often, the first entry rarely changes: its due
	// time (a query, for a column without time zone) is asked once.
	asked, due := make([]time.Time, len(ss)), make([]time.Time, len(ss))
	for {
		wake := deadline
		for i, s := range ss {
			if s.retired {
				continue // no index: its outbox's retries wait MaxWait at most
			}
			next, ok, err := s.r.index.Next(s.from)
			if err != nil {
				s.r.log.ErrorContext(ctx, "read the index", "error", err)
			}
			if ok && !next.Equal(asked[i]) {
				// The database's clock decides what is due: wake when it says so.
				if due[i], err = s.r.dueAt(ctx, next, s.offset); err != nil {
					s.r.log.ErrorContext(ctx, "read when the next row falls due", "error", err)
					due[i] = time.Time{}
				}
				asked[i] = next
			}
			if ok && !due[i].IsZero() && due[i].Before(wake) {
				wake = due[i]
			}
		}
		timer := time.NewTimer(time.Until(wake))
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
			return
		case <-ss[0].r.index.Updates(): // one index: one signal for every table
			timer.Stop()
			woke := false
			for _, s := range ss {
				if s.retired {
					continue
				}
				earliest, restart := s.r.index.TakeEarliest()
				if restart {
					s.from, woke = nil, true
					continue
				}
				// A zero earliest is a token whose value an earlier call took.
				if !earliest.IsZero() && !earliest.After(s.cutoff) {
					// Due already when it arrived: look again from there.
					if at := index.After(earliest.Add(-time.Nanosecond)); bytes.Compare(at, s.from) < 0 {
						s.from, woke = at, true
					}
				}
			}
			if woke {
				return
			}
		}
	}
}

// waitBlocked sleeps while the budget forbids purging, until wake or
// MaxWait at most, whatever falls due meanwhile; a rescan's restart still
// sends the next walk back to the start.
func waitBlocked(ctx context.Context, cfg SweepConfig, ss []*sweeper, wake time.Time) {
	deadline := time.Now().Add(cfg.MaxWait)
	if !wake.IsZero() && wake.Before(deadline) {
		deadline = wake
	}
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
			return
		case <-ss[0].r.index.Updates():
			for _, s := range ss {
				if s.retired {
					continue
				}
				earliest, restart := s.r.index.TakeEarliest()
				switch {
				case restart:
					s.from = nil
				case !earliest.IsZero():
					// An entry before from: the walk must go back for it.
					if at := index.After(earliest.Add(-time.Nanosecond)); bytes.Compare(at, s.from) < 0 {
						s.from = at
					}
				}
			}
		}
	}
}

const (
	// retryFirst and retryMax pace the tries of a row the database
	// refused: a lock held by the forum goes within seconds; a foreign key
	// or a corrupt page may stay, and is reported at each try.
	retryFirst = 5 * time.Second
	retryMax   = 5 * time.Minute
	// maxRetries bounds the rows held for a retry; past it a refused row
	// waits for the next rescan.
	maxRetries = 100_000
)

// retryQueue holds the rows the database refused, by id, until their next
// try.
type retryQueue map[string]*retryItem

type retryItem struct {
	entry    index.Entry
	attempts int
	at       time.Time
}

// add schedules refused entries for another try.
func (q retryQueue) add(refused []index.Entry, now time.Time) {
	for _, e := range refused {
		item, ok := q[e.ID]
		if !ok {
			if len(q) >= maxRetries {
				continue
			}
			item = &retryItem{}
			q[e.ID] = item
		}
		item.entry = e
		item.attempts++
		item.at = now.Add(min(retryFirst<<min(item.attempts-1, 10), retryMax))
	}
}

// due returns up to limit entries (all when limit is negative) whose try
// has come.
func (q retryQueue) due(now time.Time, limit int) []index.Entry {
	var out []index.Entry
	for _, item := range q {
		if limit >= 0 && len(out) == limit {
			break
		}
		if !item.at.After(now) {
			out = append(out, item.entry)
		}
	}
	return out
}

// settle forgets the tried entries that were not refused again and
// reschedules the others.
func (q retryQueue) settle(tried, refused []index.Entry, now time.Time) {
	again := make(map[string]bool, len(refused))
	for _, e := range refused {
		again[e.ID] = true
	}
	for _, e := range tried {
		if !again[e.ID] {
			delete(q, e.ID)
		}
	}
	q.add(refused, now)
}

// earliest is the next try, zero when none waits.
func (q retryQueue) earliest() time.Time {
	var first time.Time
	for _, item := range q {
		if first.IsZero() || item.at.Before(first) {
			first = item.at
		}
	}
	return first
}

// hourlyBudget counts the rows purged in the current clock hour.
type hourlyBudget struct {
	max    int // 0: no bound
	hour   time.Time
	used   int
	warned bool
}

func (b *hourlyBudget) roll(now time.Time) {
	if h := now.Truncate(time.Hour); !h.Equal(b.hour) {
		b.hour, b.used, b.warned = h, 0, false
	}
}

// remaining is how many rows may still be purged this hour; -1 is no
// bound.
func (b *hourlyBudget) remaining(now time.Time) int {
	if b.max <= 0 {
		return -1
	}
	b.roll(now)
	return max(b.max-b.used, 0)
}

func (b *hourlyBudget) spend(n int) { b.used += n }

func (b *hourlyBudget) spent(now time.Time) bool { return b.remaining(now) == 0 }

// renewal is when the next hour starts.
func (b *hourlyBudget) renewal() time.Time { return b.hour.Add(time.Hour) }

// warn logs, once an hour, that the budget stops the purge.
func (b *hourlyBudget) warn(ctx context.Context, r *Reconciler, now time.Time) {
	b.roll(now)
	if b.warned || b.used < b.max {
		return
	}
	b.warned = true
	r.log.ErrorContext(ctx, "[CLEANUP] Failed: the hourly deletion budget is spent; purging stops until the next hour, the index is kept up to date meanwhile",
		"max_deletes_per_hour", b.max, "purged_this_hour", b.used, "resumes_at", b.renewal().UTC().Format(TimeLayout))
}

// dueAt is when, in this host's clock, an entry deleted at deletedAt falls
// due; offset is how far the database's clock is ahead. A deleted_at
// without time zone is a wall time whose offset depends on its date (summer
// time): the database tells.
func (r *Reconciler) dueAt(ctx context.Context, deletedAt time.Time, offset time.Duration) (time.Time, error) {
	if !r.naive {
		return deletedAt.Add(r.cfg.Retention).Add(-offset), nil
	}
	var in time.Duration
	if err := r.db.QueryRow(ctx, r.sql.dueIn, deletedAt.UTC().Format("2006-01-02 15:04:05.999999"), r.retentionMicros()).Scan(&in); err != nil {
		return time.Time{}, fmt.Errorf("read when a row falls due: %w", err)
	}
	return time.Now().Add(in), nil
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
