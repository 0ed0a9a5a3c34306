package storage

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"
)

// errIsDir is returned for a key that names a directory: a key names a file,
// and removing an empty directory would be a surprise.
var errIsDir = errors.New("is a directory")

// Local stores files under a root directory, like Django's FileSystemStorage
// under MEDIA_ROOT. Every operation goes through os.Root, so no key, however
// crafted, reaches outside the root, not even through a symbolic link.
type Local struct {
	root *os.Root
}

// NewLocal opens the directory root. It must exist.
func NewLocal(root string) (*Local, error) {
	r, err := os.OpenRoot(root)
	if err != nil {
		return nil, fmt.Errorf("open storage root: %w", err)
	}
	return &Local{root: r}, nil
}

// Check reports, for each key, whether it can be removed. A missing file is
// fine; a symbolic link anywhere on the path (ErrUnsafeKey) and a directory
// are refused.
func (l *Local) Check(ctx context.Context, keys []string) []error {
	return l.each(ctx, "check", keys, func(dir *os.Root, key, name string) error {
		return l.checkIn(dir, "check", key, name)
	})
}

// Remove removes the files named by keys, one after another, and returns one
// error per key, nil for a file removed or already missing. Each key is
// checked again, as in Check, because the tree may have changed since.
func (l *Local) Remove(ctx context.Context, keys []string) []error {
	return l.each(ctx, "remove", keys, func(dir *os.Root, key, name string) error {
		// The check and the removal share the opened parent directory;
		// Remove never follows a link.
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

// each validates every key and calls fn with the directory that holds it.
// The directories opened for one call serve its later keys (the upper
// levels of a storage tree are the same for every key) and never outlive
// the call, so a directory moved meanwhile is soon resolved again. Once ctx
// is done, the remaining valid keys fail with its error.
func (l *Local) each(ctx context.Context, op string, keys []string, fn func(dir *os.Root, key, name string) error) []error {
	errs := make([]error, len(keys))
	dirs := dirCache{}
	defer dirs.close()
	for i, key := range keys {
		if err := ValidateKey(key); err != nil {
			errs[i] = err
			continue
		}
		if err := ctx.Err(); err != nil {
			errs[i] = fmt.Errorf("%s %q: %w", op, key, err)
			continue
		}
		if len(dirs) >= maxOpenDirs {
			dirs.close() // keys spread over many directories: start afresh
		}
		errs[i] = l.inParent(dirs, op, key, func(dir *os.Root, name string) error {
			return fn(dir, key, name)
		})
	}
	return errs
}

// inParent opens the directory that holds key, one element at a time from
// the root, and calls fn with it and the key's last element. A symbolic link
// anywhere on the way is refused, even one that stays inside the root:
// "alias/f.jpg" through a link to "real" would name the file of another
// row, which the database cannot tell. A missing directory means a missing
// file, which counts as removed.
func (l *Local) inParent(dirs dirCache, op, key string, fn func(dir *os.Root, name string) error) error {
	parent, name := path.Split(key)
	dir := l.root
	walked := ""
	for elem := range strings.SplitSeq(strings.TrimSuffix(parent, "/"), "/") {
		if elem == "" {
			break // the key is at the top of the root
		}
		walked += elem + "/"
		if next, ok := dirs[walked]; ok {
			dir = next
			continue
		}
		fi, err := dir.Lstat(elem)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return nil
		case err != nil:
			return fmt.Errorf("%s %q: %w", op, key, err)
		case fi.Mode()&fs.ModeSymlink != 0:
			return unsafeKey(key, "passes through a symbolic link")
		case !fi.IsDir():
			return nil // a file where a directory should be: no such key
		}
		next, err := dir.OpenRoot(elem)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return nil
		case err != nil:
			return fmt.Errorf("%s %q: %w", op, key, err)
		}
		// OpenRoot follows a link that stays inside the root: make sure the
		// directory opened is the one just checked, not a link swapped in.
		if opened, err := next.Stat("."); err != nil || !os.SameFile(fi, opened) {
			next.Close()
			return unsafeKey(key, "changed into a symbolic link while being opened")
		}
		dirs[walked] = next
		dir = next
	}
	return fn(dir, name)
}

// dirCache holds the directories one call has opened, by their path with a
// trailing slash.
type dirCache map[string]*os.Root

// maxOpenDirs bounds the directories one call holds open.
const maxOpenDirs = 64

func (c dirCache) close() {
	for _, d := range c {
		d.Close()
	}
	clear(c)
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
	return l.root.Close()
}
