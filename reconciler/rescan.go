package reconciler

import (
	"context"
	"fmt"
	"strings"
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
	return r.rescan(ctx, cutoff, false)
}

// RescanForStream is Rescan for the replication stream: it first waits for
// every commit so far to be visible, so that it covers every change the
// stream has received, and once done marks the table's part of the index
// filled from this table.
func (r *Reconciler) RescanForStream(ctx context.Context, cutoff time.Time) (int, error) {
	return r.rescan(ctx, cutoff, true)
}

func (r *Reconciler) rescan(ctx context.Context, cutoff time.Time, complete bool) (int, error) {
	if complete {
		if err := r.awaitCommits(ctx); err != nil {
			return 0, err
		}
	}
	opts := pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}
	byID, err := r.db.BeginTx(ctx, opts)
	if err != nil {
		return 0, fmt.Errorf("rescan: %w", err)
	}
	defer byID.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // read-only
	var snapshot string
	if err := byID.QueryRow(ctx, `SELECT pg_export_snapshot()`).Scan(&snapshot); err != nil {
		return 0, fmt.Errorf("rescan: export snapshot: %w", err)
	}
	byDue, err := r.db.BeginTx(ctx, opts)
	if err != nil {
		return 0, fmt.Errorf("rescan: %w", err)
	}
	defer byDue.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // read-only
	if _, err := byDue.Exec(ctx, fmt.Sprintf("SET TRANSACTION SNAPSHOT '%s'", snapshot)); err != nil {
		return 0, fmt.Errorf("rescan: import snapshot: %w", err)
	}
	// Emptied only now, so a rescan that could not start leaves the index.
	if err := r.index.Reset(); err != nil {
		return 0, err
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
	if err := g.Wait(); err != nil {
		return 0, err
	}
	if complete {
		return due, r.index.Filled(r.table.Fingerprint())
	}
	return due, nil
}

const (
	// snapshotRetry is how often awaitCommits looks again.
	snapshotRetry = 10 * time.Millisecond
	// commitGrace is how long a transaction still running may hide a
	// commit: a commit record reaches the disk microseconds before its
	// transaction is visible, unless it then waits for a synchronous
	// standby, which awaitCommits sees.
	commitGrace = time.Second
)

// awaitCommits waits until the transactions that have committed by now are
// visible, so that a snapshot taken next sees every commit the stream may
// have received. A commit reaches the WAL, and so the stream, a moment
// before other sessions see it; under synchronous replication that moment
// lasts until the standby answers, and the session shows the wait event
// SyncRep. Those are waited for; other transactions still running are
// waited for a moment only: their commits are still to come, and the
// stream will bring them. (A COMMIT PREPARED waiting for a standby is not
// seen: its session does not own the transaction's id.)
func (r *Reconciler) awaitCommits(ctx context.Context) error {
	if err := r.CheckCommitWaits(ctx); err != nil {
		return err
	}
	// An xid of our own, finished at once (it writes nothing, so it waits
	// for no standby): every transaction that began before has a smaller
	// one, and the snapshots below list those still running
	// (pg_snapshot_xip lists only xids under the snapshot's xmax).
	var mark string
	if err := r.db.QueryRow(ctx, `SELECT pg_current_xact_id()::text`).Scan(&mark); err != nil {
		return fmt.Errorf("rescan: mark the transactions open now: %w", err)
	}
	start, warned := time.Now(), time.Now()
	for {
		var running, syncWaits int
		err := r.db.QueryRow(ctx, `
			WITH running AS (
				SELECT (x::text::bigint % 4294967296)::text AS xid
				FROM pg_snapshot_xip(pg_current_snapshot()) AS x
				WHERE x < $1::text::xid8
			)
			SELECT (SELECT count(*) FROM running),
			       (SELECT count(*) FROM pg_stat_activity a
			        WHERE a.wait_event = 'SyncRep' AND a.backend_xid::text IN (SELECT xid FROM running))`,
			mark).Scan(&running, &syncWaits)
		if err != nil {
			return fmt.Errorf("rescan: wait for commits to be visible: %w", err)
		}
		if syncWaits == 0 && (running == 0 || time.Since(start) > commitGrace) {
			return nil
		}
		if syncWaits > 0 && time.Since(warned) > 10*time.Second {
			r.log.WarnContext(ctx, "the rescan waits for commits that wait for a synchronous standby", "transactions", syncWaits)
			warned = time.Now()
		}
		sleep(ctx, snapshotRetry)
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}

// CheckCommitWaits refuses, with ErrSetup, a server where commits may wait
// for a synchronous standby (synchronous_standby_names is set) while
// reconcile's role cannot see that they do: PostgreSQL hides other roles'
// wait events from a role that is neither a superuser nor a member of
// pg_read_all_stats, and a rescan that cannot see such a commit misses its
// row until the next rescan. (pg_xact_status would not do: it reports a
// transaction still shown as running as in progress, committed or not.)
func (r *Reconciler) CheckCommitWaits(ctx context.Context) error {
	var names, role string
	var sees bool
	err := r.db.QueryRow(ctx, `
		SELECT current_setting('synchronous_standby_names'), current_user,
		       (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) OR pg_has_role(current_user, 'pg_read_all_stats', 'USAGE')`).Scan(&names, &role, &sees)
	if err != nil {
		return fmt.Errorf("read synchronous_standby_names: %w", err)
	}
	if strings.TrimSpace(names) == "" || sees {
		return nil
	}
	return fmt.Errorf("synchronous_standby_names is set (%q), and role %q cannot see which commits wait for a standby, so a rescan could miss them: run GRANT pg_read_all_stats TO %s: %w",
		names, role, quote(role), ErrSetup)
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
