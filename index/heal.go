package index

// bbolt checks only the two meta pages of a file when it opens it. A data
// page that holds garbage (a bucket's branch or leaf page, the freelist)
// makes it panic wherever it reads that page: in Open, a cursor, Get, Put,
// DeleteBucket, a commit, even the rollback of a write. The index is a
// cache: every operation recovers such a panic and heals the index (the
// file is moved aside, an empty index takes its place) and fails with
// ErrCorrupt, so that the caller rescans.

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime/debug"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// view runs fn in a read transaction, update in a write transaction.
func (x *Index) view(fn func(*bolt.Tx) error) error {
	_, err := x.run(false, fn)
	return err
}

func (x *Index) update(fn func(*bolt.Tx) error) error {
	_, err := x.run(true, fn)
	return err
}

// run runs fn and heals the index when bbolt panics. gen is the
// generation of the index fn ran on.
func (x *Index) run(write bool, fn func(*bolt.Tx) error) (gen uint64, err error) {
	if write {
		// Held across the heal too: no write ever waits on the writer lock
		// of a handle whose rollback panicked, which nothing releases.
		x.writing.Lock()
		defer x.writing.Unlock()
	}
	gen, held, crash, err := x.try(write, fn)
	if crash != nil && x.readOnly {
		return gen, fmt.Errorf("index data is corrupt (%v); the service sets it aside and rescans", crash)
	}
	if crash != nil {
		// The read lock is released: the heal can wait for the others.
		return gen, x.heal(gen, crash, held)
	}
	return gen, err
}

func (x *Index) try(write bool, fn func(*bolt.Tx) error) (gen uint64, held bool, crash, err error) {
	x.dbMu.RLock()
	defer x.dbMu.RUnlock()
	switch {
	case x.closed:
		return x.gen, false, nil, berrors.ErrDatabaseNotOpen
	case x.db == nil:
		return x.gen, false, x.lost, nil // the last heal failed: try again
	}
	held, crash, err = call(x.db, write, fn)
	return x.gen, held, crash, err
}

// call runs fn in a transaction of db and turns a panic into crash. held
// says bbolt could not close the transaction (its rollback panicked too):
// db then keeps a lock that nothing releases, and must not be closed.
func call(db *bolt.DB, write bool, fn func(*bolt.Tx) error) (held bool, crash, err error) {
	var tx *bolt.Tx
	defer func() {
		if r := recover(); r != nil {
			held, crash = tx != nil && tx.DB() != nil, panicError(r)
		}
	}()
	// Garbage can send bbolt reading outside the file's mapping: make the
	// fault a panic, not the end of the process.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	do := db.View
	if write {
		do = db.Update
	}
	return false, nil, do(func(t *bolt.Tx) error {
		tx = t
		return fn(t)
	})
}

func panicError(r any) error {
	if err, ok := r.(error); ok {
		return err
	}
	return fmt.Errorf("%v", r)
}

// heal replaces the index that the operation which ran on generation gen
// found corrupt (why) by an empty one, unless another operation did
// already. It returns the error for that operation.
func (x *Index) heal(gen uint64, why error, held bool) error {
	x.dbMu.Lock()
	if gen != x.gen {
		x.dbMu.Unlock()
		return fmt.Errorf("index data was corrupt (%v); another operation set it aside; a rescan rebuilds it: %w", why, ErrCorrupt)
	}
	x.gen++
	moved, err := x.replace(held)
	if moved != "" {
		x.moved = moved
	}
	if err != nil {
		x.lost = why
	}
	at := x.moved // an earlier heal that failed to reopen may have moved it
	x.dbMu.Unlock()

	x.restartAll() // the entries are gone: walks start over
	if moved != "" {
		x.mu.Lock()
		fn := x.onDiscard
		x.mu.Unlock()
		if fn != nil {
			fn(moved, why)
		}
	}
	if err != nil {
		return fmt.Errorf("index data was corrupt (%v); replacing it failed: %w: %w", why, err, ErrCorrupt)
	}
	return fmt.Errorf("index data was corrupt (%v); moved aside to %s; a rescan rebuilds it: %w", why, at, ErrCorrupt)
}

// OnDiscard sets fn to be called after every heal with where the corrupt
// file went and what bbolt said of it. It is called outside the index's
// locks, on the goroutine whose operation found the corruption. A file
// Open moved aside is in Discarded instead.
func (x *Index) OnDiscard(fn func(movedTo string, reason error)) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.onDiscard = fn
}

// replace drops the handle, moves its file aside and opens an empty index
// in its place; moved is where the file went, if it was there to move.
// The caller holds dbMu for writing, or is Open.
func (x *Index) replace(held bool) (moved string, err error) {
	if x.db != nil {
		if held {
			// Only the file can be closed; the mapping stays, lost to the
			// process: a heal is rare, and the process is not the worse.
			_ = x.file.Close()
		} else {
			_ = x.db.Close()
		}
		x.db, x.file = nil, nil
	}
	if moved, err = setAside(x.path); err != nil {
		return "", err
	}
	why, err := x.open()
	if err == nil && why != nil {
		err = fmt.Errorf("the new index is unreadable too: %w", why)
	}
	return moved, err
}

// setAside moves the file at path to <path>.corrupt-<unix time>, with a
// counter when that is taken, so nothing set aside before is overwritten.
// A file already gone is not an error: an earlier heal moved it.
func setAside(path string) (string, error) {
	base := fmt.Sprintf("%s.corrupt-%d", path, time.Now().Unix())
	to := base
	for i := 1; ; i++ {
		if _, err := os.Lstat(to); err != nil {
			break
		}
		to = fmt.Sprintf("%s.%d", base, i)
	}
	err := os.Rename(path, to)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("move corrupt index aside: %w", err)
	}
	return to, nil
}

// open opens the file at x.path and gives it the schema. why, when set, is
// what made bbolt refuse or panic on the file: it is then closed again,
// and worth only setting aside.
func (x *Index) open() (why, err error) {
	db, file, why, err := openBolt(x.path, false)
	if why != nil || err != nil {
		return why, err
	}
	held, crash, err := call(db, true, initSchema)
	switch {
	case crash != nil && held:
		_ = file.Close()
		return crash, nil
	case crash != nil:
		_ = db.Close()
		return crash, nil
	case err != nil:
		_ = db.Close()
		return nil, err
	}
	x.db, x.file = db, file
	return nil, nil
}

// minIndexSize is two meta pages of bbolt's smallest page, 4 KiB.
const minIndexSize = 2 * 4096

// openBolt opens the file at path, for reading only with readOnly (a
// missing file is then an error, not a new index). why is set when bbolt cannot read it:
// its meta pages are invalid, or it panicked (it reads the freelist page
// at open), after which the file it had opened is closed here (its
// mapping stays).
func openBolt(path string, readOnly bool) (db *bolt.DB, file *os.File, why, err error) {
	defer func() {
		if r := recover(); r != nil {
			why = panicError(r)
			if file != nil {
				_ = file.Close()
			}
			db, file = nil, nil
		}
	}()
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	// bbolt refuses a file shorter than its two meta pages with a plain
	// error (a truncated copy, a full disk, another file written over it):
	// one more unreadable file, to set aside. No index bbolt wrote is that
	// short, whatever the page size of the host that wrote it.
	if st, serr := os.Stat(path); serr == nil && st.Mode().IsRegular() && st.Size() > 0 && st.Size() < minIndexSize {
		return nil, nil, fmt.Errorf("the file is %d bytes, too short for an index", st.Size()), nil
	}
	db, err = bolt.Open(path, 0o600, &bolt.Options{
		Timeout:  time.Second,
		ReadOnly: readOnly,
		// Kept, to close when bbolt cannot close the handle.
		OpenFile: func(name string, flag int, perm fs.FileMode) (*os.File, error) {
			f, err := os.OpenFile(name, flag, perm)
			file = f
			return f, err
		},
	})
	switch {
	case errors.Is(err, berrors.ErrTimeout):
		return nil, nil, nil, fmt.Errorf("open index %s: %w", path, ErrLocked)
	case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrChecksum), errors.Is(err, berrors.ErrVersionMismatch):
		return nil, nil, err, nil
	case err != nil:
		return nil, nil, nil, fmt.Errorf("open index %s: %w", path, err)
	}
	return db, file, nil, nil
}
