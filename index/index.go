// Package index keeps the local bbolt store of soft-deleted attachments,
// ordered by the time they were deleted, so the purge finds what is due
// without asking the database. It is only a hint: the database decides, and
// the whole index can be rebuilt from it at any time.
package index

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// schemaVersion changes whenever the layout below does; an index of another
// version is emptied, and the next rescan fills it again.
const schemaVersion = 2

var (
	// bucketTables holds a bucket per table (see table.go), each with
	// its entries, its due order and whether a rescan filled it.
	bucketTables = []byte("tables")
	bucketMeta   = []byte("meta")
	keySchema    = []byte("schema")
	// The stream's state: it is cleared with the entries, so an index that
	// a rescan has not finished filling never claims a stream position.
	keyCheckpoint = []byte("checkpoint")   // LSN the entries are complete up to
	keyOrigin     = []byte("origin")       // database and slot the entries come from
	keyRescanned  = []byte("rescanned_at") // when the last rescan finished
	keySwept      = []byte("swept_at")     // when the timer last finished a sweep
	// The buckets of schema version 1, one table's, dropped on upgrade.
	version1Buckets = [][]byte{[]byte("entries"), []byte("due")}
)

// Entry is one soft-deleted attachment.
type Entry struct {
	ID        string
	DeletedAt time.Time
	// Key is the row's storage key; of a table with several key columns,
	// their values joined by KeySeparator in the configured order, NULL as
	// "" (the purge's SQL joins them so, with chr(31)).
	Key string
}

// KeySeparator joins the keys of a row of several key columns in an
// Entry: no storage key holds it.
const KeySeparator = "\x1f"

// Index is an open bbolt index. Its methods may be called from several
// goroutines at once.
type Index struct {
	path     string
	readOnly bool // OpenReadOnly: corruption is reported, never healed
	// Discarded names the file an unreadable index was moved to, if Open
	// had to start afresh.
	Discarded string

	// A heal swaps the handle while other operations wait: they hold dbMu
	// for reading, the heal holds it for writing.
	dbMu   sync.RWMutex
	db     *bolt.DB // nil after a heal that could not reopen, or Close
	file   *os.File // db's file, closed alone when db cannot be closed
	gen    uint64   // heals so far: operations that found the same garbage heal once
	moved  string   // where the last heal moved the file
	lost   error    // why the index was set aside, while no new one could be opened
	closed bool
	// writing lets one write run at a time, held through the heal it may
	// need (see run).
	writing sync.Mutex
	// resetGen is gen at the last Reset: a rescan's loads, and its end,
	// are refused when a heal has emptied the index since. tableGens is
	// gen at each table's Reset since, for that table's loads.
	resetGen  atomic.Uint64
	tableGens sync.Map // table name -> uint64

	updates chan struct{} // signalled after a change that may bring a due time forward
	mu      sync.Mutex
	// What changed since the last TakeEarliest: of any table (Index's
	// own), and of each table (Table's).
	anyTable  wake
	tables    map[string]*wake
	onDiscard func(movedTo string, reason error)
}

// Open opens or creates the index at path. An index that bbolt cannot read
// is moved aside and replaced by an empty one: nothing in it is worth more
// than a rescan.
func Open(path string) (*Index, error) {
	x := &Index{path: path, updates: make(chan struct{}, 1)}
	why, err := x.open()
	if err != nil {
		return nil, err
	}
	if why != nil {
		if x.Discarded, err = x.replace(false); err != nil {
			return nil, fmt.Errorf("replace unreadable index (%v): %w", why, err)
		}
	}
	return x, nil
}

// OpenReadOnly opens the index at path for reading, for `reconcile status`:
// it creates nothing and moves nothing aside. A missing file fails with
// fs.ErrNotExist; a file that a running service holds open, with
// ErrLocked. Data found corrupt is reported, and left for the service to
// heal.
func OpenReadOnly(path string) (*Index, error) {
	x := &Index{path: path, readOnly: true, updates: make(chan struct{}, 1)}
	db, file, why, err := openBolt(path, true)
	if err != nil {
		return nil, err
	}
	if why != nil {
		return nil, fmt.Errorf("open index %s: unreadable (%v); the service sets it aside and rescans", path, why)
	}
	x.db, x.file = db, file
	err = x.view(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if meta == nil || tx.Bucket(bucketTables) == nil {
			return errors.New("it has no buckets")
		}
		if v := meta.Get(keySchema); len(v) != 8 || binary.BigEndian.Uint64(v) != schemaVersion {
			return fmt.Errorf("its layout is not version %d; the service empties it and rescans", schemaVersion)
		}
		return nil
	})
	if err != nil {
		_ = x.Close()
		return nil, fmt.Errorf("open index %s: %w", path, err)
	}
	return x, nil
}

func initSchema(tx *bolt.Tx) error {
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
}

// Close closes the file.
func (x *Index) Close() error {
	x.dbMu.Lock()
	defer x.dbMu.Unlock()
	x.closed = true
	if x.db == nil {
		return nil
	}
	return x.db.Close()
}

// Reset empties the index, every table of it, and forgets its stream
// position, ahead of a rescan. An index found corrupt is replaced by an empty one: Reset has
// done its work.
func (x *Index) Reset() error {
	gen, err := x.run(true, resetBuckets)
	if errors.Is(err, ErrCorrupt) {
		// Healed: emptying the new index again tells whether the heal
		// worked, and the generation the rescan fills.
		gen, err = x.run(true, resetBuckets)
	}
	if err != nil {
		return fmt.Errorf("reset index: %w", err)
	}
	x.resetGen.Store(gen)
	x.tableGens.Clear()
	x.restartAll()
	return nil
}

// healedSinceReset, inside an operation, refuses to go on filling, or to
// declare filled, an index that a heal emptied after the rescan's Reset:
// of the whole index, or with table set, of that table's part, when it
// was reset on its own since.
func (x *Index) healedSinceReset(table *string) error {
	reset := x.resetGen.Load()
	if table != nil {
		if gen, ok := x.tableGens.Load(*table); ok {
			reset = gen.(uint64)
		}
	}
	if x.gen != reset {
		return fmt.Errorf("the index was set aside during the rescan, and what it loaded with it: rescan again: %w", ErrCorrupt)
	}
	return nil
}

func resetBuckets(tx *bolt.Tx) error {
	for _, name := range append([][]byte{bucketTables}, version1Buckets...) {
		if err := tx.DeleteBucket(name); err != nil && !errors.Is(err, berrors.ErrBucketNotFound) {
			return err
		}
	}
	if _, err := tx.CreateBucket(bucketTables); err != nil {
		return err
	}
	meta := tx.Bucket(bucketMeta)
	for _, k := range [][]byte{keyCheckpoint, keyOrigin, keyRescanned} {
		if err := meta.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// LoadEntries and LoadDue fill the unnamed table: see Table.LoadEntries.
func (x *Index) LoadEntries(byID []Entry) error { return x.Table("").LoadEntries(byID) }

// LoadDue: see LoadEntries.
func (x *Index) LoadDue(byDue []Entry) error { return x.Table("").LoadDue(byDue) }

// Position is where a walk through due order stopped; the zero value is the
// start.
type Position []byte

// Due returns up to limit entries of every table deleted at or before
// cutoff, in due order, starting at from, and the position to continue
// from. A walk in pages keeps memory flat however long the backlog is.
func (x *Index) Due(from Position, cutoff time.Time, limit int) ([]Entry, Position, error) {
	return x.due(nil, from, cutoff, limit)
}

// Check runs bbolt's consistency check. It reports garbage rather than
// healing it (bbolt's check recovers its own panics, on a goroutine of
// its own): the operations heal when they meet it.
func (x *Index) Check() error {
	return x.view(func(tx *bolt.Tx) error {
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
