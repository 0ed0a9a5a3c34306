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

// checkMetricsFile refuses --metrics-file where it has no use, and a
// folder that is not there, before anything is touched.
func checkMetricsFile(opts options) error {
	if opts.metricsFile == "" {
		return nil
	}
	if !opts.rescan {
		return usageError{errors.New("--metrics-file is for --rescan: the service serves its metrics on http.listen")}
	}
	dir := filepath.Dir(opts.metricsFile)
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return usageError{fmt.Errorf("--metrics-file: the folder %s does not exist", dir)}
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
