package storage

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
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
}

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
	return &Local{root: r, escapes: escapes}, nil
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
	if err := l.check("remove", key); err != nil {
		return err
	}
	// Should the file turn into a link or an empty directory after the
	// check, Remove unlinks the link itself or removes the empty directory;
	// it never follows a link.
	err := l.root.Remove(key)
	switch {
	case err == nil, errors.Is(err, fs.ErrNotExist):
		return nil
	case errors.Is(err, l.escapes):
		return unsafeKey(key, "leaves the root through a symbolic link")
	}
	return fmt.Errorf("remove %q: %w", key, err)
}

func (l *Local) check(op, key string) error {
	if err := ValidateKey(key); err != nil {
		return err
	}
	fi, err := l.root.Lstat(key)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case errors.Is(err, l.escapes):
		return unsafeKey(key, "leaves the root through a symbolic link")
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
