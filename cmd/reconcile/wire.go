package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/reconcile/reconcile/index"
	"github.com/reconcile/reconcile/internal/config"
	"github.com/reconcile/reconcile/internal/derived"
	"github.com/reconcile/reconcile/internal/metrics"
	"github.com/reconcile/reconcile/internal/storage"
	"github.com/reconcile/reconcile/reconciler"
	"github.com/reconcile/reconcile/replication"
)

var (
	_ reconciler.Store = (*storage.Local)(nil)
	_ reconciler.Store = (*storage.S3)(nil)
	_ reconciler.Index = (*index.Table)(nil)
)

// tables are the configured tables, as the reconciler names them.
func tables(cfg *config.Config) []reconciler.Table {
	list, sections := cfg.TableList()
	out := make([]reconciler.Table, len(list))
	for i, t := range list {
		c := t.Columns
		out[i] = reconciler.Table{
			Schema: t.Schema, Name: t.Name,
			ID: c.ID, Key: c.Key[0], OriginalFilename: c.OriginalFilename, IsActive: c.IsActive, DeletedAt: c.DeletedAt,
			Keys: c.Key, IsDeleted: c.IsDeleted, Section: sections[i],
			TimeZone: t.TimeZone,
			Derived:  patterns(t.Derived),
			Prefixes: t.Prefixes,
		}
	}
	return out
}

// openTables makes the reconciler of each configured table, with its own
// retention, the other tables as its peers (they share the storage), and
// former ones too, and its part of idx (none when idx is nil). With
// several tables each logs under its name.
func openTables(ctx context.Context, cfg *config.Config, db reconciler.DB, st reconciler.Store, idx *index.Index, obs reconciler.Observer, log *slog.Logger, former ...reconciler.Table) (reconciler.Tables, error) {
	list := tables(cfg)
	retentions, _ := cfg.TableList()
	rs := make(reconciler.Tables, len(list))
	for i, t := range list {
		rc := reconcilerConfig(cfg)
		rc.Retention = retentions[i].Retention
		rc.Observer = obs
		rc.Peers = append(slices.Delete(slices.Clone(list), i, i+1), former...)
		tlog := log
		if len(list) > 1 {
			tlog = log.With("table", t.IndexName())
		}
		var ri reconciler.Index // stays nil without an index: New takes no typed nil
		if idx != nil {
			ri = idx.Table(t.IndexName())
		}
		r, err := reconciler.New(ctx, db, st, ri, t, rc, tlog)
		if err != nil {
			return nil, err
		}
		rs[i] = r
	}
	return rs, nil
}

// patterns parses table.derived, which config has checked.
func patterns(texts []string) []derived.Pattern {
	var out []derived.Pattern
	for _, text := range texts {
		p, err := derived.Parse(text)
		if err != nil {
			panic(fmt.Sprintf("table.derived %q passed validation: %v", text, err))
		}
		out = append(out, p)
	}
	return out
}

func reconcilerConfig(cfg *config.Config) reconciler.Config {
	return reconciler.Config{
		Retention:         cfg.Retention,
		BatchSize:         cfg.BatchSize,
		Concurrency:       cfg.Concurrency,
		RemoveConcurrency: cfg.Storage.Concurrency,
		StorageName:       storageName(cfg),
		MaxDeletes:        cfg.Safety.MaxDeletes,
		OverdueAfter:      cfg.Sweep.OverdueAfter,
	}
}

// storageName says where the files are, for messages.
func storageName(cfg *config.Config) string {
	if cfg.Storage.Backend == "s3" {
		s := cfg.Storage.S3
		return fmt.Sprintf("s3://%s/%s at %s", s.Bucket, strings.TrimLeft(s.Prefix, "/"), s.Endpoint)
	}
	return "local directory " + cfg.Storage.Local.Root
}

// dbUse says what a pool is for.
type dbUse int

const (
	forPurge   dbUse = iota
	forAudit         // read-only: the server itself refuses any write
	forMigrate       // no lock timeout: CREATE INDEX CONCURRENTLY waits for older transactions
)

// openDB opens a pool sized for the batches and removals in flight.
func openDB(ctx context.Context, cfg *config.Config, use dbUse) (*pgxpool.Pool, error) {
	pc, err := pgxpool.ParseConfig(cfg.Database.URL)
	if err != nil {
		return nil, usageError{errors.New("database.url: is not a valid PostgreSQL connection string")}
	}
	pc.MaxConns = int32(cfg.Concurrency + cfg.Storage.Concurrency + 2)
	params := pc.ConnConfig.RuntimeParams
	params["application_name"] = "reconcile"
	if cfg.Database.LockTimeout > 0 && use != forMigrate {
		// A purge waits this long at most behind a forum transaction that
		// holds a row; then that row is reported and the rest goes on.
		params["lock_timeout"] = fmt.Sprint(cfg.Database.LockTimeout.Milliseconds())
	}
	if use == forAudit {
		params["default_transaction_read_only"] = "on"
	}
	// The server drops the sessions of a host that went away without a
	// word (a crash, a partition) in about 30 s rather than the kernel's 2
	// hours: until then the lost holder's session keeps the advisory lock
	// and no other instance can take over.
	params["tcp_keepalives_idle"] = "10"
	params["tcp_keepalives_interval"] = "5"
	params["tcp_keepalives_count"] = "3"
	params["tcp_user_timeout"] = "30000"
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("open database: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connect to database: %w", err)
	}
	return pool, nil
}

// store is what the commands need of a storage backend.
type store interface {
	reconciler.Store
	trashEmptier
	Untrash(ctx context.Context, keys []string) []error
	Close() error
}

func openStore(ctx context.Context, cfg *config.Config, opts ...storage.Option) (store, error) {
	if cfg.Storage.Trash.Prefix != "" {
		opts = append(opts, storage.WithTrash(cfg.Storage.Trash.Prefix, time.Now))
	}
	switch cfg.Storage.Backend {
	case "s3":
		s := cfg.Storage.S3
		st, err := storage.NewS3(ctx, storage.S3Config{
			Endpoint: s.Endpoint, Bucket: s.Bucket, Prefix: s.Prefix,
			AccessKey: s.AccessKey, SecretKey: s.SecretKey, Region: s.Region, UseSSL: s.UseSSL,
		}, opts...)
		if errors.Is(err, storage.ErrMisconfigured) {
			return nil, usageError{fmt.Errorf("storage.s3: %w", err)}
		}
		if err != nil {
			return nil, fmt.Errorf("storage.s3: %w", err)
		}
		return st, nil
	default:
		st, err := storage.NewLocal(cfg.Storage.Local.Root, opts...)
		if err != nil {
			return nil, usageError{fmt.Errorf("storage.local.root: %w", err)}
		}
		return st, nil
	}
}

// openBoth opens the database and the storage; closeAll closes both.
func openBoth(ctx context.Context, cfg *config.Config, use dbUse, opts ...storage.Option) (*pgxpool.Pool, store, func(), error) {
	pool, err := openDB(ctx, cfg, use)
	if err != nil {
		return nil, nil, nil, err
	}
	st, err := openStore(ctx, cfg, opts...)
	if err != nil {
		pool.Close()
		return nil, nil, nil, err
	}
	return pool, st, func() { st.Close(); pool.Close() }, nil
}

func migrate(ctx context.Context, cfg *config.Config, log *slog.Logger, stdout io.Writer) error {
	pool, err := openDB(ctx, cfg, forMigrate)
	if err != nil {
		return err
	}
	defer pool.Close()
	rs, err := openTables(ctx, cfg, pool, nil, nil, nil, log)
	if err != nil {
		return err
	}
	for _, r := range rs {
		if err := r.Migrate(ctx); err != nil {
			return err
		}
	}
	// Created here, by the table's owner: the service's role need not own
	// the table, and only checks the publication.
	rpc := replicationConfig(cfg, false)
	if err := replication.EnsurePublication(ctx, pool, rpc, log); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "Database is ready for reconcile.")
	return nil
}

// openReport opens the report file --output names, or stdout without one;
// done closes it.
func openReport(output string, stdout io.Writer) (io.Writer, func(), error) {
	if output == "" {
		return stdout, func() {}, nil
	}
	f, err := os.Create(output)
	if err != nil {
		return nil, nil, usageError{fmt.Errorf("--output: %w", err)}
	}
	return f, func() { f.Close() }, nil
}

// syncReport makes a report written to a file durable; a device such as
// /dev/null, or a pipe, has nothing to sync.
func syncReport(out io.Writer) error {
	f, ok := out.(*os.File)
	if !ok {
		return nil
	}
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		return nil
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}

// logAbort logs, once, a run that stopped short: a failure the cron job's
// monitoring (grep "CLEANUP.*Failed") must see too. The error then only
// sets the exit status.
func logAbort(ctx context.Context, log *slog.Logger, what string, err *error) {
	if errors.Is(*err, context.Canceled) && context.Cause(ctx) != nil {
		*err = fmt.Errorf("%w (%w)", *err, context.Cause(ctx))
	}
	if *err != nil && !errors.Is(*err, errSomeFailed) && !isUsage(*err) {
		log.Error("[CLEANUP] Failed: "+what, "error", *err)
		*err = errSomeFailed
	}
}

// openAll is openBoth plus the index file, for the commands that purge; an
// unreadable index is moved aside and replaced by an empty one, which a
// rescan fills. closeAll closes all three.
func openAll(ctx context.Context, cfg *config.Config, use dbUse, log *slog.Logger, opts ...storage.Option) (*pgxpool.Pool, store, *index.Index, func(), error) {
	pool, st, closeBoth, err := openBoth(ctx, cfg, use, opts...)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	idx, err := index.Open(cfg.Index.Path)
	if err != nil {
		closeBoth()
		return nil, nil, nil, nil, err
	}
	if idx.Discarded != "" {
		log.Warn("index was unreadable; moved aside, a rescan rebuilds it", "moved_to", idx.Discarded)
	}
	idx.OnDiscard(func(movedTo string, reason error) {
		log.Warn("index data was corrupt; moved aside, a rescan rebuilds it", "moved_to", movedTo, "reason", reason)
	})
	return pool, st, idx, func() { idx.Close(); closeBoth() }, nil
}

func rescan(ctx context.Context, cfg *config.Config, m *metrics.Metrics, log *slog.Logger, stdout io.Writer, con *console) (err error) {
	defer logAbort(ctx, log, "run aborted", &err)
	pool, st, idx, closeAll, err := openAll(ctx, cfg, forPurge, log, storage.WithObserver(m.StorageRequest))
	if err != nil {
		return err
	}
	defer closeAll()

	rs, _, _, err := openRemoving(ctx, cfg, pool, st, idx, m, log)
	if err != nil {
		return err
	}
	// What is left, for the metrics file: rows the budget left, files
	// still in the outbox.
	defer func() {
		if isUsage(err) {
			return // nothing to count: the database is not set up
		}
		// errSomeFailed: rows or files failed, and were counted as such.
		if reason := reconciler.StopReason(err); reason != "" && !errors.Is(err, errSomeFailed) {
			m.PurgeErrors(reason, 1)
		}
		// The index is not read: without the stream it still lists the
		// rows just purged.
		g := &gauges{r: rs, m: m, log: log}
		if err := g.refreshOutbox(context.WithoutCancel(ctx)); err != nil {
			log.Warn("metrics not refreshed", "error", err)
		}
	}()
	if err := rs.CheckSetup(ctx); err != nil {
		return err
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("connect to database: %w", err)
	}
	defer conn.Release()
	ctx, unlock, err := rs.Lock(ctx, conn)
	if err != nil {
		return err
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := unlock(ctx); err != nil {
			log.Warn("release advisory lock", "error", err)
		}
	}()

	// Each table on its own, one after the other: its leftovers, its
	// rescan, its purge, its summary; the deletion budget is the run's.
	var (
		total  reconciler.Summary
		failed []error
	)
	budget := cfg.Safety.MaxDeletes
	for _, r := range rs {
		sum, cutoff, err := rescanTable(ctx, cfg, r, len(rs) > 1, budget, m, stdout, con)
		total.Add(sum)
		if budget > 0 {
			budget = max(budget-sum.Purged, 0)
		}
		if err != nil {
			// A table that fails (its storage holds none of its files, a
			// batch stopped short) leaves the others to run; the run
			// fails at the end.
			if len(rs) > 1 {
				err = fmt.Errorf("%s: %w", r.IndexName(), err)
			}
			failed = append(failed, err)
			if ctx.Err() != nil || errors.Is(err, reconciler.ErrLockLost) {
				break
			}
			continue
		}
		if len(rs) == 1 {
			printSummary(stdout, sum, cutoff)
		}
	}
	if len(rs) > 1 {
		printTotals(stdout, total, len(rs))
	}
	if total.Left > 0 {
		fmt.Fprintf(stdout, "\nStopped at the deletion budget (safety.max_deletes, --max-deletes: %d): %d due attachments are left for the next run.\n",
			cfg.Safety.MaxDeletes, total.Left)
	}
	if err := errors.Join(failed...); err != nil {
		return err
	}
	if cfg.Storage.Trash.Prefix != "" {
		if err := emptyTrash(ctx, cfg, st, log); err != nil {
			log.Error("[CLEANUP] Failed: empty the trash", "error", err)
			return errSomeFailed
		}
	}
	if total.Failed > 0 || total.FilesPending > 0 {
		return errSomeFailed
	}
	return nil
}

// rescanTable is the one-shot run of one table: the files an earlier run
// left, the rescan, then the purge of what is due, at most budget rows
// when budget is positive. named: the run has several tables, and says
// which this is, with its own summary.
func rescanTable(ctx context.Context, cfg *config.Config, r *reconciler.Reconciler, named bool, budget int, m *metrics.Metrics, stdout io.Writer, con *console) (reconciler.Summary, time.Time, error) {
	if named {
		fmt.Fprintf(stdout, "\nTable %s:\n", r.IndexName())
	}
	// Files left by a run that stopped between commit and removal go first,
	// after the storage probe, while the table is read into the index: the
	// two share nothing, and on S3 the probe's requests then cost no time.
	var (
		leftover reconciler.Summary
		cutoff   time.Time
		due      int
	)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() (err error) {
		leftover, err = r.DrainOutbox(gctx, true)
		return err
	})
	g.Go(func() (err error) {
		if cutoff, err = r.Cutoff(gctx); err != nil {
			return err
		}
		m.Rescanned(rescanOnce)
		due, err = r.Rescan(gctx, cutoff)
		return err
	})
	if err := g.Wait(); err != nil {
		if named {
			fmt.Fprintf(stdout, "  Failed: %v\n", err)
		}
		return reconciler.Summary{}, cutoff, err
	}
	if leftover.FilesRemoved+leftover.FilesMissing+leftover.FilesKept+leftover.FilesRewritten+leftover.FilesPending > 0 {
		fmt.Fprintf(stdout, "Removed %d files left by an earlier run (%d already gone; %d kept: still in use; %d kept: written again; %d still failing).\n",
			leftover.FilesRemoved, leftover.FilesMissing, leftover.FilesKept, leftover.FilesRewritten, leftover.FilesPending)
	}

	fmt.Fprintf(stdout, "Permanently deleting %d attachments in batches of %d...\n", due, cfg.BatchSize)
	// On a terminal a bar shows the rows handled of those this run takes;
	// the cron job's lines stay on a stdout that is no terminal.
	total := due
	if cfg.Safety.MaxDeletes > 0 {
		total = min(due, budget)
	}
	lines := con.tty == nil || !con.stdoutTTY
	con.show("Deleting", 0, total)
	progress := func(handled int) {
		con.show("Deleting", handled, total)
		if lines {
			fmt.Fprintf(stdout, "  Deleted %d/%d...\n", handled, due)
		}
	}
	var (
		sum reconciler.Summary
		err error
	)
	if cfg.Safety.MaxDeletes > 0 && budget == 0 {
		sum.Left = due // the other tables spent the run's budget
	} else {
		sum, err = r.PurgeAtMost(ctx, cutoff, budget, progress)
	}
	con.done()
	sum.FilesPending += leftover.FilesPending
	if named {
		printSummary(stdout, sum, cutoff)
	}
	return sum, cutoff, err
}

// printTotals sums up a run of several tables.
func printTotals(w io.Writer, s reconciler.Summary, tables int) {
	fmt.Fprintf(w, "\nAll %d tables:\n", tables)
	printCounts(w, s)
}

func printSummary(w io.Writer, s reconciler.Summary, cutoff time.Time) {
	fmt.Fprintf(w, "\nCleanup complete:\n")
	printCounts(w, s)
	fmt.Fprintf(w, "  - Cutoff date: %s\n", cutoff.UTC().Format(reconciler.TimeLayout))
}

// printCounts prints what a purge did, as the cron job's summary did.
func printCounts(w io.Writer, s reconciler.Summary) {
	fmt.Fprintf(w, "  - Successfully deleted: %d attachments\n", s.Purged)
	if s.NoFile > 0 {
		fmt.Fprintf(w, "  - Of which without a file (empty storage key): %d attachments\n", s.NoFile)
	}
	fmt.Fprintf(w, "  - Failed: %d attachments\n", s.Failed)
	if s.Skipped > 0 {
		fmt.Fprintf(w, "  - Skipped (restored or changed since the scan): %d attachments\n", s.Skipped)
	}
	fmt.Fprintf(w, "  - Files removed: %d\n", s.FilesRemoved)
	if s.FilesMissing > 0 {
		fmt.Fprintf(w, "  - Files missing (already gone; their rows were purged): %d\n", s.FilesMissing)
	}
	if s.FilesKept > 0 {
		fmt.Fprintf(w, "  - Files kept (still used by another row): %d\n", s.FilesKept)
	}
	if s.FilesRewritten > 0 {
		fmt.Fprintf(w, "  - Files kept (written again after their removal was queued: a new upload): %d\n", s.FilesRewritten)
	}
	if s.FilesPending > 0 {
		fmt.Fprintf(w, "  - Files awaiting removal (kept in the outbox, retried next run): %d\n", s.FilesPending)
	}
	if s.DerivedRemoved > 0 {
		fmt.Fprintf(w, "  - Derived files removed (thumbnails, table.derived): %d\n", s.DerivedRemoved)
	}
	if s.DerivedKept > 0 {
		fmt.Fprintf(w, "  - Derived files kept (a remaining row maps to them): %d\n", s.DerivedKept)
	}
}
