package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/jackc/pgx/v5"
)

// verify checks that exactly the due rows were purged: the rows left are
// the others (their count, and none of them due), every file of a due row
// (its own and its derived ones) is gone, every other row's file is still
// there, and the outbox, if any, is empty.
func (b *bench) verify(ctx context.Context, ds *dataset) error {
	return b.verifyWith(ctx, ds, "files", func(key string) (bool, error) {
		_, err := os.Lstat(filepath.Join(b.media, filepath.FromSlash(key)))
		switch {
		case err == nil:
			return true, nil
		case errors.Is(err, fs.ErrNotExist):
			return false, nil
		}
		return false, fmt.Errorf("checking file: %w", err)
	})
}

// verifyWith is verify with the files looked up by exists, and called what
// in its messages.
func (b *bench) verifyWith(ctx context.Context, ds *dataset, what string, exists func(key string) (bool, error)) error {
	conn, err := pgx.Connect(ctx, b.dbURL)
	if err != nil {
		return fmt.Errorf("connecting: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))

	var left, dueLeft int
	err = conn.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE `+duePredicate+`) FROM forum_attachment`).Scan(&left, &dueLeft)
	if err != nil {
		return fmt.Errorf("counting rows: %w", err)
	}
	var problems []string
	if want := len(ds.rows) - ds.due; left != want || dueLeft != 0 {
		problems = append(problems, fmt.Sprintf("%d rows left (%d of them due), want %d (none due): %d deleted instead of %d",
			left, dueLeft, want, len(ds.rows)-left, ds.due))
	}

	var hasOutbox bool
	if err := conn.QueryRow(ctx, `SELECT to_regclass('reconcile_forum_attachment_outbox') IS NOT NULL`).Scan(&hasOutbox); err != nil {
		return fmt.Errorf("looking for the outbox: %w", err)
	}
	if hasOutbox {
		var outbox int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM reconcile_forum_attachment_outbox`).Scan(&outbox); err != nil {
			return fmt.Errorf("counting the outbox: %w", err)
		}
		if outbox != 0 {
			problems = append(problems, fmt.Sprintf("%d keys left in reconcile_forum_attachment_outbox", outbox))
		}
	}

	const examples = 5
	var kept, missing []string // due files still there, other files gone
	keptN, missingN := 0, 0
	for i := range ds.rows {
		r := &ds.rows[i]
		for _, key := range ds.rowFiles(r) {
			present, err := exists(key)
			switch {
			case err != nil:
				return err
			case r.due && present:
				if keptN++; keptN <= examples {
					kept = append(kept, key)
				}
			case !r.due && !present:
				if missingN++; missingN <= examples {
					missing = append(missing, key)
				}
			}
		}
	}
	if keptN > 0 {
		problems = append(problems, fmt.Sprintf("%d due %s still present (e.g. %s)", keptN, what, strings.Join(kept, ", ")))
	}
	if missingN > 0 {
		problems = append(problems, fmt.Sprintf("%d %s of rows not due are missing (e.g. %s)", missingN, what, strings.Join(missing, ", ")))
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}
