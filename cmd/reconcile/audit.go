package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"

	"github.com/reconcile/reconcile/internal/config"
	"github.com/reconcile/reconcile/internal/metrics"
	"github.com/reconcile/reconcile/internal/storage"
	"github.com/reconcile/reconcile/reconciler"
)

func audit(ctx context.Context, cfg *config.Config, m *metrics.Metrics, opts options, log *slog.Logger, stdout, stderr io.Writer, con *console) error {
	if _, err := reconciler.NewAuditWriter(opts.format, io.Discard, io.Discard); err != nil {
		return usageError{fmt.Errorf("--format: %w", err)}
	}
	pool, st, closeAll, err := openBoth(ctx, cfg, forAudit, storage.WithObserver(m.StorageRequest))
	if err != nil {
		return err
	}
	defer closeAll()
	rs, err := openTables(ctx, cfg, pool, st, nil, nil, log)
	if err != nil {
		return err
	}
	// The report file is created once the run can start, so a refused run
	// leaves no empty report behind.
	out, done, err := openReport(opts.output, stdout)
	if err != nil {
		return err
	}
	defer done()
	// A bar on stderr while the report goes elsewhere; a report scrolling
	// on the terminal shows its own progress, and a bar would break it up.
	bar := con.tty == stderr && (opts.output != "" || !con.stdoutTTY)
	if bar {
		defer con.done()
	}
	if len(rs) == 1 {
		err = auditOne(ctx, rs[0], opts.format, out, stderr, bar, con)
	} else {
		err = auditTables(ctx, rs, opts.format, out, stderr, bar, con)
	}
	if err != nil {
		return err
	}
	return syncReport(out)
}

// auditOne writes the report of the one table, as before there were
// several.
func auditOne(ctx context.Context, r *reconciler.Reconciler, format string, out, stderr io.Writer, bar bool, con *console) error {
	w, err := reconciler.NewAuditWriter(format, out, stderr)
	if err != nil {
		return err
	}
	var progress func(examined, total int)
	if bar {
		progress = func(examined, total int) { con.show("Examining", examined, total) }
	}
	_, err = r.Audit(ctx, w, progress)
	return err
}

// auditTables writes each table's report, then the totals; a bar per
// table.
func auditTables(ctx context.Context, rs reconciler.Tables, format string, out, stderr io.Writer, bar bool, con *console) error {
	w, err := reconciler.NewTablesAuditWriter(format, out, stderr)
	if err != nil {
		return err
	}
	var progress func(table string, examined, total int)
	if bar {
		current := ""
		progress = func(table string, examined, total int) {
			if table != current {
				con.done()
				current = table
			}
			con.show("Examining "+table, examined, total)
		}
	}
	_, err = rs.Audit(ctx, w, progress)
	return err
}
