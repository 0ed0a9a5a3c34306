package reconciler

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Tables are the reconcilers of the tables whose files share one storage,
// one per table, each Config.Peers naming the others: one service purges
// them together.
type Tables []*Reconciler

// Table returns the reconciler of the table the index names name, or nil.
func (rs Tables) Table(name string) *Reconciler {
	for _, r := range rs {
		if r.table.IndexName() == name {
			return r
		}
	}
	return nil
}

// CheckSetup checks every table: see Reconciler.CheckSetup.
func (rs Tables) CheckSetup(ctx context.Context) error {
	for _, r := range rs {
		if err := r.CheckSetup(ctx); err != nil {
			return err
		}
	}
	return nil
}

// Backlog adds up the tables' backlogs; NextDue is the earliest.
func (rs Tables) Backlog(ctx context.Context) (Backlog, error) {
	var sum Backlog
	for _, r := range rs {
		b, err := r.Backlog(ctx)
		if err != nil {
			return Backlog{}, err
		}
		sum.Rows += b.Rows
		sum.Due += b.Due
		sum.Overdue += b.Overdue
		if !b.NextDue.IsZero() && (sum.NextDue.IsZero() || b.NextDue.Before(sum.NextDue)) {
			sum.NextDue = b.NextDue
		}
	}
	return sum, nil
}

// OutboxStats adds up the tables' outboxes: the oldest entry of any, and
// its age.
func (rs Tables) OutboxStats(ctx context.Context) (pending int, oldest time.Time, age time.Duration, err error) {
	for _, r := range rs {
		n, first, a, err := r.OutboxStats(ctx)
		if err != nil {
			return 0, time.Time{}, 0, err
		}
		pending += n
		if !first.IsZero() && (oldest.IsZero() || first.Before(oldest)) {
			oldest = first
		}
		age = max(age, a)
	}
	return pending, oldest, age, nil
}

// QueueGone queues the files of rows deleted outright, each with its
// table's reconciler: see Reconciler.QueueGone. A row of a table no
// longer configured is the stream replaying WAL from before its removal:
// left alone.
func (rs Tables) QueueGone(ctx context.Context, rows []GoneRow, grace time.Duration) error {
	byTable := map[*Reconciler][]GoneRow{}
	for _, row := range rows {
		if r := rs.Table(row.Table); r != nil {
			byTable[r] = append(byTable[r], row)
		}
	}
	var errs []error
	for _, r := range rs {
		if len(byTable[r]) > 0 {
			errs = append(errs, r.QueueGone(ctx, byTable[r], grace))
		}
	}
	return errors.Join(errs...)
}

// Served tells whether reconcile served the table schema.name: its outbox
// exists.
func Served(ctx context.Context, db DB, schema, name string) (bool, error) {
	t := Table{Schema: schema, Name: name}
	var exists bool
	if err := db.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, t.outbox()).Scan(&exists); err != nil {
		return false, fmt.Errorf("look for outbox %s: %w", t.outbox(), err)
	}
	return exists, nil
}

// describedPrefix starts the comment that `reconcile migrate` puts on an
// outbox: the table it serves, as Fingerprint describes it.
const describedPrefix = "reconcile table "

// FormerTables are the tables whose outbox `reconcile migrate` made and
// described, that configured does not list: tables reconcile served
// before, whose rows still keep their files from the others.
func FormerTables(ctx context.Context, db DB, configured []Table) ([]Table, error) {
	rows, err := db.Query(ctx, `
		SELECT d.description
		FROM pg_description d
		JOIN pg_class c ON c.oid = d.objoid AND d.classoid = 'pg_class'::regclass AND d.objsubid = 0
		WHERE c.relkind = 'r' AND starts_with(d.description, $1)
		ORDER BY 1`, describedPrefix)
	if err != nil {
		return nil, fmt.Errorf("read the tables reconcile served: %w", err)
	}
	descriptions, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("read the tables reconcile served: %w", err)
	}
	var out []Table
	for _, d := range descriptions {
		t, err := ParseFingerprint(strings.TrimPrefix(d, describedPrefix))
		if err != nil {
			return nil, err
		}
		if !slices.ContainsFunc(configured, func(c Table) bool { return c.IndexName() == t.IndexName() }) {
			out = append(out, t)
		}
	}
	return out, nil
}

// Exists tells whether the database has the table t.
func Exists(ctx context.Context, db DB, t Table) (bool, error) {
	var exists bool
	if err := db.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, t.qualified()).Scan(&exists); err != nil {
		return false, fmt.Errorf("look for table %s: %w", t.qualified(), err)
	}
	return exists, nil
}

// Table is the table r purges.
func (r *Reconciler) Table() Table { return r.table }

// IndexName names the table's part of the index: see Table.IndexName.
func (r *Reconciler) IndexName() string { return r.table.IndexName() }

// Fingerprint describes the table the index part is filled from: see
// Table.Fingerprint.
func (r *Reconciler) Fingerprint() string { return r.table.Fingerprint() }
