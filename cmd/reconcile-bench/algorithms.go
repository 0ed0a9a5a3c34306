package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// result is the timings of one algorithm over all runs.
type result struct {
	algorithm string
	label     string
	due       int
	times     []time.Duration
}

func (r result) median() time.Duration {
	t := slices.Clone(r.times)
	slices.Sort(t)
	n := len(t)
	if n%2 == 1 {
		return t[n/2]
	}
	return (t[n/2-1] + t[n/2]) / 2
}

var labels = map[string]string{
	algoCron:      "cron per-row",
	algoReconcile: "reconcile --rescan",
	algoFloor:     "floor (DELETE, then rm)",
}

// timeAlgorithms runs each selected algorithm -runs times on freshly seeded
// data, in forward order on even runs and reverse order on odd ones.
func (b *bench) timeAlgorithms(ctx context.Context) ([]result, error) {
	ds := mixedDataset(b.opts.rows)
	slog.Info("dataset", "rows", len(ds.rows), "due", ds.due)

	results := make(map[string]*result)
	for _, name := range b.opts.only {
		results[name] = &result{algorithm: name, label: labels[name], due: ds.due}
	}
	for run := range b.opts.runs {
		order := slices.Clone(b.opts.only)
		if run%2 == 1 {
			slices.Reverse(order)
		}
		for _, name := range order {
			dir := filepath.Join(b.tmp, fmt.Sprintf("run%d-%s", run+1, name))
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return nil, fmt.Errorf("creating run directory: %w", err)
			}
			if err := b.seed(ctx, ds, dir); err != nil {
				return nil, fmt.Errorf("seeding for %s: %w", name, err)
			}
			slog.Info("timing", "algorithm", name, "run", run+1, "due", ds.due)
			var (
				elapsed time.Duration
				err     error
			)
			switch name {
			case algoCron:
				elapsed, err = b.cronPerRow(ctx)
			case algoReconcile:
				elapsed, err = b.rescan(ctx, dir)
			case algoFloor:
				elapsed, err = b.floor(ctx)
			}
			if err != nil {
				return nil, fmt.Errorf("%s, run %d: %w", name, run+1, err)
			}
			if err := b.verify(ctx, ds); err != nil {
				return nil, fmt.Errorf("%s, run %d, checking the result: %w", name, run+1, err)
			}
			slog.Info("timed", "algorithm", name, "run", run+1, "seconds", elapsed.Seconds(),
				"rows_per_s", int(float64(ds.due)/elapsed.Seconds()))
			results[name].times = append(results[name].times, elapsed)
		}
	}

	var out []result
	for _, name := range b.opts.only {
		out = append(out, *results[name])
	}
	return out, nil
}

// cronPerRow does what `manage.py cleanup_attachments` does: read the due
// rows through the partial index, then for each its own transaction that
// removes the file and deletes the row, over one connection. Connecting is
// timed too, as reconcile's own start is.
func (b *bench) cronPerRow(ctx context.Context) (time.Duration, error) {
	return b.cronPerRowWith(ctx, func(_ context.Context, key string) error {
		return removeFile(b.media, key)
	})
}

// cronPerRowWith is cronPerRow with each file removed by remove.
func (b *bench) cronPerRowWith(ctx context.Context, remove func(ctx context.Context, key string) error) (time.Duration, error) {
	start := time.Now()
	conn, err := pgx.Connect(ctx, b.dbURL)
	if err != nil {
		return 0, fmt.Errorf("connecting: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))

	type due struct {
		id  pgtype.UUID
		key string
	}
	rows, _ := conn.Query(ctx, "SELECT id, image FROM forum_attachment WHERE "+duePredicate)
	items, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (due, error) {
		var d due
		err := row.Scan(&d.id, &d.key)
		return d, err
	})
	if err != nil {
		return 0, fmt.Errorf("selecting due rows: %w", err)
	}
	selected := time.Now()
	for _, it := range items {
		if err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if err := remove(ctx, it.key); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, "DELETE FROM forum_attachment WHERE id = $1", it.id); err != nil {
				return fmt.Errorf("deleting row: %w", err)
			}
			return nil
		}); err != nil {
			return 0, err
		}
	}
	end := time.Now()
	slog.Info("cron phases", "connect_and_select", selected.Sub(start).Round(time.Millisecond),
		"per_row", end.Sub(selected).Round(time.Millisecond))
	return end.Sub(start), nil
}

// floor is the least work that does the job: one statement deletes every due
// row and returns the keys, then the files are removed one after another.
func (b *bench) floor(ctx context.Context) (time.Duration, error) {
	start := time.Now()
	conn, err := pgx.Connect(ctx, b.dbURL)
	if err != nil {
		return 0, fmt.Errorf("connecting: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))

	rows, _ := conn.Query(ctx, "DELETE FROM forum_attachment WHERE "+duePredicate+" RETURNING image")
	keys, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return 0, fmt.Errorf("deleting due rows: %w", err)
	}
	deleted := time.Now()
	for _, key := range keys {
		if err := removeFile(b.media, key); err != nil {
			return 0, err
		}
	}
	end := time.Now()
	slog.Info("floor phases", "connect_and_delete", deleted.Sub(start).Round(time.Millisecond),
		"remove_files", end.Sub(deleted).Round(time.Millisecond))
	return end.Sub(start), nil
}

// removeFile removes a stored file; one already gone counts as removed, as
// Django's storage does.
func removeFile(root, key string) error {
	err := os.Remove(filepath.Join(root, filepath.FromSlash(key)))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing file: %w", err)
	}
	return nil
}

// rescan times `reconcile --rescan`.
func (b *bench) rescan(ctx context.Context, dir string) (time.Duration, error) {
	p, err := b.runReconcile(ctx, b.opts.reconcile, dir, "rescan", nil, "--rescan")
	if err != nil {
		return 0, err
	}
	return p.elapsed, nil
}

// migrate runs `reconcile migrate` with the binary bin (untimed): the outbox
// table and the indexes it creates are part of the setup every algorithm
// gets.
func (b *bench) migrate(ctx context.Context, bin, dir string) error {
	_, err := b.runReconcile(ctx, bin, dir, "migrate", nil, "migrate")
	return err
}
