package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/spf13/cobra"

	"github.com/reconcile/reconcile/internal/config"
	"github.com/reconcile/reconcile/reconciler"
)

// trashEmptier is a storage backend whose trash can be emptied.
type trashEmptier interface {
	EmptyTrash(ctx context.Context, before time.Time) (int, error)
}

// emptyTrash deletes the files trashed longer than storage.trash.keep ago.
func emptyTrash(ctx context.Context, cfg *config.Config, st trashEmptier, log *slog.Logger) error {
	before := time.Now().Add(-cfg.Storage.Trash.Keep)
	n, err := st.EmptyTrash(ctx, before)
	if n > 0 {
		log.InfoContext(ctx, "emptied the trash", "files", n, "trashed_before", before.UTC().Format(reconciler.TimeLayout))
	}
	return err
}

// trashEvery is how often the service empties the trash: its buckets are
// hours.
const trashEvery = time.Hour

// emptyTrashHourly empties the trash now and every hour until ctx ends. A
// failure is logged and tried again the next hour: the purge goes on.
func emptyTrashHourly(ctx context.Context, cfg *config.Config, st trashEmptier, log *slog.Logger) {
	tick := time.NewTicker(trashEvery)
	defer tick.Stop()
	for {
		if err := emptyTrash(ctx, cfg, st, log); err != nil && ctx.Err() == nil {
			log.WarnContext(ctx, "the trash could not be emptied; trying again in an hour", "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func newUntrashCommand(configPath *string, stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "untrash KEY...",
		Short: "Put files back from the trash (storage.trash.prefix); touches no database",
		Long: `untrash puts back, for each storage KEY (as the table's key column holds
it), the newest copy the trash holds, and prints a line per key. It never
overwrites: a key whose file exists again is refused. It changes no row: a
purged row must come back from a backup if the file is to be used again.`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usageError{errors.New("untrash: name at least one storage key")}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, keys []string) error {
			cfg, err := loadConfig(cmd, *configPath)
			if err != nil {
				return err
			}
			if cfg.Storage.Trash.Prefix == "" {
				return usageError{errors.New("storage.trash.prefix is not set: there is no trash to put files back from")}
			}
			return untrash(cmd.Context(), cfg, keys, stdout)
		},
	}
}

// untrash puts keys back from the trash, and fails when one could not be.
func untrash(ctx context.Context, cfg *config.Config, keys []string, stdout io.Writer) error {
	st, err := openStore(ctx, cfg)
	if err != nil {
		return err
	}
	defer st.Close()
	failed := 0
	for i, err := range st.Untrash(ctx, keys) {
		if err != nil {
			failed++
			fmt.Fprintf(stdout, "failed %q: %v\n", keys[i], err)
			continue
		}
		fmt.Fprintf(stdout, "restored %q\n", keys[i])
	}
	if failed > 0 {
		return errSomeFailed
	}
	return nil
}
