package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/reconcile/reconcile/internal/config"
	"github.com/reconcile/reconcile/internal/metrics"
)

// rescanOnce is the reason a one-shot run's rescan is counted under.
const rescanOnce = "once"

// checkMetricsFile refuses --metrics-file where it has no use, a folder
// that is not there, a folder in its place, and the index's own path,
// which the file would replace, before anything is touched.
func checkMetricsFile(opts options, cfg *config.Config) error {
	path := opts.metricsFile
	if path == "" {
		return nil
	}
	if !opts.rescan {
		return usageError{errors.New("--metrics-file is for --rescan: the service serves its metrics on http.listen")}
	}
	dir := filepath.Dir(path)
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return usageError{fmt.Errorf("--metrics-file: the folder %s does not exist", dir)}
	}
	st, err := os.Stat(path)
	if err == nil && st.IsDir() {
		return usageError{fmt.Errorf("--metrics-file: %s is a folder; name a file in it, such as %s", path, filepath.Join(path, "reconcile.prom"))}
	}
	if filepath.Clean(path) == filepath.Clean(cfg.Index.Path) {
		return usageError{fmt.Errorf("--metrics-file: %s is the index's file (index.path)", path)}
	}
	if idx, ierr := os.Stat(cfg.Index.Path); err == nil && ierr == nil && os.SameFile(st, idx) {
		return usageError{fmt.Errorf("--metrics-file: %s is the index's file (index.path %s)", path, cfg.Index.Path)}
	}
	return nil
}

// once runs a one-shot command with its metrics: served on http.listen
// while it runs, when that is set, and written to --metrics-file when it
// ends, successful or not.
func once(ctx context.Context, cfg *config.Config, opts options, log *slog.Logger, run func(*metrics.Metrics) error) (err error) {
	m := metrics.New(buildVersion())
	if addr := cfg.HTTP.Address(false); addr != "" {
		ready := &readiness{metrics: m, oneShot: true}
		stop, serr := serveHTTP(ctx, addr, httpHandler(m.Handler(), ready, nil), log)
		if serr != nil {
			// The purge matters more than watching it.
			log.Warn("serving no metrics", "error", serr)
		} else {
			defer stop()
		}
	}
	err = run(m)
	if opts.metricsFile != "" {
		if werr := m.WriteTextfile(opts.metricsFile, err == nil, time.Now()); werr != nil {
			log.Error("[CLEANUP] Failed: write the metrics file", "error", werr)
			if err == nil {
				err = errSomeFailed
			}
		}
	}
	return err
}
