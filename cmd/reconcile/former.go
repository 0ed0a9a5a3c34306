package main

import (
	"context"
	"fmt"
	"log/slog"
	"slices"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/reconcile/reconcile/index"
	"github.com/reconcile/reconcile/internal/config"
	"github.com/reconcile/reconcile/reconciler"
)

// retiredMark marks, in the index, the part of a table that left the
// configuration: were it configured again, it is rescanned.
const retiredMark = "retired "

// formers are the reconcilers of the tables reconcile served before (their
// outbox says so: reconciler.FormerTables), that the configuration no
// longer lists and the database still has: their rows keep their files
// from the other tables' purges, and their outboxes are drained.
type formers reconciler.Tables

// formerTables makes them. unchecked are those that cannot be checked (a
// column the description names is gone): their files are not known,
// their outbox is left alone, and said so at each start.
func formerTables(ctx context.Context, cfg *config.Config, pool *pgxpool.Pool, st store, log *slog.Logger) (out formers, unchecked []string, err error) {
	configured := tables(cfg)
	described, err := reconciler.FormerTables(ctx, pool, configured)
	if err != nil {
		return nil, nil, err
	}
	for i, t := range described {
		rc := reconcilerConfig(cfg)
		rc.Peers = append(slices.Clone(configured), slices.Delete(slices.Clone(described), i, i+1)...)
		r, err := reconciler.New(ctx, pool, st, nil, t, rc, log.With("table", t.IndexName()))
		if err == nil {
			out = append(out, r)
			continue
		}
		if exists, xerr := reconciler.Exists(ctx, pool, t); xerr != nil || !exists {
			continue // gone from the database, and its rows with it
		}
		log.Warn("[CLEANUP] Failed: a table reconcile served, no longer configured, cannot be checked: its rows' files are not known to the other tables, and its outbox is left alone; configure it again, or drop it",
			"table", t.IndexName(), "error", err)
		unchecked = append(unchecked, t.IndexName())
	}
	return out, unchecked, nil
}

// openRemoving is openTables for the commands that remove files: the
// former tables are every configured table's peers, their rows keeping
// their files. It returns them too, and the unchecked ones (see
// formerTables).
func openRemoving(ctx context.Context, cfg *config.Config, pool *pgxpool.Pool, st store, idx *index.Index, obs reconciler.Observer, log *slog.Logger) (reconciler.Tables, formers, []string, error) {
	former, unchecked, err := formerTables(ctx, cfg, pool, st, log)
	if err != nil {
		return nil, nil, nil, err
	}
	rs, err := openTables(ctx, cfg, pool, st, idx, obs, log, former.Tables()...)
	if err != nil {
		return nil, nil, nil, err
	}
	return rs, former, unchecked, nil
}

// Tables are the former tables, as the others' peers.
func (fs formers) Tables() []reconciler.Table {
	out := make([]reconciler.Table, len(fs))
	for i, r := range fs {
		out[i] = r.Table()
	}
	return out
}

// Table is the former table the index names name, or nil.
func (fs formers) Table(name string) *reconciler.Reconciler {
	return reconciler.Tables(fs).Table(name)
}

// toDrain are the former tables whose outbox holds files to remove.
func (fs formers) toDrain(ctx context.Context) (reconciler.Tables, error) {
	var out reconciler.Tables
	for _, r := range fs {
		empty, err := r.OutboxEmpty(ctx)
		if err != nil {
			return nil, fmt.Errorf("look at the outbox of %s, no longer configured: %w", r.IndexName(), err)
		}
		if !empty {
			out = append(out, r)
		}
	}
	return out, nil
}
