package index

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Op is what a change does to the index.
type Op uint8

const (
	// Upsert records a soft-deleted row, moving it when its deleted_at
	// changed (a re-deletion).
	Upsert Op = iota + 1
	// Remove forgets a row: restored or deleted.
	Remove
)

// Change is one change from the replication stream.
type Change struct {
	Op Op
	// Table is the table the row belongs to, as Table names it ("" is the
	// index's own, unnamed table).
	Table string
	Entry Entry // Remove needs only the ID
	// KeyUnchanged means the stream did not send the storage key (an
	// unchanged TOAST value): the stored one stays. A row the index does
	// not hold yet then gets an empty key, which the purge reads from the
	// database.
	KeyUnchanged bool
}

// State is where the index stands against the stream.
type State struct {
	// Checkpoint is the LSN up to which every change is in the index; 0
	// when the stream never recorded one.
	Checkpoint uint64
	// Origin names the database, slot and table the entries come from;
	// empty when no rescan has completed.
	Origin      string
	RescannedAt time.Time
	SweptAt     time.Time // when the timer last finished a sweep; zero: never
}

// State reads the stream state.
func (x *Index) State() (State, error) {
	var st State
	err := x.view(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if v := meta.Get(keyCheckpoint); v != nil {
			st.Checkpoint = binary.BigEndian.Uint64(v)
		}
		st.Origin = string(meta.Get(keyOrigin))
		if v := meta.Get(keyRescanned); v != nil {
			st.RescannedAt = decodeTime(v)
		}
		if v := meta.Get(keySwept); v != nil {
			st.SweptAt = decodeTime(v)
		}
		return nil
	})
	if err != nil {
		return st, fmt.Errorf("read index state: %w", err)
	}
	return st, nil
}

// Rescanned marks a rescan complete: the entries now come from origin and
// are complete up to checkpoint. It fails with ErrCorrupt when the index
// was found corrupt, and replaced, since the rescan's Reset.
func (x *Index) Rescanned(origin string, checkpoint uint64, at time.Time) error {
	err := x.update(func(tx *bolt.Tx) error {
		if err := x.healedSinceReset(nil); err != nil {
			return err
		}
		meta := tx.Bucket(bucketMeta)
		if err := meta.Put(keyOrigin, []byte(origin)); err != nil {
			return err
		}
		if err := meta.Put(keyRescanned, encodeTime(at)); err != nil {
			return err
		}
		return meta.Put(keyCheckpoint, binary.BigEndian.AppendUint64(nil, checkpoint))
	})
	if err != nil {
		return fmt.Errorf("record rescan in index: %w", err)
	}
	x.restartAll() // the loads are complete: walks start over
	return nil
}

// Apply writes changes and the checkpoint they bring the index to in one
// transaction, so the checkpoint never runs ahead of the entries. Each
// change goes to its table's part of the index. Applying a change twice
// leaves the index as applying it once. The checkpoint only moves forward.
// An index that no rescan has filled since it was emptied refuses changes
// with ErrNotFilled: after a heal on another goroutine, the stream learns
// so here, and rescans.
func (x *Index) Apply(changes []Change, checkpoint uint64) error {
	earliest := map[string]time.Time{}
	err := x.update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if meta.Get(keyOrigin) == nil {
			return ErrNotFilled
		}
		tables := map[string]tableBuckets{}
		for _, c := range changes {
			tb, ok := tables[c.Table]
			if !ok {
				var err error
				if tb, err = createTable(tx, c.Table); err != nil {
					return err
				}
				tables[c.Table] = tb
			}
			ents, due := tb.entries, tb.due
			id := []byte(c.Entry.ID)
			switch c.Op {
			case Remove:
				if old := ents.Get(id); old != nil {
					if err := due.Delete(dueKey(old[:8], id)); err != nil {
						return err
					}
					if err := ents.Delete(id); err != nil {
						return err
					}
				}
			case Upsert:
				stamp := encodeTime(c.Entry.DeletedAt)
				key := c.Entry.Key
				if old := ents.Get(id); old != nil {
					if c.KeyUnchanged {
						key = string(old[8:])
					}
					if !bytes.Equal(old[:8], stamp) {
						if err := due.Delete(dueKey(old[:8], id)); err != nil {
							return err
						}
					}
				}
				if err := ents.Put(id, append(stamp, key...)); err != nil {
					return err
				}
				if err := due.Put(dueKey(stamp, id), nil); err != nil {
					return err
				}
				if at, ok := earliest[c.Table]; !ok || c.Entry.DeletedAt.Before(at) {
					earliest[c.Table] = c.Entry.DeletedAt
				}
			default:
				return fmt.Errorf("unknown index change %d", c.Op)
			}
		}
		if v := meta.Get(keyCheckpoint); v != nil && binary.BigEndian.Uint64(v) >= checkpoint {
			return nil
		}
		return meta.Put(keyCheckpoint, binary.BigEndian.AppendUint64(nil, checkpoint))
	})
	if err != nil {
		return fmt.Errorf("apply %d changes to index: %w", len(changes), err)
	}
	for table, at := range earliest {
		x.signal(table, at)
	}
	return nil
}

// Updates is signalled after entries were added or reloaded; then
// TakeEarliest tells from where a walk through due order must look again.
func (x *Index) Updates() <-chan struct{} { return x.updates }

// TakeEarliest returns the earliest deleted_at written to any table since
// the last call, or restart when entries were reloaded or removed
// wholesale and a walk must start over.
func (x *Index) TakeEarliest() (earliest time.Time, restart bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.anyTable.take()
}

// wake is what a walk through due order must look at again: from the
// earliest deleted_at written, or from the start.
type wake struct {
	earliest time.Time
	restart  bool
}

func (w *wake) note(earliest time.Time, restart bool) {
	if restart {
		w.restart = true
	}
	if !earliest.IsZero() && (w.earliest.IsZero() || earliest.Before(w.earliest)) {
		w.earliest = earliest
	}
}

func (w *wake) take() (time.Time, bool) {
	earliest, restart := w.earliest, w.restart
	*w = wake{}
	return earliest, restart
}

// signal notes that table got an entry deleted at earliest.
func (x *Index) signal(table string, earliest time.Time) {
	x.mu.Lock()
	x.anyTable.note(earliest, false)
	x.tableWake(table).note(earliest, false)
	x.mu.Unlock()
	x.notify()
}

// restartTable notes that a table's entries were reloaded or removed.
func (x *Index) restartTable(table string) {
	x.mu.Lock()
	x.anyTable.note(time.Time{}, true)
	x.tableWake(table).note(time.Time{}, true)
	x.mu.Unlock()
	x.notify()
}

// restartAll notes that every table's entries were reloaded or removed.
func (x *Index) restartAll() {
	x.mu.Lock()
	x.anyTable.note(time.Time{}, true)
	for _, w := range x.tables {
		w.note(time.Time{}, true)
	}
	x.mu.Unlock()
	x.notify()
}

// tableWake is table's wake; a table not walked yet starts from the start.
// The caller holds mu.
func (x *Index) tableWake(table string) *wake {
	w := x.tables[table]
	if w == nil {
		if x.tables == nil {
			x.tables = map[string]*wake{}
		}
		w = &wake{restart: true}
		x.tables[table] = w
	}
	return w
}

func (x *Index) notify() {
	select {
	case x.updates <- struct{}{}:
	default:
	}
}

// After is the position just past every entry deleted at or before t.
func After(t time.Time) Position {
	return encodeTime(t.Add(time.Nanosecond))
}

// Next returns the deleted_at of the first entry of any table at or after
// from, in due order; ok is false when there is none.
func (x *Index) Next(from Position) (deletedAt time.Time, ok bool, err error) {
	return x.next(nil, from)
}
