package storage

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"sync"
	"syscall"
	"time"
)

// errIsDir is returned for a key that names a directory: a key names a file,
// and removing an empty directory would be a surprise.
var errIsDir = errors.New("is a directory")

// Local stores files under a root directory, like Django's FileSystemStorage
// under MEDIA_ROOT. Every operation goes through os.Root, so no key, however
// crafted, reaches outside the root, not even through a symbolic link.
type Local struct {
	root *os.Root

	// escapes is os.Root's error for a path that leaves the root. The os
	// package does not export it, so NewLocal captures it.
	escapes error

	// dirs keeps recently opened directories: resolving a key's directory
	// through os.Root costs a dozen system calls per element, far more than
	// the removal itself. now is the clock that ages them.
	now  func() time.Time
	mu   sync.Mutex
	dirs map[string]*openDir
}

// openDir is a directory opened inside the root, shared while in use.
type openDir struct {
	root    *os.Root
	opened  time.Time
	users   int
	retired bool // out of the cache; closed once its last user is done
}

const (
	// dirCacheSize bounds the directories held open (file descriptors).
	dirCacheSize = 256
	// dirCacheTTL bounds how long an opened directory is trusted: an
	// os.Root keeps referring to its directory after it is moved, even
	// out of the storage root, so it is resolved again this often.
	dirCacheTTL = time.Second
)

// NewLocal opens the directory root. It must exist.
func NewLocal(root string) (*Local, error) {
	r, err := os.OpenRoot(root)
	if err != nil {
		return nil, fmt.Errorf("open storage root: %w", err)
	}
	// ".." is refused lexically, before any system call.
	_, err = r.Lstat("..")
	escapes := errors.Unwrap(err)
	if escapes == nil {
		r.Close()
		return nil, fmt.Errorf("open storage root %q: os.Root did not refuse \"..\"", root)
	}
	return &Local{root: r, escapes: escapes, now: time.Now, dirs: map[string]*openDir{}}, nil
}

// Check reports whether key can be removed. A missing file is fine; a
// symbolic link (ErrUnsafeKey), a path leaving the root through a linked
// directory (ErrUnsafeKey) and a directory are refused.
func (l *Local) Check(ctx context.Context, key string) error {
	return l.check("check", key)
}

// Remove removes the files named by keys, one after another, and returns one
// error per key, nil for a file removed or already missing. Each key is
// checked again, as in Check, because the tree may have changed since.
// Once ctx is done, the remaining valid keys fail with its error.
func (l *Local) Remove(ctx context.Context, keys []string) []error {
	errs := make([]error, len(keys))
	for i, key := range keys {
		if err := ValidateKey(key); err != nil {
			errs[i] = err
			continue
		}
		if err := ctx.Err(); err != nil {
			errs[i] = fmt.Errorf("remove %q: %w", key, err)
			continue
		}
		errs[i] = l.remove(key)
	}
	return errs
}

func (l *Local) remove(key string) error {
	return l.inParent("remove", key, func(dir *os.Root, name string) error {
		// The check and the removal share the opened parent directory, so
		// the path is resolved once; Remove never follows a link.
		if err := l.checkIn(dir, "remove", key, name); err != nil {
			return err
		}
		err := dir.Remove(name)
		if err == nil || errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("remove %q: %w", key, err)
	})
}

func (l *Local) check(op, key string) error {
	if err := ValidateKey(key); err != nil {
		return err
	}
	return l.inParent(op, key, func(dir *os.Root, name string) error {
		return l.checkIn(dir, op, key, name)
	})
}

// inParent opens the directory that holds key, inside the root, and calls
// fn with it and the key's last element. A missing directory means a missing
// file, which counts as removed.
func (l *Local) inParent(op, key string, fn func(dir *os.Root, name string) error) error {
	parent, name := path.Split(key)
	if parent == "" {
		return fn(l.root, name)
	}
	dir, err := l.acquireDir(parent)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case errors.Is(err, l.escapes):
		return unsafeKey(key, "leaves the root through a symbolic link")
	case errors.Is(err, syscall.ENOTDIR):
		return nil // a file where a directory should be: no such key
	case err != nil:
		return fmt.Errorf("%s %q: %w", op, key, err)
	}
	defer l.releaseDir(dir)
	return fn(dir.root, name)
}

func (l *Local) acquireDir(parent string) (*openDir, error) {
	l.mu.Lock()
	if d, ok := l.dirs[parent]; ok && l.now().Sub(d.opened) < dirCacheTTL {
		d.users++
		l.mu.Unlock()
		return d, nil
	}
	l.mu.Unlock()

	r, err := l.root.OpenRoot(parent)
	if err != nil {
		return nil, err
	}
	d := &openDir{root: r, opened: l.now(), users: 1}
	l.mu.Lock()
	defer l.mu.Unlock()
	if old, ok := l.dirs[parent]; ok {
		old.retire()
		delete(l.dirs, parent)
	}
	if len(l.dirs) >= dirCacheSize {
		l.retireAll()
	}
	l.dirs[parent] = d
	return d, nil
}

func (l *Local) releaseDir(d *openDir) {
	l.mu.Lock()
	defer l.mu.Unlock()
	d.users--
	if d.retired && d.users == 0 {
		d.root.Close()
	}
}

// retire takes d out of use; l.mu is held.
func (d *openDir) retire() {
	d.retired = true
	if d.users == 0 {
		d.root.Close()
	}
}

// retireAll empties the cache; l.mu is held.
func (l *Local) retireAll() {
	for _, d := range l.dirs {
		d.retire()
	}
	clear(l.dirs)
}

// checkIn refuses a key whose last element is a symbolic link or a
// directory.
func (l *Local) checkIn(dir *os.Root, op, key, name string) error {
	fi, err := dir.Lstat(name)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("%s %q: %w", op, key, err)
	case fi.Mode()&fs.ModeSymlink != 0:
		return unsafeKey(key, "is a symbolic link")
	case fi.IsDir():
		return fmt.Errorf("%s %q: %w", op, key, errIsDir)
	}
	return nil
}

// Close closes the root.
func (l *Local) Close() error {
	l.mu.Lock()
	l.retireAll()
	l.mu.Unlock()
	return l.root.Close()
}
