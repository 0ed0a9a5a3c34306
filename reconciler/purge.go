package reconciler

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sync/errgroup"

	"github.com/reconcile/reconcile/index"
)

// Summary counts what a purge did.
type Summary struct {
	Purged         int // rows hard-deleted
	NoFile         int // of those, rows that named no file (an empty or NULL key)
	Failed         int // rows left in place: a refused storage key or a database error
	Skipped        int // rows the database no longer holds as due: restored, re-deleted or gone
	Left           int // due rows left for later by a deletion budget
	FilesRemoved   int
	FilesMissing   int // files already gone: their rows were purged, nothing was removed
	FilesKept      int // files left because another row still uses them
	FilesRewritten int // files left because they were written again after their removal was queued
	FilesPending   int // files whose removal failed; they wait in the outbox
	DerivedRemoved int // derived files (thumbnails) removed with their source
	DerivedKept    int // derived files left because a remaining row maps to them
}

// Add adds o's counts to s.
func (s *Summary) Add(o Summary) {
	s.Purged += o.Purged
	s.NoFile += o.NoFile
	s.Failed += o.Failed
	s.Skipped += o.Skipped
	s.Left += o.Left
	s.FilesRemoved += o.FilesRemoved
	s.FilesMissing += o.FilesMissing
	s.FilesKept += o.FilesKept
	s.FilesRewritten += o.FilesRewritten
	s.FilesPending += o.FilesPending
	s.DerivedRemoved += o.DerivedRemoved
	s.DerivedKept += o.DerivedKept
}

// tally is a Summary that concurrent stages add to, and the rows the
// database refused, which the service tries again.
type tally struct {
	mu      sync.Mutex
	s       Summary
	refused []index.Entry
}

func (t *tally) add(o Summary) Summary {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.s.Add(o)
	return t.s
}

func (t *tally) refuse(e index.Entry) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.refused = append(t.refused, e)
}

// Purge purges every index entry deleted at or before cutoff, at most
// Config.MaxDeletes of them when it is set (Summary.Left counts the due
// entries left). Rows go in batches of BatchSize, Concurrency
// batches at a time; files are removed while later batches run. progress,
// if set, is called after each batch with the number of entries handled so
// far.
//
// Entries are spread over the batch workers by storage key, so rows that
// share a file are always deleted one after the other, each statement seeing
// the other's commit: two workers deleting them at once could each find the
// other's row still there and both leave the file behind, tracked by nothing.
func (r *Reconciler) Purge(ctx context.Context, cutoff time.Time, progress func(handled int)) (Summary, error) {
	return r.PurgeAtMost(ctx, cutoff, r.cfg.MaxDeletes, progress)
}

// PurgeAtMost is Purge with a deletion budget of its own: at most limit
// rows when limit is positive.
func (r *Reconciler) PurgeAtMost(ctx context.Context, cutoff time.Time, limit int, progress func(handled int)) (Summary, error) {
	walk := dueWalk{from: nil, cutoff: cutoff, limit: limit}
	s, _, err := r.purge(ctx, walk.source(r), progress)
	s.Left = walk.left
	return s, err
}

// dueWalk deals the due entries of the index, from a position up to a
// cutoff, at most limit of them when limit is positive. Once done, next is
// where a walk cut short by its limit stopped, and left how many due
// entries it left.
type dueWalk struct {
	from   index.Position
	cutoff time.Time
	limit  int
	next   index.Position
	left   int
}

// source reads due entries in pages and deals them.
func (w *dueWalk) source(r *Reconciler) source {
	return func(ctx context.Context, deal func(index.Entry) error) error {
		page := r.cfg.BatchSize * r.cfg.Concurrency
		from, dealt := w.from, 0
		for {
			n := page
			if w.limit > 0 {
				n = min(page, w.limit-dealt)
			}
			if n == 0 {
				w.next = from
				return w.countLeft(r, from, page)
			}
			entries, next, err := r.index.Due(from, w.cutoff, n)
			if err != nil {
				return err
			}
			if err := r.fillKeys(ctx, entries); err != nil {
				return err
			}
			for _, e := range entries {
				if err := deal(e); err != nil {
					return err
				}
			}
			dealt += len(entries)
			if next == nil {
				return nil
			}
			from = next
		}
	}
}

// countLeft counts the due entries from position from on.
func (w *dueWalk) countLeft(r *Reconciler, from index.Position, page int) error {
	for from != nil {
		entries, next, err := r.index.Due(from, w.cutoff, page)
		if err != nil {
			return err
		}
		w.left += len(entries)
		from = next
	}
	return nil
}

// source deals the entries to purge; deal fails once the purge is stopping.
type source func(ctx context.Context, deal func(index.Entry) error) error

// entries is the source of a given list of entries.
func entries(list []index.Entry) source {
	return func(_ context.Context, deal func(index.Entry) error) error {
		for _, e := range list {
			if err := deal(e); err != nil {
				return err
			}
		}
		return nil
	}
}

// purge purges the entries a source deals, and returns what it did and the
// entries the database refused.
func (r *Reconciler) purge(ctx context.Context, src source, progress func(handled int)) (Summary, []index.Entry, error) {
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
	// Rows of several key columns may share a file through any of them,
	// which no one lane's key can tell: their batches go one after the
	// other, each seeing the last one's commit.
	concurrency := r.cfg.Concurrency
	if len(r.table.keyColumns()) > 1 {
		concurrency = 1
	}
	lanes := make([]chan index.Entry, concurrency)
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
		probed := false
		return src(ctx, func(e index.Entry) error {
			// Probed once there is something to purge: a table with
			// nothing due does not fail for a storage that holds none of
			// its files.
			if !probed {
				if err := r.ensureFiles(ctx); err != nil {
					return err
				}
				probed = true
			}
			select {
			case lanes[laneOf(e.Key, len(lanes))] <- e:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
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
	var removals <-chan []string = freed
	if gr, ok := r.store.(grouper); ok && gr.RemovalGroup() > r.cfg.BatchSize {
		removals = groupKeys(ctx, freed, gr.RemovalGroup(), groupLinger)
	}

	for range r.cfg.RemoveConcurrency {
		g.Go(func() error {
			for keys := range removals {
				s, err := r.removeFiles(ctx, keys)
				t.add(s)
				if err != nil {
					return err
				}
			}
			return nil
		})
	}

	err := g.Wait()
	r.endIfLost(err)
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.s, t.refused, err
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

// grouper is a store whose removals cost per call rather than per key (S3:
// a listing and a bulk delete): RemovalGroup is how many keys it takes at
// once.
type grouper interface {
	RemovalGroup() int
}

// groupLinger is how long a group of keys waits for more once the batches
// stop coming: a backlog's batches come faster than that, and a lone due
// row is removed that much later.
const groupLinger = 50 * time.Millisecond

// groupKeys passes on the batches' freed keys in groups of up to size, a
// group leaving when full, when no batch came for linger, or at the end.
// Once ctx ends it drops what it holds (the keys stay in the outbox) and
// drains freed, so that the batches never wait on it.
func groupKeys(ctx context.Context, freed <-chan []string, size int, linger time.Duration) <-chan []string {
	out := make(chan []string)
	go func() {
		defer close(out)
		var group []string
		timer := time.NewTimer(linger)
		defer timer.Stop()
		flush := func() {
			if len(group) == 0 {
				return
			}
			select {
			case out <- group:
			case <-ctx.Done():
			}
			group = nil
		}
		for {
			select {
			case keys, ok := <-freed:
				if !ok {
					flush()
					return
				}
				if ctx.Err() != nil {
					continue
				}
				group = append(group, keys...)
				if len(group) >= size {
					flush()
				}
				timer.Reset(linger)
			case <-timer.C:
				flush()
			}
		}
	}()
	return out
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
		s, keys, err := r.purgeBatch(ctx, safe, t)
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
// everything on disk. A row without a key has no file to check.
func (r *Reconciler) refuseUnsafe(ctx context.Context, batch []index.Entry, t *tally) ([]index.Entry, error) {
	var keys []string
	for _, e := range batch {
		keys = append(keys, r.table.splitKeys(e.Key)...)
	}
	var errs []error
	if len(keys) > 0 {
		errs = r.store.Check(ctx, keys)
		if err := ctx.Err(); err != nil {
			return nil, err // the keys were not judged, only interrupted
		}
	}
	safe := make([]index.Entry, 0, len(batch))
	i := 0
	for _, e := range batch {
		var err error
		for range r.table.splitKeys(e.Key) {
			err = cmp.Or(err, errs[i])
			i++
		}
		if err == nil {
			safe = append(safe, e)
			continue
		}
		r.log.ErrorContext(ctx, "[CLEANUP] Failed to delete attachment: storage key refused",
			"id", e.ID, "storage_key", e.Key, "error", err)
		t.add(Summary{Failed: 1})
		r.cfg.Observer.PurgeErrors(ErrorRow, 1)
	}
	return safe, nil
}

// purgedRow is a row the purge statement deleted.
type purgedRow struct {
	ID, Name string
	Keys     []string // its files
	Freed    []bool   // for each key: it went to the outbox, no other row uses it
}

// purgeBatch deletes a batch and returns its counts and the keys whose files
// are now to be removed. The index is left alone: it is a hint that the
// next rescan rebuilds, and an entry of a row that is gone costs one skip.
func (r *Reconciler) purgeBatch(ctx context.Context, batch []index.Entry, t *tally) (Summary, []string, error) {
	if len(batch) == 0 {
		return Summary{}, nil, nil
	}
	rows, failed, err := r.deleteRows(ctx, batch, t)
	if err != nil {
		return Summary{}, nil, err
	}
	s := Summary{Purged: len(rows), Failed: failed, Skipped: len(batch) - len(rows) - failed}
	defer func() {
		r.cfg.Observer.Purged(s.Purged)
		r.cfg.Observer.Files(0, 0, s.FilesKept)
		r.cfg.Observer.PurgeErrors(ErrorRow, failed)
	}()
	var keys []string
	for _, row := range rows {
		if len(row.Keys) == 0 {
			s.NoFile++
			r.log.InfoContext(ctx, "[CLEANUP] Hard-deleted attachment (it had no file)",
				"id", row.ID, "storage_key", "", "original_filename", row.Name)
			continue
		}
		for i, key := range row.Keys {
			if row.Freed[i] {
				keys = append(keys, key)
			} else {
				s.FilesKept++
			}
		}
		r.log.InfoContext(ctx, "[CLEANUP] Hard-deleted attachment",
			"id", row.ID, "storage_key", strings.Join(row.Keys, ", "), "original_filename", row.Name)
	}
	return s, keys, nil
}

// deleteRows runs the purge statement. When the database refuses a batch
// because of some of its rows (a foreign key, a lock timeout, a trigger's
// error, a corrupt page) the batch is split until the refused rows are
// alone; they are reported, counted as failed and handed to t for a later
// try, and the rest goes ahead. An error that any statement would meet (a
// lost connection, a read-only server, a missing permission) refuses every
// row alike, so it ends the purge instead; so does the fence, when the
// advisory lock is no longer this process's (nothing was deleted).
func (r *Reconciler) deleteRows(ctx context.Context, batch []index.Entry, t *tally) ([]purgedRow, int, error) {
	ids := make([]string, len(batch))
	keys := make([]string, len(batch))
	for i, e := range batch {
		ids[i], keys[i] = e.ID, e.Key
	}
	rows, err := r.db.Query(ctx, r.sql.purge, ids, keys, r.retentionMicros(), r.holderPID())
	var (
		purged        []purgedRow
		byID          = map[string]int{}
		id, key, name string
		held, freed   bool
		shut          bool // the fence's own row: nothing was deleted
	)
	if err == nil {
		// A row comes once per file, or once with no key.
		_, err = pgx.ForEachRow(rows, []any{&held, &id, &key, &name, &freed}, func() error {
			shut = shut || !held
			if !held {
				return nil
			}
			i, ok := byID[id]
			if !ok {
				i = len(purged)
				byID[id] = i
				purged = append(purged, purgedRow{ID: id, Name: name})
			}
			if key != "" {
				purged[i].Keys = append(purged[i].Keys, key)
				purged[i].Freed = append(purged[i].Freed, freed)
			}
			return nil
		})
	}
	if err == nil && shut {
		return nil, 0, fmt.Errorf("purge batch of %d rows: %w", len(batch), r.fenceShut())
	}
	if err == nil {
		return purged, 0, nil
	}
	if ctx.Err() != nil || statementFailed(err) {
		return nil, 0, fmt.Errorf("purge batch of %d rows: %w", len(batch), err)
	}
	if len(batch) == 1 {
		r.log.ErrorContext(ctx, "[CLEANUP] Failed to delete attachment",
			"id", batch[0].ID, "storage_key", batch[0].Key, "error", err)
		t.refuse(batch[0])
		return nil, 1, nil
	}
	mid := len(batch) / 2
	left, lf, err := r.deleteRows(ctx, batch[:mid], t)
	if err != nil {
		return nil, 0, err
	}
	right, rf, err := r.deleteRows(ctx, batch[mid:], t)
	if err != nil {
		return nil, 0, err
	}
	return append(left, right...), lf + rf, nil
}

// statementFailed tells an error that any statement would meet from one
// that some rows raise. Not an error of the server (the connection is
// gone), or of a class that concerns the session or the server: a
// connection exception (08), an invalid transaction state such as a
// read-only server (25), authorization (28, 42501), syntax or a missing
// object (42, 3D, 3F), a feature not supported (0A), insufficient
// resources (53), a program limit (54), or an operator's intervention
// (57, but for 57014: a statement timeout, which a locked row can cause).
// Everything else, a trigger's own SQLSTATE, a data exception or a corrupt
// page (XX001) included, is taken for the rows': the batch is split to
// find them.
func statementFailed(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || len(pgErr.Code) != 5 {
		return true
	}
	if pgErr.Code == pgerrcode.QueryCanceled {
		return false
	}
	switch pgErr.Code[:2] {
	case "08", "25", "28", "42", "3D", "3F", "0A", "53", "54", "57":
		return true
	}
	return false
}
