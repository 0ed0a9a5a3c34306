package reconciler

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// AuditRow is one row of the dry-run report.
type AuditRow struct {
	ID               string     `json:"id"`
	StorageKey       string     `json:"storage_key"`
	OriginalFilename string     `json:"original_filename"`
	DeletedAt        *time.Time `json:"deleted_at"`
	DaysSinceDeleted *int       `json:"days_since_deletion"`
	// Refused says why the storage key would be refused (and the row
	// kept); empty when the row would be purged.
	Refused string `json:"refused,omitempty"`
}

// AuditTotals close the report.
type AuditTotals struct {
	Cutoff       time.Time     `json:"cutoff"`
	Retention    time.Duration `json:"-"`
	Due          int           `json:"would_delete"`
	NoFile       int           `json:"without_file"` // of Due, rows that name no file
	Refused      int           `json:"refused"`
	Inconsistent int           `json:"inconsistent"`
	// MaxDeletes is the deletion budget of one run (0: none), and ThisRun
	// how many rows the next run would delete under it.
	MaxDeletes int `json:"max_deletes,omitempty"`
	ThisRun    int `json:"this_run"`
	// StorageProblem says why a purge would refuse to run (the storage
	// holds none of the table's files); empty when it would run.
	StorageProblem string `json:"storage_problem,omitempty"`
}

// AuditWriter formats the report as it streams: rows are never held all at
// once.
type AuditWriter interface {
	Due(AuditRow) error
	// Inconsistent follows the due rows: rows with is_active = false and no
	// deleted_at, which are never purged.
	Inconsistent(AuditRow) error
	Close(AuditTotals) error
}

// Audit reports what a purge would do now, changing nothing: every due row
// (with the storage keys that would be refused) and the inconsistent rows.
// A storage that holds none of the table's files is reported in the totals,
// and the audit then ends with ErrNoFiles, as the purge would.
//
// progress, if set, is told how many due rows there are, then after each
// due row how many were examined: each costs a storage check (on local
// disk, a look at every folder of its path). Counting them costs a query,
// made only for progress.
func (r *Reconciler) Audit(ctx context.Context, w AuditWriter, progress func(examined, total int)) (AuditTotals, error) {
	return r.audit(ctx, w, progress, r.cfg.MaxDeletes)
}

// shapeWriter words the report after the table's soft-delete shape.
type shapeWriter interface {
	shape(Table)
}

// audit is Audit with left of the deletion budget (Config.MaxDeletes) for
// this table: the next run takes at most that many of its rows.
func (r *Reconciler) audit(ctx context.Context, w AuditWriter, progress func(examined, total int), left int) (AuditTotals, error) {
	totals := AuditTotals{Retention: r.cfg.Retention, MaxDeletes: r.cfg.MaxDeletes}
	if s, ok := w.(shapeWriter); ok {
		s.shape(r.table)
	}
	probeErr := r.probeFiles(ctx)
	if probeErr != nil && !errors.Is(probeErr, ErrNoFiles) {
		return totals, probeErr
	}
	if probeErr != nil {
		totals.StorageProblem = probeErr.Error()
	}
	var now time.Time
	err := r.db.QueryRow(ctx, r.sql.clock, r.retentionMicros()).Scan(&now, &totals.Cutoff)
	if err != nil {
		return totals, fmt.Errorf("read database clock: %w", err)
	}

	total, examined := 0, 0
	if progress != nil {
		if err := r.db.QueryRow(ctx, r.sql.auditCount, totals.Cutoff).Scan(&total); err != nil {
			return totals, fmt.Errorf("count due rows: %w", err)
		}
		progress(0, total)
	}
	rows, err := r.db.Query(ctx, r.sql.audit, totals.Cutoff)
	if err != nil {
		return totals, fmt.Errorf("audit due rows: %w", err)
	}
	for rows.Next() {
		var row AuditRow
		var deletedAt time.Time
		var joined string // the keys as the index holds them
		if err := rows.Scan(&row.ID, &row.StorageKey, &joined, &row.OriginalFilename, &deletedAt); err != nil {
			rows.Close()
			return totals, fmt.Errorf("audit due rows: %w", err)
		}
		days := int(now.Sub(deletedAt) / (24 * time.Hour))
		row.DeletedAt, row.DaysSinceDeleted = &deletedAt, &days
		// Each key as the purge checks it: one refused keeps the row.
		keys := r.table.splitKeys(joined)
		if len(keys) == 0 {
			totals.NoFile++
		}
		for _, err := range r.store.Check(ctx, keys) {
			if err != nil {
				row.Refused = err.Error()
				break
			}
		}
		if row.Refused != "" {
			totals.Refused++
		} else {
			totals.Due++
		}
		if err := w.Due(row); err != nil {
			rows.Close()
			return totals, fmt.Errorf("write report: %w", err)
		}
		if examined++; progress != nil {
			progress(examined, total)
		}
	}
	if err := rows.Err(); err != nil {
		return totals, fmt.Errorf("audit due rows: %w", err)
	}

	rows, err = r.db.Query(ctx, r.sql.inconsistent)
	if err != nil {
		return totals, fmt.Errorf("audit inconsistent rows: %w", err)
	}
	for rows.Next() {
		var row AuditRow
		if err := rows.Scan(&row.ID, &row.StorageKey, &row.OriginalFilename); err != nil {
			rows.Close()
			return totals, fmt.Errorf("audit inconsistent rows: %w", err)
		}
		totals.Inconsistent++
		if err := w.Inconsistent(row); err != nil {
			rows.Close()
			return totals, fmt.Errorf("write report: %w", err)
		}
	}
	if err := rows.Err(); err != nil {
		return totals, fmt.Errorf("audit inconsistent rows: %w", err)
	}
	totals.ThisRun = totals.Due
	switch {
	case probeErr != nil:
		totals.ThisRun = 0 // the purge refuses to run on this table
	case totals.MaxDeletes > 0:
		totals.ThisRun = min(totals.Due, left)
	}
	if err := w.Close(totals); err != nil {
		return totals, fmt.Errorf("write report: %w", err)
	}
	return totals, probeErr
}

// AuditSum closes the report of several tables: their totals added up.
type AuditSum struct {
	Tables       int `json:"tables"`
	Due          int `json:"would_delete"`
	NoFile       int `json:"without_file"`
	Refused      int `json:"refused"`
	Inconsistent int `json:"inconsistent"`
	// MaxDeletes is the deletion budget of one run, which the tables take
	// from in order; ThisRun how many rows of all the next run would
	// delete under it.
	MaxDeletes int `json:"max_deletes,omitempty"`
	ThisRun    int `json:"this_run"`
	// StorageProblems counts the tables a purge would refuse to run on.
	StorageProblems int `json:"storage_problems,omitempty"`
}

func (s *AuditSum) add(t AuditTotals) {
	s.Due += t.Due
	s.NoFile += t.NoFile
	s.Refused += t.Refused
	s.Inconsistent += t.Inconsistent
	s.MaxDeletes = t.MaxDeletes
	s.ThisRun += t.ThisRun
	if t.StorageProblem != "" {
		s.StorageProblems++
	}
}

// TablesAuditWriter formats the report of several tables as it streams:
// each table's part as an AuditWriter formats one table's report, then
// the sums.
type TablesAuditWriter interface {
	// Table starts the part of the table name (schema.name).
	Table(name string, retention time.Duration) (AuditWriter, error)
	Close(AuditSum) error
}

// Audit reports what a purge of every table would do now, each table on
// its own as Reconciler.Audit reports it, then the sums. The deletion
// budget is the run's: the tables take from it in order. A table whose
// storage holds none of its files is reported, the others too, and the
// audit then ends with ErrNoFiles. progress, if set, hears of each table's
// rows as Reconciler.Audit's does, with the table's name.
func (rs Tables) Audit(ctx context.Context, w TablesAuditWriter, progress func(table string, examined, total int)) (AuditSum, error) {
	sum := AuditSum{Tables: len(rs)}
	var noFiles []error
	for _, r := range rs {
		name := r.IndexName()
		tw, err := w.Table(name, r.cfg.Retention)
		if err != nil {
			return sum, fmt.Errorf("write report: %w", err)
		}
		var p func(examined, total int)
		if progress != nil {
			p = func(examined, total int) { progress(name, examined, total) }
		}
		totals, err := r.audit(ctx, tw, p, max(r.cfg.MaxDeletes-sum.ThisRun, 0))
		switch {
		case errors.Is(err, ErrNoFiles):
			noFiles = append(noFiles, fmt.Errorf("audit %s: %w", name, err))
		case err != nil:
			return sum, fmt.Errorf("audit %s: %w", name, err)
		}
		sum.add(totals)
	}
	if err := w.Close(sum); err != nil {
		return sum, fmt.Errorf("write report: %w", err)
	}
	return sum, errors.Join(noFiles...)
}
