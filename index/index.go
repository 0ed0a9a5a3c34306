// Package index keeps the local bbolt store of soft-deleted attachments,
// ordered by the time they were deleted, so the purge finds what is due
// without asking the database. It is only a hint: the database decides, and
// the whole index can be rebuilt from it at any time.
package index

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// schemaVersion changes whenever the layout below does; an index of another
// version is emptied, and the next rescan fills it again.
const schemaVersion = 1

var (
	bucketEntries = []byte("entries") // id -> deleted_at (8 bytes) + storage key
	bucketDue     = []byte("due")     // deleted_at (8 bytes) + id -> nothing
	bucketMeta    = []byte("meta")
	keySchema     = []byte("schema")
	// The stream's state: it is cleared with the entries, so an index that
	// a rescan has not finished filling never claims a stream position.
	keyCheckpoint = []byte("checkpoint")   // LSN the entries are complete up to
	keyOrigin     = []byte("origin")       // database, slot and table the entries come from
	keyRescanned  = []byte("rescanned_at") // when the last rescan finished
)

// Entry is one soft-deleted attachment.
type Entry struct {
	ID        string
	DeletedAt time.Time
	Key       string
}

// Index is an open bbolt index.
type Index struct {
	db *bolt.DB
	// Discarded names the file an unreadable index was moved to, if Open
	// had to start afresh.
	Discarded string

	updates  chan struct{} // signalled after a change that may bring a due time forward
	mu       sync.Mutex
	earliest time.Time // the earliest deleted_at written since the last TakeEarliest
	restart  bool      // entries were removed wholesale: walks start over
}

// Open opens or creates the index at path. An index that bbolt cannot read
// is moved aside and replaced by an empty one: nothing in it is worth more
// than a rescan.
func Open(path string) (*Index, error) {
	db, err := openBolt(path)
	var discarded string
	if errors.Is(err, berrors.ErrInvalid) || errors.Is(err, berrors.ErrChecksum) || errors.Is(err, berrors.ErrVersionMismatch) {
		discarded = fmt.Sprintf("%s.corrupt-%d", path, time.Now().Unix())
		if rerr := os.Rename(path, discarded); rerr != nil {
			return nil, fmt.Errorf("move unreadable index aside: %w", rerr)
		}
		db, err = openBolt(path)
	}
	if err != nil {
		return nil, err
	}
	x := &Index{db: db, Discarded: discarded, updates: make(chan struct{}, 1)}
	if err := x.init(); err != nil {
		_ = db.Close()
		return nil, err
	}
	return x, nil
}

func openBolt(path string) (*bolt.DB, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("open index %s: %w", path, ErrLocked)
	}
	if err != nil {
		return nil, fmt.Errorf("open index %s: %w", path, err)
	}
	return db, nil
}

func (x *Index) init() error {
	return x.db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return fmt.Errorf("init index: %w", err)
		}
		if v := meta.Get(keySchema); v == nil || binary.BigEndian.Uint64(v) != schemaVersion {
			if err := resetBuckets(tx); err != nil {
				return fmt.Errorf("init index: %w", err)
			}
			if err := meta.Put(keySchema, binary.BigEndian.AppendUint64(nil, schemaVersion)); err != nil {
				return fmt.Errorf("init index: %w", err)
			}
		}
		return nil
	})
}

// Close closes the file.
func (x *Index) Close() error {
	return x.db.Close()
}

// Reset empties the index, and forgets its stream position, ahead of a
// rescan.
func (x *Index) Reset() error {
	if err := x.db.Update(resetBuckets); err != nil {
		return fmt.Errorf("reset index: %w", err)
	}
	x.signal(time.Time{}, true)
	return nil
}

func resetBuckets(tx *bolt.Tx) error {
	for _, name := range [][]byte{bucketEntries, bucketDue} {
		if err := tx.DeleteBucket(name); err != nil && !errors.Is(err, berrors.ErrBucketNotFound) {
			return err
		}
		if _, err := tx.CreateBucket(name); err != nil {
			return err
		}
	}
	meta := tx.Bucket(bucketMeta)
	for _, k := range [][]byte{keyCheckpoint, keyOrigin, keyRescanned} {
		if err := meta.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// LoadEntries and LoadDue fill an index that Reset emptied, one bucket at a
// time, each from rows in that bucket's key order: bbolt then only appends
// to the last page, so a load costs the same per row however large the
// index already is. Rows out of order are still stored right, only slower.
//
// LoadEntries takes rows in id byte order.
func (x *Index) LoadEntries(byID []Entry) error {
	return x.load(bucketEntries, byID, func(e Entry) ([]byte, []byte) {
		return []byte(e.ID), append(encodeTime(e.DeletedAt), e.Key...)
	})
}

// LoadDue takes rows in due order: deleted_at, then id byte order.
func (x *Index) LoadDue(byDue []Entry) error {
	return x.load(bucketDue, byDue, func(e Entry) ([]byte, []byte) {
		return dueKey(encodeTime(e.DeletedAt), []byte(e.ID)), nil
	})
}

func (x *Index) load(bucket []byte, entries []Entry, kv func(Entry) ([]byte, []byte)) error {
	err := x.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
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
		return fmt.Errorf("load %d index entries into %s: %w", len(entries), bucket, err)
	}
	return nil
}

// Position is where a walk through due order stopped; the zero value is the
// start.
type Position []byte

// Due returns up to limit entries deleted at or before cutoff, in due order,
// starting at from, and the position to continue from. A walk in pages keeps
// memory flat however long the backlog is.
func (x *Index) Due(from Position, cutoff time.Time, limit int) ([]Entry, Position, error) {
	var (
		out  []Entry
		next Position
	)
	end := encodeTime(cutoff)
	err := x.db.View(func(tx *bolt.Tx) error {
		ents := tx.Bucket(bucketEntries)
		c := tx.Bucket(bucketDue).Cursor()
		for k, _ := c.Seek(from); k != nil && bytes.Compare(k[:8], end) <= 0; k, _ = c.Next() {
			if len(out) == limit {
				next = bytes.Clone(k)
				return nil
			}
			id := k[8:]
			v := ents.Get(id)
			if v == nil {
				continue // a rescan is filling the buckets one after the other
			}
			out = append(out, Entry{ID: string(id), DeletedAt: decodeTime(k[:8]), Key: string(v[8:])})
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("read due entries: %w", err)
	}
	return out, next, nil
}

// Check runs bbolt's consistency check.
func (x *Index) Check() error {
	return x.db.View(func(tx *bolt.Tx) error {
		var errs []error
		for err := range tx.Check() {
			errs = append(errs, err)
		}
		return errors.Join(errs...)
	})
}

// encodeTime orders times as bytes: big-endian nanoseconds with the sign bit
// flipped, so times before 1970 sort first too.
func encodeTime(t time.Time) []byte {
	return binary.BigEndian.AppendUint64(make([]byte, 0, 8), uint64(t.UnixNano())^(1<<63))
}

func decodeTime(b []byte) time.Time {
	return time.Unix(0, int64(binary.BigEndian.Uint64(b)^(1<<63))).UTC()
}

func dueKey(stamp, id []byte) []byte {
	k := make([]byte, 0, len(stamp)+len(id))
	return append(append(k, stamp...), id...)
}
