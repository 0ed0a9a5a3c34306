package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/reconcile/reconcile/index"
	"github.com/reconcile/reconcile/internal/config"
	"github.com/reconcile/reconcile/internal/metrics"
	"github.com/reconcile/reconcile/internal/retry"
	"github.com/reconcile/reconcile/internal/storage"
	"github.com/reconcile/reconcile/reconciler"
	"github.com/reconcile/reconcile/replication"
)

var _ replication.Index = (*index.Index)(nil)

// dryRunSuffix names the dry run's temporary slot after the service's.
const dryRunSuffix = "_dry_run"

// lockRetry is how often a waiting replica tries the advisory lock again,
// and the longest wait after losing it.
const lockRetry = 5 * time.Second

// serve runs the service until ctx ends: the stream fills the index and the
// timer purges what falls due. With dryRun it purges nothing and logs what
// it would purge. Only the process holding the advisory lock runs; another
// waits and takes over when the holder goes.
func serve(ctx context.Context, cfg *config.Config, dryRun bool, log *slog.Logger) (err error) {
	defer logAbort(ctx, log, "service stopped", &err)
	use := forPurge
	if dryRun {
		use = forAudit
	}
	m := metrics.New(buildVersion())
	pool, st, idx, closeAll, err := openAll(ctx, cfg, use, log, storage.WithObserver(m.StorageRequest))
	if err != nil {
		return err
	}
	defer closeAll()
	return runService(ctx, cfg, m, pool, st, idx, dryRun, log)
}

// runService is serve on opened resources.
func runService(ctx context.Context, cfg *config.Config, m *metrics.Metrics, pool *pgxpool.Pool, st store, idx *index.Index, dryRun bool, log *slog.Logger) error {
	rs, former, unchecked, err := openRemoving(ctx, cfg, pool, st, idx, m, log)
	if err != nil {
		return err
	}
	rpc := replicationConfig(cfg, dryRun)
	ready := &readiness{db: pool, metrics: m}
	g := &gauges{r: rs, db: pool, slot: rpc.Slot, maxRetainedWAL: int64(cfg.Replication.MaxRetainedWAL), m: m, ready: ready, log: log}
	// The dry run serves only when asked: it would take the service's port.
	if addr := cfg.HTTP.Address(!dryRun); addr != "" {
		// A port in use is no configuration error: the service exits 1, for
		// its supervisor to start it again.
		stop, err := serveHTTP(ctx, addr, httpHandler(g.scraped(m.Handler()), ready, newStatusHandler(cfg, pool, rs, idx)), log)
		if err != nil {
			return err
		}
		defer stop()
	} else {
		log.Info("http.listen is empty: serving no /metrics, /healthz, /readyz")
	}
	if err := rs.CheckSetup(ctx); err != nil {
		return err
	}
	if err := rs[0].CheckCommitWaits(ctx); err != nil {
		return err
	}
	for _, r := range rs {
		if w, err := r.IdentityWarning(ctx); err != nil {
			return err
		} else if w != "" {
			log.Warn(w)
		}
	}
	if !dryRun {
		checkWALLimit(ctx, pool, rpc.Slot, log)
	}
	watchCtx, stopWatch := context.WithCancel(ctx)
	watching := make(chan struct{})
	go func() { defer close(watching); g.watch(watchCtx) }()
	defer func() { stopWatch(); <-watching }()
	rpc.Observer = streamObserver{Metrics: m, ready: ready}
	rpc.Deleted = func(ctx context.Context, rows []replication.DeletedRow) error {
		gone := make([]reconciler.GoneRow, len(rows))
		for i, d := range rows {
			gone[i] = reconciler.GoneRow{Table: d.Table, ID: d.ID, Key: d.Key, SoftDeleted: d.SoftDeleted, DeletedAt: d.DeletedAt, At: d.At}
		}
		if dryRun {
			for _, g := range gone {
				log.Info("[CLEANUP] Dry run: would queue the file of a row deleted outright", "id", g.ID, "storage_key", g.Key)
			}
			return nil
		}
		return rs.QueueGone(ctx, gone, cfg.Orphans.Grace)
	}
	stream := replication.New(rpc, idx, func(ctx context.Context) error {
		// Emptied whole first, as one index: a heal during any table's
		// rescan then fails the stream's record of the whole.
		if err := idx.Reset(); err != nil {
			return err
		}
		for _, r := range rs {
			if err := rescanForStream(ctx, r, log); err != nil {
				return err
			}
		}
		return nil
	}, log)
	sweep := reconciler.SweepConfig{MaxWait: cfg.Sweep.MaxWait, DryRun: dryRun, MaxDeletesPerHour: cfg.Safety.MaxDeletesPerHour}

	log.Info("reconcile service starting", "dry_run", dryRun, "retention", cfg.Retention.String(), "slot", cfg.Replication.Slot)
	sweep.Drained = func(r *reconciler.Reconciler) {
		log.Info("drained the outbox of a table no longer configured", "table", r.IndexName())
	}
	for {
		var retired reconciler.Tables
		if !dryRun {
			if retired, err = former.toDrain(ctx); err != nil {
				return err
			}
		}
		held, unlock, taken, err := hold(ctx, pool, rs, retired, dryRun, func() { ready.role.Store(int32(roleStandby)) }, log)
		if err != nil {
			if ctx.Err() != nil {
				return nil // ctx ended while waiting
			}
			return err
		}
		ready.role.Store(int32(roleLeader))
		m.SetLeader(!dryRun)
		for _, r := range retired {
			if !slices.Contains(taken, r) {
				log.Warn("another reconcile holds the lock of a table no longer configured: its outbox is left to it", "table", r.IndexName())
			}
		}
		sweep.Retired = taken
		if err := syncTables(held, pool, idx, rs, reconciler.Tables(former), unchecked, rpc, log); err != nil {
			unlock()
			return err
		}
		g, gctx := errgroup.WithContext(held)
		g.Go(func() error { return stream.Run(gctx) })
		g.Go(func() error { return rs.Sweep(gctx, sweep) })
		if cfg.Storage.Trash.Prefix != "" && !dryRun {
			g.Go(func() error { emptyTrashHourly(gctx, cfg, st, log); return nil })
		}
		err = g.Wait()
		unlock()
		m.SetLeader(false)
		ready.role.Store(int32(roleStarting))
		switch {
		case err != nil:
			return err
		case ctx.Err() != nil:
			log.Info("reconcile service stopped")
			return nil
		}
		log.Warn("lost the advisory lock; taking it again", "error", context.Cause(held))
		sleepCtx(ctx, lockRetry)
	}
}

// lockTries bounds the attempts at the advisory lock that fail for another
// reason than a holder (the database away): about a minute.
const lockTries = 12

// hold takes the advisory lock, waiting as long as another process holds
// it, and lockTries attempts while the database is away. It fails when ctx
// ends or those attempts are spent. waiting is called when another holds
// it. The dry run takes no lock: it changes nothing.
// Of optional (retired tables), it takes the locks no other holds: taken.
func hold(ctx context.Context, pool *pgxpool.Pool, rs, optional reconciler.Tables, dryRun bool, waiting func(), log *slog.Logger) (context.Context, func(), reconciler.Tables, error) {
	if dryRun {
		return ctx, func() {}, nil, nil
	}
	waited := false
	backoff := retry.Backoff{Min: lockRetry, Max: lockRetry, Tries: lockTries}
	for {
		conn, err := pool.Acquire(ctx)
		if err == nil {
			held, release, taken, lerr := rs.LockWith(ctx, conn, optional)
			if lerr == nil {
				if waited {
					log.Info("took the advisory lock")
				}
				return held, func() {
					rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					defer cancel()
					_ = release(rctx) // a lost session has released it already
					conn.Release()
				}, taken, nil
			}
			conn.Release()
			err = lerr
		}
		if ctx.Err() != nil {
			return nil, nil, nil, ctx.Err()
		}
		if errors.Is(err, reconciler.ErrBusy) {
			if !waited {
				log.Info("another reconcile holds the advisory lock; waiting to take over", "error", err)
				waiting()
			}
			waited = true
			backoff.Succeeded() // the database answers
			sleepCtx(ctx, lockRetry)
			continue
		}
		log.Warn("take the advisory lock", "error", err, "retry_in", backoff.Next())
		if err := backoff.Failed(ctx, err); err != nil {
			return nil, nil, nil, fmt.Errorf("take the advisory lock: %w", err)
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// rescanForStream rebuilds a table's part of the index for the stream.
func rescanForStream(ctx context.Context, r *reconciler.Reconciler, log *slog.Logger) error {
	cutoff, err := r.Cutoff(ctx)
	if err != nil {
		return err
	}
	due, err := r.RescanForStream(ctx, cutoff)
	if errors.Is(err, reconciler.ErrSetup) {
		return fmt.Errorf("%w: %w", err, replication.ErrSetup) // no retry mends it
	}
	if err != nil {
		return err
	}
	log.Info("rescan complete", "table", r.IndexName(), "due", due, "cutoff", cutoff.UTC().Format(reconciler.TimeLayout))
	return nil
}

// syncTables brings the index and the publication to the configured
// tables before the stream starts: a table added is published, then
// rescanned alone (the stream then replays, over its rows, the changes
// since the index's position, which converges on the table); a table
// removed loses its rows in the index but stays described there, a former
// table, while the database has it (unchecked: kept as it is). Nothing
// else is rebuilt. An index that no rescan filled yet is left to the
// stream, which rescans every table.
func syncTables(ctx context.Context, pool *pgxpool.Pool, idx *index.Index, rs, former reconciler.Tables, unchecked []string, rpc replication.Config, log *slog.Logger) error {
	st, err := idx.State()
	if err != nil {
		return err
	}
	if st.Origin == "" || rpc.Temporary {
		return nil
	}
	filled, err := idx.Tables()
	if err != nil {
		return err
	}
	var added reconciler.Tables
	for _, r := range rs {
		if filled[r.IndexName()] != r.Fingerprint() {
			added = append(added, r)
		}
		delete(filled, r.IndexName())
	}
	var removed []string
	for name, fingerprint := range filled {
		removed = append(removed, name)
		if slices.Contains(unchecked, name) {
			continue // formerTables said why
		}
		if former.Table(name) != nil {
			// Its rows leave the index; the table stays in it, as its
			// description marked retired (were it configured again, it is
			// rescanned), for as long as the database has it.
			if strings.HasPrefix(fingerprint, retiredMark) {
				continue
			}
			log.Info("a table left the configuration: its rows are no longer purged, its outbox is drained, and its rows keep their files from the other tables", "table", name)
			part := idx.Table(name)
			if err := part.Reset(); err != nil {
				return err
			}
			if err := part.Filled(retiredMark + strings.TrimPrefix(fingerprint, retiredMark)); err != nil {
				return err
			}
			continue
		}
		log.Info("a table left the configuration, and the database: it is forgotten", "table", name)
		if err := idx.DropTable(name); err != nil {
			return err
		}
	}
	if len(removed) > 0 {
		// Its changes are dropped by the stream meanwhile: a failure only
		// costs the decoding.
		if err := replication.Unpublish(ctx, pool, rpc.Publication, removed, log); err != nil {
			log.Warn("a table no longer configured stays in the publication", "error", err)
		}
	}
	if len(added) == 0 {
		return nil
	}
	// Published first: its changes from now on reach the stream.
	if err := replication.EnsurePublication(ctx, pool, rpc, log); err != nil {
		return err
	}
	for _, r := range added {
		log.Info("rescanning a table new to the index, alone", "table", r.IndexName())
		if err := rescanForStream(ctx, r, log); err != nil {
			return err
		}
	}
	return nil
}

// streamTables are the configured tables, as the stream names them.
func streamTables(cfg *config.Config) []replication.Table {
	list, _ := cfg.TableList()
	out := make([]replication.Table, len(list))
	for i, t := range list {
		c := t.Columns
		out[i] = replication.Table{Schema: t.Schema, Name: t.Name, ID: c.ID, Keys: c.Key,
			IsActive: c.IsActive, IsDeleted: c.IsDeleted, DeletedAt: c.DeletedAt}
	}
	return out
}

// replicationConfig is the stream's configuration. The dry run reads a
// temporary slot of its own, which goes when it stops and never moves the
// service's slot.
func replicationConfig(cfg *config.Config, dryRun bool) replication.Config {
	slot := cfg.Replication.Slot
	if dryRun {
		slot = slot[:min(len(slot), 63-len(dryRunSuffix))] + dryRunSuffix
	}
	return replication.Config{
		Temporary:      dryRun,
		URL:            cfg.Database.URL,
		Slot:           slot,
		Publication:    cfg.Replication.Publication,
		Tables:         streamTables(cfg),
		StatusInterval: cfg.Replication.StatusInterval,
		Watchdog:       cfg.Replication.Watchdog,
		RescanEvery:    cfg.Rescan.Every,
		Heartbeat:      cfg.Replication.Heartbeat,
		MaxBackoff:     cfg.Replication.MaxBackoff,
	}
}
