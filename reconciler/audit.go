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
	totals := AuditTotals{Retention: r.cfg.Retention, MaxDeletes: r.cfg.MaxDeletes}
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
		if err := rows.Scan(&row.ID, &row.StorageKey, &row.OriginalFilename, &deletedAt); err != nil {
			rows.Close()
			return totals, fmt.Errorf("audit due rows: %w", err)
		}
		days := int(now.Sub(deletedAt) / (24 * time.Hour))
		row.DeletedAt, row.DaysSinceDeleted = &deletedAt, &days
		switch {
		case row.StorageKey == "":
			totals.Due++
			totals.NoFile++
		default:
			if err := r.store.Check(ctx, []string{row.StorageKey})[0]; err != nil {
				row.Refused = err.Error()
				totals.Refused++
			} else {
				totals.Due++
			}
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
	if totals.MaxDeletes > 0 {
		totals.ThisRun = min(totals.Due, totals.MaxDeletes)
	}
	if err := w.Close(totals); err != nil {
		return totals, fmt.Errorf("write report: %w", err)
	}
	return totals, probeErr
}
