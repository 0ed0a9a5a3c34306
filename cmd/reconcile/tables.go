package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/spf13/cobra"

	"github.com/reconcile/reconcile/internal/config"
	"github.com/reconcile/reconcile/reconciler"
	"github.com/reconcile/reconcile/replication"
)

// errNotMigrated is the exit status of `reconcile tables` when something
// the purge needs is missing; the report says what.
var errNotMigrated = errors.New("some of what reconcile needs is missing (see above): run `reconcile migrate` as the tables' owner")

func newTablesCommand(configPath *string, stdout, stderr io.Writer) *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "tables [--format text|json]",
		Short: "Show each configured table as the database sees it, and whether it has what the purge needs; changes nothing",
		Long: `tables prints each configured table: its soft-delete shape, key columns,
retention and derived patterns; its rows (the planner's estimate), and
exactly how many are soft-deleted and due now by the database's clock; and
each object that reconcile migrate creates for it (the outbox, the due
index, an index per key column and per derived pattern and key column,
REPLICA IDENTITY FULL, the publication), present or not. An equivalent
index under another name counts. Exit status 1 when something is missing.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if format != "text" && format != "json" {
				return usageError{fmt.Errorf("--format: want text or json, got %q", format)}
			}
			cfg, err := loadConfig(cmd, *configPath)
			if err != nil {
				return err
			}
			return describeTables(cmd.Context(), cfg, format, newLogger(cfg, stderr), stdout)
		},
	}
	cmd.Flags().StringVar(&format, "format", "text", "output format: text or json")
	return cmd
}

func describeTables(ctx context.Context, cfg *config.Config, format string, log *slog.Logger, stdout io.Writer) error {
	pool, err := openDB(ctx, cfg, forAudit)
	if err != nil {
		return err
	}
	defer pool.Close()
	rs, err := openTables(ctx, cfg, pool, nil, nil, nil, log)
	if err != nil {
		return err
	}
	ds := make([]reconciler.TableDescription, len(rs))
	ready := true
	for i, r := range rs {
		if ds[i], err = r.Describe(ctx, cfg.Replication.Publication); err != nil {
			return err
		}
	}
	// The publication as the service checks it: one that hides changes
	// (an operation, a row filter, a column list) stops the service.
	if _, _, err := replication.CheckPublication(ctx, pool, replicationConfig(cfg, false)); err != nil {
		if !errors.Is(err, replication.ErrSetup) {
			return err
		}
		for i := range ds {
			for j := range ds[i].Needs {
				if ds[i].Needs[j].What == "publication" {
					ds[i].Needs[j].Present, ds[i].Needs[j].Detail = false, err.Error()
				}
			}
		}
	}
	for _, d := range ds {
		ready = ready && d.Ready()
	}
	if format == "json" {
		err = json.NewEncoder(stdout).Encode(struct {
			Tables []reconciler.TableDescription `json:"tables"`
			Ready  bool                          `json:"ready"`
		}{ds, ready})
	} else {
		err = printTables(stdout, ds)
	}
	if err != nil {
		return fmt.Errorf("write the tables: %w", err)
	}
	if !ready {
		return errNotMigrated
	}
	return nil
}

func printTables(w io.Writer, ds []reconciler.TableDescription) error {
	var b strings.Builder
	for i, d := range ds {
		if i > 0 {
			b.WriteString("\n")
		}
		fmt.Fprintf(&b, "Table %s (%s):\n", d.Table, d.Config)
		shape := d.SoftDelete
		if shape != d.DeletedAt+" IS NOT NULL" {
			shape += " (since " + d.DeletedAt + ")"
		}
		fmt.Fprintf(&b, "  soft-deleted:  %s\n", shape)
		fmt.Fprintf(&b, "  key columns:   %s\n", strings.Join(d.KeyColumns, ", "))
		fmt.Fprintf(&b, "  retention:     %s\n", reconciler.FormatRetention(d.Retention))
		derived := "none"
		if len(d.Derived) > 0 {
			derived = strings.Join(d.Derived, ", ")
		}
		fmt.Fprintf(&b, "  derived:       %s\n", derived)
		rows := "not yet estimated (never analyzed)"
		if d.RowsEstimate >= 0 {
			rows = fmt.Sprintf("about %d", d.RowsEstimate)
		}
		fmt.Fprintf(&b, "  rows:          %s; %d soft-deleted, %d due now (cutoff date %s)\n",
			rows, d.SoftDeleted, d.Due, d.Cutoff.UTC().Format(reconciler.TimeLayout))
		b.WriteString("  needs:\n")
		for _, c := range d.Needs {
			state := "ok     "
			if !c.Present {
				state = "MISSING"
			}
			fmt.Fprintf(&b, "    %s  %s %s", state, c.What, c.Name)
			if c.Detail != "" {
				fmt.Fprintf(&b, " (%s)", c.Detail)
			}
			b.WriteString("\n")
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}
