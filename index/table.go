package index

import (
	"bytes"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Each table has a bucket of its own under bucketTables, so that a table
// added to the configuration is rescanned alone and one removed from it
// is dropped alone, while the stream's position stays.
var (
	bucketEntries = []byte("entries") // id -> deleted_at (8 bytes) + storage key
	bucketDue     = []byte("due")     // deleted_at (8 bytes) + id -> nothing
	// keyFilled holds the fingerprint of the table a rescan filled the
	// bucket from: missing, or another, and the table is rescanned.
	keyFilled = []byte("filled")
)

// Table is the part of the index that holds one table's soft-deleted rows.
// Its methods may be called from several goroutines at once.
type Table struct {
	x    *Index
	name string
}

// Table returns the part of the index that holds the table name, as the
// stream's changes name it (index.Change.Table). Index's own LoadEntries,
// LoadDue and Filled work on the unnamed table ""; its Due, Next and
// Stats read every table.
func (x *Index) Table(name string) *Table { return &Table{x: x, name: name} }

// tableKey names a table's bucket: bbolt takes no empty name.
func tableKey(name string) []byte { return append([]byte{'t'}, name...) }

type tableBuckets struct{ table, entries, due *bolt.Bucket }

// createTable returns the buckets of the table name, creating them when
// missing.
func createTable(tx *bolt.Tx, name string) (tableBuckets, error) {
	tb, err := tx.Bucket(bucketTables).CreateBucketIfNotExists(tableKey(name))
	if err != nil {
		return tableBuckets{}, err
	}
	ents, err := tb.CreateBucketIfNotExists(bucketEntries)
	if err != nil {
		return tableBuckets{}, err
	}
	due, err := tb.CreateBucketIfNotExists(bucketDue)
	if err != nil {
		return tableBuckets{}, err
	}
	return tableBuckets{tb, ents, due}, nil
}

// readTables returns the buckets of the table *name, or of every table
// when name is nil, in name order; a table without buckets has no rows.
func readTables(tx *bolt.Tx, name *string) []tableBuckets {
	var out []tableBuckets
	add := func(tb *bolt.Bucket) {
		if tb == nil || tb.Bucket(bucketEntries) == nil || tb.Bucket(bucketDue) == nil {
			return
		}
		out = append(out, tableBuckets{tb, tb.Bucket(bucketEntries), tb.Bucket(bucketDue)})
	}
	all := tx.Bucket(bucketTables)
	if name != nil {
		add(all.Bucket(tableKey(*name)))
		return out
	}
	eachTable(all, func(_ []byte, tb *bolt.Bucket) { add(tb) })
	return out
}

// eachTable calls fn with each table's name and bucket. The list holds
// buckets only: a value in it is garbage read as a page, which this panic
// hands to the heal as bbolt's own would.
func eachTable(all *bolt.Bucket, fn func(key []byte, tb *bolt.Bucket)) {
	c := all.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if v != nil {
			panic(errors.New("the index's list of tables holds a value: its pages are garbage"))
		}
		fn(k, all.Bucket(k))
	}
}

// Reset empties the table's part of the index ahead of its rescan, and
// forgets that a rescan filled it; the other tables and the stream's
// position stay. An index found corrupt is replaced by an empty one: Reset
// has done its work.
func (t *Table) Reset() error {
	reset := func(tx *bolt.Tx) error {
		err := tx.Bucket(bucketTables).DeleteBucket(tableKey(t.name))
		if err != nil && !errors.Is(err, berrors.ErrBucketNotFound) {
			return err
		}
		_, err = createTable(tx, t.name)
		return err
	}
	gen, err := t.x.run(true, reset)
	if errors.Is(err, ErrCorrupt) {
		gen, err = t.x.run(true, reset)
	}
	if err != nil {
		return fmt.Errorf("reset index of %s: %w", t.name, err)
	}
	t.x.tableGens.Store(t.name, gen)
	t.x.restartTable(t.name)
	return nil
}

// LoadEntries and LoadDue fill a table that Reset emptied, one bucket at a
// time, each from rows in that bucket's key order: bbolt then only appends
// to the last page, so a load costs the same per row however large the
// index already is. Rows out of order are still stored right, only slower.
//
// LoadEntries takes rows in id byte order.
func (t *Table) LoadEntries(byID []Entry) error {
	return t.load(bucketEntries, byID, func(e Entry) ([]byte, []byte) {
		return []byte(e.ID), append(encodeTime(e.DeletedAt), e.Key...)
	})
}

// LoadDue takes rows in due order: deleted_at, then id byte order.
func (t *Table) LoadDue(byDue []Entry) error {
	return t.load(bucketDue, byDue, func(e Entry) ([]byte, []byte) {
		return dueKey(encodeTime(e.DeletedAt), []byte(e.ID)), nil
	})
}

func (t *Table) load(bucket []byte, entries []Entry, kv func(Entry) ([]byte, []byte)) error {
	err := t.fill(func(tb tableBuckets) error {
		b := tb.table.Bucket(bucket)
		b.FillPercent = 1 // appending: full pages, no half-empty splits
		for _, e := range entries {
			k, v := kv(e)
			if err := b.Put(k, v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("load %d index entries of %s into %s: %w", len(entries), t.name, bucket, err)
	}
	return nil
}

// fill runs fn on the table's buckets in a write transaction of a rescan:
// refused when a heal emptied the index since the rescan's Reset.
func (t *Table) fill(fn func(tableBuckets) error) error {
	return t.x.update(func(tx *bolt.Tx) error {
		if err := t.x.healedSinceReset(&t.name); err != nil {
			return err
		}
		tb, err := createTable(tx, t.name)
		if err != nil {
			return err
		}
		return fn(tb)
	})
}

// Filled marks the table's rescan complete: its entries come from the
// table that fingerprint describes. It fails with ErrCorrupt when the
// index was found corrupt, and replaced, since the rescan's Reset.
func (t *Table) Filled(fingerprint string) error {
	err := t.fill(func(tb tableBuckets) error {
		return tb.table.Put(keyFilled, []byte(fingerprint))
	})
	if err != nil {
		return fmt.Errorf("record rescan of %s in index: %w", t.name, err)
	}
	t.x.restartTable(t.name) // the loads are complete: walks start over
	return nil
}

// Filled marks the unnamed table's rescan complete: see Table.Filled.
func (x *Index) Filled(fingerprint string) error { return x.Table("").Filled(fingerprint) }

// Tables returns the fingerprint each table was filled from, by table
// name; "" for a table whose rescan has not completed.
func (x *Index) Tables() (map[string]string, error) {
	out := map[string]string{}
	err := x.view(func(tx *bolt.Tx) error {
		eachTable(tx.Bucket(bucketTables), func(k []byte, tb *bolt.Bucket) {
			out[string(k[1:])] = string(tb.Get(keyFilled))
		})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read index tables: %w", err)
	}
	return out, nil
}

// DropTable removes a table from the index: its rows are purged no more.
func (x *Index) DropTable(name string) error {
	err := x.update(func(tx *bolt.Tx) error {
		err := tx.Bucket(bucketTables).DeleteBucket(tableKey(name))
		if errors.Is(err, berrors.ErrBucketNotFound) {
			return nil
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("drop %s from index: %w", name, err)
	}
	x.restartTable(name)
	return nil
}

// Due returns up to limit of the table's entries deleted at or before
// cutoff, in due order, starting at from, and the position to continue
// from.
func (t *Table) Due(from Position, cutoff time.Time, limit int) ([]Entry, Position, error) {
	return t.x.due(&t.name, from, cutoff, limit)
}

// due walks the due order of the table *table, or of every table at once
// when table is nil. Two tables may hold the same position (the same id
// deleted at the same time): a page that ends between them returns the
// second again, which costs a recheck in the database, nothing more.
func (x *Index) due(table *string, from Position, cutoff time.Time, limit int) ([]Entry, Position, error) {
	var (
		out  []Entry
		next Position
	)
	end := encodeTime(cutoff)
	err := x.view(func(tx *bolt.Tx) error {
		type walk struct {
			c    *bolt.Cursor
			ents *bolt.Bucket
			k    []byte
		}
		within := func(k []byte) []byte {
			if k == nil || bytes.Compare(k[:8], end) > 0 {
				return nil
			}
			return k
		}
		var walks []*walk
		for _, tb := range readTables(tx, table) {
			c := tb.due.Cursor()
			k, _ := c.Seek(from)
			walks = append(walks, &walk{c, tb.entries, within(k)})
		}
		for {
			var first *walk
			for _, w := range walks {
				if w.k != nil && (first == nil || bytes.Compare(w.k, first.k) < 0) {
					first = w
				}
			}
			if first == nil {
				return nil
			}
			if len(out) == limit {
				next = bytes.Clone(first.k)
				return nil
			}
			id := first.k[8:]
			// Missing while a rescan fills the buckets one after the other.
			if v := first.ents.Get(id); v != nil {
				out = append(out, Entry{ID: string(id), DeletedAt: decodeTime(first.k[:8]), Key: string(v[8:])})
			}
			k, _ := first.c.Next()
			first.k = within(k)
		}
	})
	if err != nil {
		return nil, nil, fmt.Errorf("read due entries: %w", err)
	}
	return out, next, nil
}

// Next returns the deleted_at of the table's first entry at or after from,
// in due order; ok is false when there is none.
func (t *Table) Next(from Position) (time.Time, bool, error) {
	return t.x.next(&t.name, from)
}

func (x *Index) next(table *string, from Position) (deletedAt time.Time, ok bool, err error) {
	err = x.view(func(tx *bolt.Tx) error {
		for _, tb := range readTables(tx, table) {
			k, _ := tb.due.Cursor().Seek(from)
			if k != nil && (!ok || decodeTime(k[:8]).Before(deletedAt)) {
				deletedAt, ok = decodeTime(k[:8]), true
			}
		}
		return nil
	})
	if err != nil {
		return time.Time{}, false, fmt.Errorf("read next due entry: %w", err)
	}
	return deletedAt, ok, nil
}

// Stats counts the table's entries: see Index.Stats.
func (t *Table) Stats(cutoff, overdueCutoff time.Time) (Stats, error) {
	return t.x.stats(&t.name, cutoff, overdueCutoff)
}

// Updates is signalled after entries were added or reloaded, in any table.
func (t *Table) Updates() <-chan struct{} { return t.x.updates }

// TakeEarliest returns the earliest deleted_at written to the table since
// the last call, or restart when its entries were reloaded or removed
// wholesale and a walk must start over.
func (t *Table) TakeEarliest() (time.Time, bool) {
	t.x.mu.Lock()
	defer t.x.mu.Unlock()
	return t.x.tableWake(t.name).take()
}

// Swept records when the timer last finished a sweep: see Index.Swept.
func (t *Table) Swept(at time.Time) error { return t.x.Swept(at) }
