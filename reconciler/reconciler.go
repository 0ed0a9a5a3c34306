// Package reconciler decides what to purge and purges it: it rebuilds the
// index from the database (rescan), hard-deletes due rows in batches that the
// database re-checks, and removes their files through the outbox. It also
// writes the dry-run audit report.
package reconciler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/reconcile/reconcile/index"
	"github.com/reconcile/reconcile/internal/derived"
	"github.com/reconcile/reconcile/internal/storage"
)

// DB is what the reconciler needs of a PostgreSQL handle; *pgxpool.Pool has
// it.
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	BeginTx(ctx context.Context, opts pgx.TxOptions) (pgx.Tx, error)
}

// Store is where the files are. Check, Stat and Remove answer once per
// key, in order. Check refuses keys that must not be touched (they could reach
// outside the storage root or name another row's file through a link);
// Stat tells whether files exist; Remove removes files, telling a file
// removed from one that was missing, and keeps a file modified after its
// removal was queued.
type Store interface {
	Check(ctx context.Context, keys []string) []error
	Stat(ctx context.Context, keys []string) []storage.FileInfo
	Remove(ctx context.Context, removals []storage.Removal) []storage.Result
	// List lists files under a prefix, in byte order: the derived files of
	// a purged row.
	List(ctx context.Context, opts storage.ListOptions, fn func(storage.Object) error) error
}

// Index is the local store of soft-deleted rows of the table: *index.Table
// has it, and *index.Index for its unnamed table.
type Index interface {
	Reset() error
	LoadEntries(byID []index.Entry) error
	LoadDue(byDue []index.Entry) error
	// Filled marks a rescan for the stream complete.
	Filled(fingerprint string) error
	Due(from index.Position, cutoff time.Time, limit int) ([]index.Entry, index.Position, error)
	// For the service's timer.
	Next(from index.Position) (time.Time, bool, error)
	Updates() <-chan struct{}
	TakeEarliest() (time.Time, bool)
	Swept(at time.Time) error
	// For status and metrics.
	Stats(cutoff, overdueCutoff time.Time) (index.Stats, error)
}

// Config tunes the purge.
type Config struct {
	Retention   time.Duration // how long a soft-deleted row is kept
	BatchSize   int           // rows per DELETE statement
	Concurrency int           // DELETE statements in flight
	// RemoveConcurrency is how many file removals run at once, overlapping
	// the database work.
	RemoveConcurrency int
	// StorageName says where the files are, for messages: "local directory
	// /srv/media", "s3://bucket/prefix".
	StorageName string
	// MaxDeletes bounds the rows one Purge deletes; 0 is no bound.
	MaxDeletes int
	// OverdueAfter is how long a row may stay due before Backlog counts it
	// overdue: the purge is not keeping up.
	OverdueAfter time.Duration
	// Observer hears what the purge does; nil hears nothing.
	Observer Observer
	// Peers are the other tables whose files are on the same storage: a
	// file that any of their rows names, or that their derived patterns
	// map a row to, is never removed.
	Peers []Table
}

// Observer hears what the purge does, for metrics. Its methods must not
// block.
type Observer interface {
	Purged(rows int)
	// Files counts files removed, found already gone, and kept because
	// another row uses them.
	Files(removed, missing, kept int)
	// PurgeErrors counts failures by reason: ErrorRow, ErrorBatch,
	// ErrorStorage, ErrorProbe.
	PurgeErrors(reason string, n int)
	// Swept is the end of a sweep of the service's timer.
	Swept(at time.Time)
}

// The reasons failures are counted under.
const (
	ErrorRow     = "row"     // a row the database or the storage key check refused
	ErrorBatch   = "batch"   // a purge that stopped short
	ErrorStorage = "storage" // a file removal that failed: it waits in the outbox
	ErrorProbe   = "probe"   // the storage held none of the table's files: nothing deleted
)

type noObserver struct{}

func (noObserver) Purged(int)              {}
func (noObserver) Files(int, int, int)     {}
func (noObserver) PurgeErrors(string, int) {}
func (noObserver) Swept(time.Time)         {}

// StopReason is the reason a purge that ended in err is counted under:
// ErrorProbe, ErrorBatch, or "" for no failure of the purge (none, a
// shutdown, the lock held or taken by another instance).
func StopReason(err error) string {
	switch {
	case err == nil, errors.Is(err, context.Canceled), errors.Is(err, ErrLockLost), errors.Is(err, ErrBusy):
		return ""
	case errors.Is(err, ErrNoFiles):
		return ErrorProbe
	}
	return ErrorBatch
}

// stopped counts a sweep that ended in err.
func (r *Reconciler) stopped(err error) {
	if reason := StopReason(err); reason != "" {
		r.cfg.Observer.PurgeErrors(reason, 1)
	}
}

// ErrSetup means the database does not match the configuration or lacks
// what `reconcile migrate` creates; nothing was changed.
var ErrSetup = errors.New("database not set up for reconcile")

// Reconciler purges one table.
type Reconciler struct {
	db    DB
	store Store
	index Index
	cfg   Config
	table Table
	sql   queries
	log   *slog.Logger
	probe probeState
	// unclean are the keys that are not clean paths, read once a minute.
	unclean unclean
	// patterns are the derived patterns of the tables on the storage, as
	// the ownership queries number them (see ownerPatterns).
	patterns []derived.Pattern
	naive    bool // deleted_at is a timestamp without time zone
	// holder is the session of the last advisory lock taken, nil before
	// the first.
	holder atomic.Pointer[holder]
}

// holder is a session that took the advisory lock: its backend's pid, part
// of the holder key that the fenced statements look for, and the end of its
// run.
type holder struct {
	pid  int32
	lost context.CancelCauseFunc
}

// New checks the table against the database catalog and prepares the
// statements. store and idx may be nil for work that needs none of them
// (migrate, the audit without storage checks).
func New(ctx context.Context, db DB, store Store, idx Index, table Table, cfg Config, log *slog.Logger) (*Reconciler, error) {
	if cfg.BatchSize < 1 || cfg.Concurrency < 1 || cfg.RemoveConcurrency < 1 || cfg.Retention <= 0 || cfg.MaxDeletes < 0 || cfg.OverdueAfter < 0 {
		return nil, fmt.Errorf("reconciler config %+v: batch size, concurrencies and retention must be positive, the others not negative", cfg)
	}
	if log == nil {
		log = slog.Default()
	}
	if cfg.Observer == nil {
		cfg.Observer = noObserver{}
	}
	types, err := table.check(ctx, db)
	if err != nil {
		return nil, err
	}
	log = log.With("component", "reconciler")
	if w := table.timeWarning(ctx, db, types); w != "" {
		log.WarnContext(ctx, w)
	}
	for _, w := range table.shapeWarnings(types) {
		log.WarnContext(ctx, w)
	}
	var patterns []derived.Pattern
	for _, o := range ownerPatterns(table, cfg.Peers) {
		patterns = append(patterns, o.pattern)
	}
	return &Reconciler{
		db:       db,
		store:    store,
		index:    idx,
		cfg:      cfg,
		table:    table,
		sql:      buildQueries(table, cfg.Peers, types),
		log:      log,
		naive:    types.naiveTime,
		patterns: patterns,
	}, nil
}

// retentionMicros passes the retention to SQL as `$n * interval '1 microsecond'`.
func (r *Reconciler) retentionMicros() int64 {
	return r.cfg.Retention.Microseconds()
}

// Cutoff asks the database for the latest deleted_at that is due now: the
// database's clock decides, not this host's.
func (r *Reconciler) Cutoff(ctx context.Context) (time.Time, error) {
	var cutoff time.Time
	err := r.db.QueryRow(ctx, r.sql.cutoff, r.retentionMicros()).Scan(&cutoff)
	if err != nil {
		return time.Time{}, fmt.Errorf("read database clock: %w", err)
	}
	return cutoff, nil
}

// LockConn is the connection that holds the advisory lock for a run;
// *pgxpool.Conn has it.
type LockConn interface {
	DB
	Ping(ctx context.Context) error
}

const (
	// lockCheckEvery is how often the lock's session is checked.
	lockCheckEvery = 2 * time.Second
	// lockPingTimeout lets a slow database answer: a ping cut short closes
	// the connection, and the lock with it.
	lockPingTimeout = 15 * time.Second
)

// Lock takes the session advisory lock that makes this process the only one
// purging the table, on a connection the caller keeps for the whole run.
// The purge relies on it: rows sharing a file are ordered within one
// process only. The returned context ends, with ErrLockLost as its cause,
// as soon as that session is gone (the lock went with it) or a statement
// finds the lock no longer its own; release stops the watch and unlocks.
// conn belongs to the watch until release.
//
// The statements that delete rows or claim files for removal are fenced
// (see queries.go): once the lock's session is gone they change nothing,
// and Lock returns only after every such statement of an earlier holder
// has ended, so two processes never purge at once, even while the one that
// lost the lock has yet to notice.
func (r *Reconciler) Lock(ctx context.Context, conn LockConn) (context.Context, func(context.Context) error, error) {
	return Tables{r}.Lock(ctx, conn)
}

// Lock is Reconciler.Lock for every table at once, on one session: each
// table keeps the advisory lock of its own, so that an older reconcile,
// or another service, that purges one of them waits, or is waited for.
// Either every lock is taken, or none.
func (rs Tables) Lock(ctx context.Context, conn LockConn) (context.Context, func(context.Context) error, error) {
	held, release, _, err := rs.LockWith(ctx, conn, nil)
	return held, release, err
}

// LockWith is Lock, and takes as well the locks of optional that no other
// session holds, on the same session; taken are those.
func (rs Tables) LockWith(ctx context.Context, conn LockConn, optional Tables) (held context.Context, release func(context.Context) error, taken Tables, err error) {
	var pid int32
	unlock := func(taken []*Reconciler) {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		for _, r := range taken {
			_, _ = conn.Exec(uctx, r.sql.unlock) // a lost session has released them already
		}
	}
	for i, r := range rs {
		var ok bool
		if err := conn.QueryRow(ctx, r.sql.lock).Scan(&ok, &pid); err != nil {
			unlock(rs[:i])
			return nil, nil, nil, fmt.Errorf("take advisory lock: %w", err)
		}
		if !ok {
			unlock(rs[:i])
			return nil, nil, nil, fmt.Errorf("another reconcile is purging %s (it holds the advisory lock %q): %w",
				r.table.qualified(), r.table.lockName(), ErrBusy)
		}
	}
	taken = optional[:0:0]
	for _, r := range optional {
		var ok bool
		if err := conn.QueryRow(ctx, r.sql.lock).Scan(&ok, &pid); err != nil {
			unlock(append(slices.Clip(rs), taken...))
			return nil, nil, nil, fmt.Errorf("take advisory lock: %w", err)
		}
		if ok {
			taken = append(taken, r)
		}
	}
	rs = append(slices.Clip(rs), taken...)
	for _, r := range rs {
		// The wait has no bound of its own (a statement of the old holder
		// may be held by a forum transaction): say so when it lasts.
		slow := time.AfterFunc(fenceWaitWarning, func() {
			r.log.WarnContext(ctx, "took the advisory lock; still waiting for the previous holder's statements to end before purging")
		})
		err := r.closeFence(ctx, conn)
		slow.Stop()
		if err != nil {
			unlock(rs)
			return nil, nil, nil, err
		}
	}
	held, lost := context.WithCancelCause(ctx)
	for _, r := range rs {
		r.holder.Store(&holder{pid: pid, lost: lost})
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(lockCheckEvery)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-held.Done():
				return
			case <-tick.C:
				pingCtx, cancel := context.WithTimeout(held, lockPingTimeout)
				err := conn.Ping(pingCtx)
				cancel()
				if err != nil && held.Err() == nil {
					lost(fmt.Errorf("%w: %w", ErrLockLost, err))
					return
				}
			}
		}
	}()
	release = func(ctx context.Context) error {
		close(stop)
		<-done
		lost(nil)
		var errs []error
		for _, r := range rs {
			_, err := conn.Exec(ctx, r.sql.unlock)
			errs = append(errs, err)
		}
		return errors.Join(errs...)
	}
	return held, release, taken, nil
}

// fenceWaitWarning is how long a new holder waits for the previous one's
// statements before it says so.
const fenceWaitWarning = 10 * time.Second

// closeFence waits, on the lock's session, until every fenced statement of
// an earlier holder has ended (each holds the fence's key shared until it
// commits), then takes the session's holder key, which lets this process's
// statements through the fence. The wait is as long as theirs, whatever
// lock_timeout says.
func (r *Reconciler) closeFence(ctx context.Context, conn LockConn) error {
	err := pgx.BeginTxFunc(ctx, conn, pgx.TxOptions{}, func(tx pgx.Tx) error {
		for _, sql := range []string{"SET LOCAL lock_timeout = 0", r.sql.waitHolders, r.sql.closeFence, r.sql.takeHolder} {
			if _, err := tx.Exec(ctx, sql); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("wait for the purge statements of the previous holder of the advisory lock: %w", err)
	}
	return nil
}

// holderPID is the backend pid of the holder key that the fenced statements
// look for: 0 before the first Lock.
func (r *Reconciler) holderPID() int32 {
	if h := r.holder.Load(); h != nil {
		return h.pid
	}
	return 0
}

// fenceShut is the error of a fenced statement that found the advisory lock
// not held by this reconciler's session: it changed nothing.
func (r *Reconciler) fenceShut() error {
	if r.holder.Load() == nil {
		return fmt.Errorf("another reconcile holds the advisory lock on %s: %w", r.table.qualified(), ErrBusy)
	}
	return fmt.Errorf("%w: the fence found the lock no longer held by that session", ErrLockLost)
}

// endIfLost ends the run that took the lock when err says that a fenced
// statement found the lock gone, as the lock's watch does when its session
// ends: the service then waits to take the lock again.
func (r *Reconciler) endIfLost(err error) {
	if h := r.holder.Load(); h != nil && errors.Is(err, ErrLockLost) {
		h.lost(err)
	}
}

// ErrLockLost means the session holding the advisory lock ended mid-run, or
// a fenced statement found the lock no longer held by it (and changed
// nothing).
var ErrLockLost = errors.New("lost the database session holding the advisory lock")

// ErrBusy means another process is purging the same table.
var ErrBusy = errors.New("table is busy")
