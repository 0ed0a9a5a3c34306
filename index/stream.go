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
		if err := x.healedSinceReset(); err != nil {
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
	x.signal(time.Time{}, true) // the loads are complete: walks start over
	return nil
}

// Apply writes changes and the checkpoint they bring the index to in one
// transaction, so the checkpoint never runs ahead of the entries. Applying
// a change twice leaves the index as applying it once. The checkpoint only
// moves forward. An index that no rescan has filled since it was emptied
// refuses changes with ErrNotFilled: after a heal on another goroutine, the
// stream learns so here, and rescans.
func (x *Index) Apply(changes []Change, checkpoint uint64) error {
	var earliest time.Time
	err := x.update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if meta.Get(keyOrigin) == nil {
			return ErrNotFilled
		}
		ents, due := tx.Bucket(bucketEntries), tx.Bucket(bucketDue)
		for _, c := range changes {
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
				if earliest.IsZero() || c.Entry.DeletedAt.Before(earliest) {
					earliest = c.Entry.DeletedAt
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
	if !earliest.IsZero() {
		x.signal(earliest, false)
	}
	return nil
}

// Updates is signalled after entries were added or reloaded; then
// TakeEarliest tells from where a walk through due order must look again.
func (x *Index) Updates() <-chan struct{} { return x.updates }

// TakeEarliest returns the earliest deleted_at written since the last call,
// or restart when entries were reloaded by a rescan and a walk must start
// over.
func (x *Index) TakeEarliest() (earliest time.Time, restart bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	earliest, restart = x.earliest, x.restart
	x.earliest, x.restart = time.Time{}, false
	return earliest, restart
}

func (x *Index) signal(earliest time.Time, restart bool) {
	x.mu.Lock()
	if restart {
		x.restart = true
	}
	if !earliest.IsZero() && (x.earliest.IsZero() || earliest.Before(x.earliest)) {
		x.earliest = earliest
	}
	x.mu.Unlock()
	select {
	case x.updates <- struct{}{}:
	default:
	}
}

// After is the position just past every entry deleted at or before t.
func After(t time.Time) Position {
	return encodeTime(t.Add(time.Nanosecond))
}

// Next returns the deleted_at of the first entry at or after from, in due
// order; ok is false when there is none.
func (x *Index) Next(from Position) (deletedAt time.Time, ok bool, err error) {
	err = x.view(func(tx *bolt.Tx) error {
		k, _ := tx.Bucket(bucketDue).Cursor().Seek(from)
		if k != nil {
			deletedAt, ok = decodeTime(k[:8]), true
		}
		return nil
	})
	if err != nil {
		return time.Time{}, false, fmt.Errorf("read next due entry: %w", err)
	}
	return deletedAt, ok, nil
}
