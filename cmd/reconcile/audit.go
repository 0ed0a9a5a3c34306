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
	r := rs[0]
	// The report file is created once the run can start, so a refused run
	// leaves no empty report behind.
	out, done, err := openReport(opts.output, stdout)
	if err != nil {
		return err
	}
	defer done()
	w, err := reconciler.NewAuditWriter(opts.format, out, stderr)
	if err != nil {
		return err
	}
	// A bar on stderr while the report goes elsewhere; a report scrolling
	// on the terminal shows its own progress, and a bar would break it up.
	var progress func(examined, total int)
	if con.tty == stderr && (opts.output != "" || !con.stdoutTTY) {
		progress = func(examined, total int) { con.show("Examining", examined, total) }
		defer con.done()
	}
	if _, err := r.Audit(ctx, w, progress); err != nil {
		return err
	}
	return syncReport(out)
}
