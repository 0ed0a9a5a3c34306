package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/reconcile/reconcile/internal/config"
	"github.com/reconcile/reconcile/internal/inventory"
	"github.com/reconcile/reconcile/internal/storage"
	"github.com/reconcile/reconcile/reconciler"
)

// orphanOptions are the flags of `reconcile orphans`.
type orphanOptions struct {
	dryRun     bool
	format     string
	output     string
	startAfter string
	inventory  string
}

func newOrphansCommand(configPath *string, stdout, stderr io.Writer) *cobra.Command {
	var opts orphanOptions
	cmd := &cobra.Command{
		Use:   "orphans [--dry-run] [--format text|json|csv] [--output FILE] [--start-after KEY | --inventory MANIFEST]",
		Short: "List, and without --dry-run remove, files under the table's prefixes that no row owns",
		Long: `orphans walks the storage under the folders the table owns (table.prefixes;
by default the folder its keys share and the derived patterns' folders under
it) beside the keys and derived locations of every row, read in the same
order from the database. A file that no row owns and that is older than
orphans.grace is an orphan: a failed upload, a row deleted outright. Each is
checked against the database again just before it is removed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := reconciler.NewOrphanWriter(opts.format, io.Discard, io.Discard, true); err != nil {
				return usageError{fmt.Errorf("--format: %w", err)}
			}
			if opts.inventory != "" && opts.startAfter != "" {
				return usageError{errors.New("--start-after resumes a listing: an --inventory report is read whole")}
			}
			cfg, err := loadConfig(cmd, *configPath)
			if err != nil {
				return err
			}
			if opts.inventory != "" && cfg.Storage.Backend != "s3" {
				return usageError{fmt.Errorf("--inventory reads an S3 Inventory report of the bucket, but storage.backend is %s", cfg.Storage.Backend)}
			}
			log := newLogger(cfg, stderr)
			err = orphans(cmd.Context(), cfg, opts, log, stdout, stderr)
			logAbort(cmd.Context(), log, "orphan scan", &err)
			return err
		},
	}
	f := cmd.Flags()
	f.BoolVar(&opts.dryRun, "dry-run", false, "remove nothing: report the orphans")
	f.StringVar(&opts.format, "format", "text", "report format: text, json or csv")
	f.StringVarP(&opts.output, "output", "o", "", "write the report to this file instead of standard output")
	f.StringVar(&opts.startAfter, "start-after", "", "resume an interrupted scan after this key (the scan prints it when cut short)")
	f.StringVar(&opts.inventory, "inventory", "", "read the bucket's files from this S3 Inventory report (manifest.json: a local path or s3://bucket/key) instead of listing them")
	return cmd
}

func orphans(ctx context.Context, cfg *config.Config, opts orphanOptions, log *slog.Logger, stdout, stderr io.Writer) error {
	mode := forPurge
	if opts.dryRun {
		mode = forAudit
	}
	pool, st, closeAll, err := openBoth(ctx, cfg, mode)
	if err != nil {
		return err
	}
	defer closeAll()
	rs, _, _, err := openRemoving(ctx, cfg, pool, st, nil, nil, log)
	if err != nil {
		return err
	}
	if err := rs.CheckSetup(ctx); err != nil {
		return err
	}
	out, done, err := openReport(opts.output, stdout)
	if err != nil {
		return err
	}
	defer done()
	w, err := reconciler.NewOrphanWriter(opts.format, out, stderr, opts.dryRun)
	if err != nil {
		return err
	}
	scan := reconciler.OrphanOptions{
		Grace:      cfg.Orphans.Grace,
		DryRun:     opts.dryRun,
		StartAfter: opts.startAfter,
		MaxDeletes: cfg.Safety.MaxDeletes,
		Slot:       cfg.Replication.Slot,
	}
	if trash := strings.TrimRight(cfg.Storage.Trash.Prefix, "/"); trash != "" {
		scan.Skip = trash + "/"
	}
	if opts.inventory != "" {
		if scan.Source, scan.AsOf, err = inventorySource(ctx, cfg, st, opts.inventory); err != nil {
			return err
		}
		log.Info("reading an S3 Inventory report instead of listing the bucket", "manifest", opts.inventory, "created", scan.AsOf.UTC().Format(reconciler.TimeLayout))
	}
	totals, scanErr := rs.ScanOrphans(ctx, scan, w.File)
	if err := w.Close(totals); err != nil {
		return fmt.Errorf("write report: %w", errors.Join(scanErr, err))
	}
	if err := syncReport(out); err != nil {
		return err
	}
	if scanErr != nil {
		return scanErr
	}
	log.Info("[CLEANUP] Orphan scan complete", "listed", totals.Listed, "orphans", totals.Orphans, "bytes", totals.Bytes,
		"removed", totals.Removed, "kept", totals.Kept, "failed", totals.Failed)
	switch {
	case totals.Failed > 0:
		return errSomeFailed
	case !opts.dryRun && totals.Kept > 0 && totals.Removed == 0:
		// Every orphan judged stayed (an open transaction, the service
		// behind): a job that reclaims nothing must not look fine.
		log.Error("[CLEANUP] Failed: the orphan scan removed none of the orphans it judged; the report and the log say why", "kept", totals.Kept)
		return errSomeFailed
	}
	return nil
}

var _ inventory.Fetcher = (*storage.S3)(nil)

// inventorySource opens an S3 Inventory report of the configured bucket and
// gives its objects under the configured prefix, by their keys.
func inventorySource(ctx context.Context, cfg *config.Config, st store, manifest string) (func(context.Context, func(storage.Object) error) error, time.Time, error) {
	var fetch inventory.Fetcher
	if s3, ok := st.(*storage.S3); ok {
		fetch = s3
	}
	report, err := inventory.Open(ctx, manifest, fetch)
	if err != nil {
		return nil, time.Time{}, usageError{fmt.Errorf("--inventory: %w", err)}
	}
	if report.SourceBucket != cfg.Storage.S3.Bucket {
		return nil, time.Time{}, usageError{fmt.Errorf("--inventory: the report lists bucket %q, but storage.s3.bucket is %q", report.SourceBucket, cfg.Storage.S3.Bucket)}
	}
	prefix := strings.TrimRight(cfg.Storage.S3.Prefix, "/")
	if prefix != "" {
		prefix += "/"
	}
	return func(ctx context.Context, fn func(storage.Object) error) error {
		return report.Each(ctx, func(o inventory.Object) error {
			key, ok := strings.CutPrefix(o.Key, prefix)
			if !ok {
				return nil // outside the storage's prefix
			}
			obj := storage.Object{Key: key, Size: max(o.Size, 0), ModTime: o.LastModified}
			if err := storage.ValidateKey(key); err != nil {
				obj.Refused = err
			}
			return fn(obj)
		})
	}, report.Created, nil
}
