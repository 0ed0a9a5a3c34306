// Command reconcile purges soft-deleted attachments: rows that have had
// is_active = false for longer than the retention lose their file and then
// their row. It replaces `python manage.py cleanup_attachments`.
//
//	reconcile migrate                  create the outbox table, indexes and publication
//	reconcile migrate --print-role R   print the SQL that creates reconcile's role R
//	reconcile                          the service: tail the table, purge each row as it falls due
//	reconcile --dry-run                the service, logging what it would purge, purging nothing
//	reconcile --rescan                 purge everything due, print a summary, exit
//	reconcile --rescan --dry-run       report what would be purged, change nothing
//	reconcile status                   show the backlog, the outbox, the slot and the lock holder
//	reconcile tables                   show each table and whether it has what the purge needs
//	reconcile untrash KEY...           put files back from the trash (storage.trash.prefix)
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/reconcile/reconcile/internal/config"
	"github.com/reconcile/reconcile/internal/metrics"
	"github.com/reconcile/reconcile/reconciler"
	"github.com/reconcile/reconcile/replication"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3".
var version = ""

// Exit statuses, as the cron job's callers expect them.
const (
	exitOK     = 0
	exitFailed = 1 // some purge failed, or the run could not finish
	exitUsage  = 2 // bad flags or configuration; nothing was touched
)

func main() {
	os.Exit(runWithSignals(os.Args[1:]))
}

// runWithSignals runs the command until it ends or SIGINT or SIGTERM asks
// it to stop.
func runWithSignals(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return run(ctx, args, os.Stdout, os.Stderr)
}

// usageError marks errors that exit with exitUsage.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// errSomeFailed marks a run that failed to purge some rows or stopped short;
// the summary or the log already said so, so nothing more is printed.
var errSomeFailed = errors.New("some attachments could not be purged")

// options are the flags that are not configuration keys.
type options struct {
	configPath  string
	rescan      bool
	dryRun      bool
	format      string
	output      string
	metricsFile string
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRootCommand(stdout, stderr, isTerminal)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, errSomeFailed):
		return exitFailed
	case isUsage(err):
		fmt.Fprintf(stderr, "reconcile: %v\n", err)
		return exitUsage
	default:
		fmt.Fprintf(stderr, "reconcile: %v\n", err)
		return exitFailed
	}
}

// isUsage tells errors that mean bad usage or configuration.
func isUsage(err error) bool {
	var usage usageError
	return errors.As(err, &usage) || errors.Is(err, reconciler.ErrSetup) || errors.Is(err, replication.ErrSetup)
}

// newRootCommand builds the command; terminal tells whether stdout or
// stderr can show a progress bar.
func newRootCommand(stdout, stderr io.Writer, terminal func(io.Writer) bool) *cobra.Command {
	var opts options
	root := &cobra.Command{
		Use:   "reconcile [--rescan] [--dry-run]",
		Short: "Purge soft-deleted attachments once their retention has passed",
		Long: `reconcile hard-deletes attachment rows that have been soft-deleted
(is_active = false) for longer than the retention, and removes their files
from local disk or S3. Every deletion is re-checked by the database; files go
only after the rows are committed, through an outbox table.

Without --rescan it runs as a service: it tails the table through logical
replication into a local index and purges each attachment when it falls due.
With --rescan it purges everything due once and exits, as the cron job did.

Configuration comes from a YAML file (--config or RECONCILE_CONFIG), then
RECONCILE_* environment variables, then flags.`,
		Version:       buildVersion(),
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !(opts.rescan && opts.dryRun) && (cmd.Flags().Changed("format") || cmd.Flags().Changed("output")) {
				return usageError{errors.New("--format and --output shape the audit report: use them with --rescan --dry-run")}
			}
			cfg, err := loadConfig(cmd, opts.configPath)
			if err != nil {
				return err
			}
			if err := checkMetricsFile(opts, cfg); err != nil {
				return err
			}
			con := newConsole(stdout, stderr, terminal)
			log := newLogger(cfg, con.logs(stderr))
			for _, w := range cfg.Warnings() {
				log.Warn(w)
			}
			if !opts.rescan {
				return serve(cmd.Context(), cfg, opts.dryRun, log)
			}
			return once(cmd.Context(), cfg, opts, log, func(m *metrics.Metrics) error {
				if opts.dryRun {
					return audit(cmd.Context(), cfg, m, opts, log, stdout, stderr, con)
				}
				return rescan(cmd.Context(), cfg, m, log, stdout, con)
			})
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })

	pf := root.PersistentFlags()
	pf.StringVar(&opts.configPath, "config", os.Getenv("RECONCILE_CONFIG"), "YAML configuration file (env RECONCILE_CONFIG)")

	f := root.Flags()
	f.BoolVar(&opts.rescan, "rescan", false, "scan the table, rebuild the index, purge everything due, then exit (without it: run as a service)")
	f.BoolVar(&opts.dryRun, "dry-run", false, "change nothing: report what would be purged")
	f.Int("days", 30, "retention in whole days (sets the retention key)")
	f.Int("batch-size", 100, "rows per DELETE statement (sets batch_size)")
	f.Int("max-deletes", 0, "purge at most this many rows in this run; the rest waits for the next (sets safety.max_deletes)")
	f.StringVar(&opts.format, "format", "text", "dry-run report format: text, json or csv")
	f.StringVarP(&opts.output, "output", "o", "", "write the dry-run report to this file instead of standard output")
	f.StringVar(&opts.metricsFile, "metrics-file", "", "with --rescan: write the run's metrics to this file for node_exporter's textfile collector (e.g. /var/lib/node_exporter/textfile_collector/reconcile.prom)")

	var printRole string
	migrateCmd := &cobra.Command{
		Use:   "migrate [--print-role NAME]",
		Short: "Create the outbox table, the indexes and the publication reconcile needs (idempotent)",
		Long: `migrate creates the outbox table, the indexes and the publication that
reconcile needs; run it as the table's owner. With --print-role NAME it
connects to nothing: it prints the SQL that creates role NAME with only the
privileges reconcile needs, for a superuser to apply after migrate.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd, opts.configPath)
			if err != nil {
				return err
			}
			if cmd.Flags().Changed("print-role") {
				sql, err := reconciler.RoleSQL(printRole, tables(cfg)...)
				if err != nil {
					return usageError{fmt.Errorf("--print-role: %w", err)}
				}
				_, err = io.WriteString(stdout, sql)
				return err
			}
			return migrate(cmd.Context(), cfg, newLogger(cfg, stderr), stdout)
		},
	}
	migrateCmd.Flags().StringVar(&printRole, "print-role", "", "print the SQL that creates this role with the privileges reconcile needs, and exit")
	root.AddCommand(migrateCmd)

	var statusFormat string
	statusCmd := &cobra.Command{
		Use:   "status [--format text|json]",
		Short: "Show the backlog, the outbox, the replication slot and who purges; changes nothing",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if statusFormat != "text" && statusFormat != "json" {
				return usageError{fmt.Errorf("--format: want text or json, got %q", statusFormat)}
			}
			cfg, err := loadConfig(cmd, opts.configPath)
			if err != nil {
				return err
			}
			return status(cmd.Context(), cfg, statusFormat, newLogger(cfg, stderr), stdout)
		},
	}
	statusCmd.Flags().StringVar(&statusFormat, "format", "text", "output format: text or json")
	root.AddCommand(statusCmd)
	root.AddCommand(newOrphansCommand(&opts.configPath, stdout, stderr))
	root.AddCommand(newTablesCommand(&opts.configPath, stdout, stderr))
	root.AddCommand(newUntrashCommand(&opts.configPath, stdout))
	return root
}

func loadConfig(cmd *cobra.Command, path string) (*config.Config, error) {
	cfg, err := config.Load(path, cmd.Flags())
	if err != nil {
		return nil, usageError{err}
	}
	return cfg, nil
}

func newLogger(cfg *config.Config, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.Log.Level)) // validated by config
	opts := &slog.HandlerOptions{Level: level}
	if cfg.Log.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func buildVersion() string {
	if version != "" {
		return version
	}
	if info, ok := debug.ReadBuildInfo(); ok && info.Main.Version != "" {
		return info.Main.Version
	}
	return "devel"
}
