package reconciler

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sync/errgroup"

	"github.com/reconcile/reconcile/index"
)

// Summary counts what a purge did.
type Summary struct {
	Purged       int // rows hard-deleted
	Failed       int // rows left in place: a refused storage key or a database error
	Skipped      int // rows the database no longer holds as due: restored, re-deleted or gone
	FilesRemoved int
	FilesKept    int // files left because another row still uses them
	FilesPending int // files whose removal failed; they wait in the outbox
}

func (s *Summary) add(o Summary) {
	s.Purged += o.Purged
	s.Failed += o.Failed
	s.Skipped += o.Skipped
	s.FilesRemoved += o.FilesRemoved
	s.FilesKept += o.FilesKept
	s.FilesPending += o.FilesPending
}

// tally is a Summary that concurrent stages add to.
type tally struct {
	mu sync.Mutex
	s  Summary
}

func (t *tally) add(o Summary) Summary {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.s.add(o)
	return t.s
}

// Purge purges every index entry deleted at or before cutoff. Rows go in
// batches of BatchSize, Concurrency batches at a time; files are removed
// while later batches run. progress, if set, is called after each batch
// with the number of entries handled so far.
//
// Entries are spread over the batch workers by storage key, so rows that
// share a file are always deleted one after the other, each statement seeing
// the other's commit: two workers deleting them at once could each find the
// other's row still there and both leave the file behind, tracked by nothing.
func (r *Reconciler) Purge(ctx context.Context, cutoff time.Time, progress func(handled int)) (Summary, error) {
	return r.purgeFrom(ctx, nil, cutoff, progress)
}

// purgeFrom purges the entries from position from up to cutoff.
func (r *Reconciler) purgeFrom(ctx context.Context, from index.Position, cutoff time.Time, progress func(handled int)) (Summary, error) {
	var (
		t       tally
		mu      sync.Mutex // orders progress calls
		handled int
	)
	report := func(n int) {
		if progress == nil {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		handled += n
		progress(handled)
	}

	g, ctx := errgroup.WithContext(ctx)
	lanes := make([]chan index.Entry, r.cfg.Concurrency)
	for i := range lanes {
		lanes[i] = make(chan index.Entry, r.cfg.BatchSize)
	}
	freed := make(chan []string, r.cfg.RemoveConcurrency)

	g.Go(func() error {
		defer func() {
			for _, lane := range lanes {
				close(lane)
			}
		}()
		return r.walkDue(ctx, from, cutoff, lanes)
	})

	var batchers sync.WaitGroup
	for _, lane := range lanes {
		batchers.Add(1)
		g.Go(func() error {
			defer batchers.Done()
			return r.batchLane(ctx, lane, freed, &t, report)
		})
	}
	go func() {
		batchers.Wait()
		close(freed)
	}()

	for range r.cfg.RemoveConcurrency {
		g.Go(func() error {
			for keys := range freed {
				s, err := r.removeFiles(ctx, keys)
				if err != nil {
					return err
				}
				t.add(s)
			}
			return nil
		})
	}

	err := g.Wait()
	return t.add(Summary{}), err
}

// walkDue reads due entries in pages and deals them to the lanes.
func (r *Reconciler) walkDue(ctx context.Context, from index.Position, cutoff time.Time, lanes []chan index.Entry) error {
	page := r.cfg.BatchSize * r.cfg.Concurrency
	for {
		entries, next, err := r.index.Due(from, cutoff, page)
		if err != nil {
			return err
		}
		if err := r.fillKeys(ctx, entries); err != nil {
			return err
		}
		for _, e := range entries {
			select {
			case lanes[laneOf(e.Key, len(lanes))] <- e:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if next == nil {
			return nil
		}
		from = next
	}
}

// fillKeys reads from the database the storage keys the index lacks: the
// stream does not carry a key that an update left unchanged in TOAST
// storage. A row that is gone keeps its empty key; the purge then skips it.
func (r *Reconciler) fillKeys(ctx context.Context, entries []index.Entry) error {
	var ids []string
	for _, e := range entries {
		if e.Key == "" {
			ids = append(ids, e.ID)
		}
	}
	if len(ids) == 0 {
		return nil
	}
	rows, err := r.db.Query(ctx, r.sql.keysOf, ids)
	if err != nil {
		return fmt.Errorf("read storage keys missing from the index: %w", err)
	}
	keys := map[string]string{}
	var id, key string
	_, err = pgx.ForEachRow(rows, []any{&id, &key}, func() error {
		keys[id] = key
		return nil
	})
	if err != nil {
		return fmt.Errorf("read storage keys missing from the index: %w", err)
	}
	for i := range entries {
		if entries[i].Key == "" {
			entries[i].Key = keys[entries[i].ID]
		}
	}
	return nil
}

func laneOf(key string, n int) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(key))
	return int(h.Sum32() % uint32(n))
}

// batchLane gathers a lane's entries into batches and purges them.
func (r *Reconciler) batchLane(ctx context.Context, lane <-chan index.Entry, freed chan<- []string, t *tally, report func(int)) error {
	batch := make([]index.Entry, 0, r.cfg.BatchSize)
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		defer func() { batch = batch[:0] }()
		safe, err := r.refuseUnsafe(ctx, batch, t)
		if err != nil {
			return err
		}
		s, keys, err := r.purgeBatch(ctx, safe)
		if err != nil {
			return err
		}
		t.add(s)
		report(len(batch))
		if len(keys) == 0 {
			return nil
		}
		select {
		case freed <- keys:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	for e := range lane {
		batch = append(batch, e)
		if len(batch) == cap(batch) {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return flush()
}

// refuseUnsafe reports and counts the entries whose storage key the store
// refuses, and returns the others. Rule 7: a refused row stays, and so does
// everything on disk.
func (r *Reconciler) refuseUnsafe(ctx context.Context, batch []index.Entry, t *tally) ([]index.Entry, error) {
	keys := make([]string, len(batch))
	for i, e := range batch {
		keys[i] = e.Key
	}
	errs := r.store.Check(ctx, keys)
	if err := ctx.Err(); err != nil {
		return nil, err // the keys were not judged, only interrupted
	}
	safe := make([]index.Entry, 0, len(batch))
	for i, e := range batch {
		if errs[i] == nil {
			safe = append(safe, e)
			continue
		}
		r.log.ErrorContext(ctx, "[CLEANUP] Failed to delete attachment: storage key refused",
			"id", e.ID, "storage_key", e.Key, "error", errs[i])
		t.add(Summary{Failed: 1})
	}
	return safe, nil
}

// purgedRow is a row the purge statement deleted.
type purgedRow struct {
	ID, Key, Name string
	Freed         bool // its key went to the outbox: no other row uses it
}

// purgeBatch deletes a batch and returns its counts and the keys whose files
// are now to be removed. The index is left alone: it is a hint that the
// next rescan rebuilds, and an entry of a row that is gone costs one skip.
func (r *Reconciler) purgeBatch(ctx context.Context, batch []index.Entry) (Summary, []string, error) {
	if len(batch) == 0 {
		return Summary{}, nil, nil
	}
	rows, failed, err := r.deleteRows(ctx, batch)
	if err != nil {
		return Summary{}, nil, err
	}
	s := Summary{Purged: len(rows), Failed: failed, Skipped: len(batch) - len(rows) - failed}
	var keys []string
	for _, row := range rows {
		r.log.InfoContext(ctx, "[CLEANUP] Hard-deleted attachment",
			"id", row.ID, "storage_key", row.Key, "original_filename", row.Name)
		if row.Freed {
			keys = append(keys, row.Key)
		} else {
			s.FilesKept++
		}
	}
	return s, keys, nil
}

// deleteRows runs the purge statement. When the database refuses a batch
// because of some of its rows (a foreign key, a lock timeout) the batch is
// split until the refused rows are alone; they are reported and counted as
// failed, and the rest goes ahead. Any other error (a lost connection, a
// read-only server, a missing permission) would refuse every row alike, so
// it ends the purge instead.
func (r *Reconciler) deleteRows(ctx context.Context, batch []index.Entry) ([]purgedRow, int, error) {
	ids := make([]string, len(batch))
	keys := make([]string, len(batch))
	for i, e := range batch {
		ids[i], keys[i] = e.ID, e.Key
	}
	rows, err := r.db.Query(ctx, r.sql.purge, ids, keys, r.retentionMicros())
	var purged []purgedRow
	if err == nil {
		purged, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (purgedRow, error) {
			var p purgedRow
			err := row.Scan(&p.ID, &p.Key, &p.Name, &p.Freed)
			return p, err
		})
	}
	if err == nil {
		return purged, 0, nil
	}
	if !rowRefused(err) || ctx.Err() != nil {
		return nil, 0, fmt.Errorf("purge batch of %d rows: %w", len(batch), err)
	}
	if len(batch) == 1 {
		r.log.ErrorContext(ctx, "[CLEANUP] Failed to delete attachment",
			"id", batch[0].ID, "storage_key", batch[0].Key, "error", err)
		return nil, 1, nil
	}
	mid := len(batch) / 2
	left, lf, err := r.deleteRows(ctx, batch[:mid])
	if err != nil {
		return nil, 0, err
	}
	right, rf, err := r.deleteRows(ctx, batch[mid:])
	if err != nil {
		return nil, 0, err
	}
	return append(left, right...), lf + rf, nil
}

// rowRefused tells whether err is the database refusing the rows of a
// statement rather than the statement itself: an integrity violation, a lock
// or statement timeout, a deadlock or serialization failure, or an error a
// trigger raised.
func rowRefused(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	switch pgErr.Code {
	case "55P03", "40P01", "40001", "57014", "P0001":
		return true
	}
	return strings.HasPrefix(pgErr.Code, "23") // integrity constraint violation
}
