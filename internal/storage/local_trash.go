//go:build linux

package storage

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Folder modes: the trash's folders are the owner's alone, since a web
// server that serves the root would otherwise serve the trash too; a folder
// that Untrash makes again on a key's way is as Django makes them.
const (
	trashFolderMode = 0o700
	keyFolderMode   = 0o755
)

// moveToTrash moves f, the file of key that remove decided to remove, into
// this hour's trash bucket, under the folders of key. renameat2 with
// RENAME_NOREPLACE never overwrites a copy trashed before: the next bucket
// of the hour is tried. The file keeps its modification time.
func (d *folders) moveToTrash(f file, key string) Result {
	folder := key[:max(strings.LastIndexByte(key, '/'), 0)]
	start := d.trash.hour()
	for seq := range maxTrashTries {
		dir := d.trash.dir + "/" + newBucket(start, seq).name
		if folder != "" {
			dir += "/" + folder
		}
		to, err := d.mkdirs(dir, trashFolderMode)
		if err != nil {
			return Result{Err: fmt.Errorf("remove %q: make its trash folder: %w", key, err)}
		}
		_, err = retry(func() (int, error) { return 0, unix.Renameat2(f.dir, f.name, to, f.name, unix.RENAME_NOREPLACE) })
		switch {
		case err == nil:
			return d.checkMoved(f, to, key)
		case errors.Is(err, unix.EEXIST):
			continue // key was trashed in this bucket already
		case missing(err):
			return Result{Outcome: Missing} // removed by someone else meanwhile
		case errors.Is(err, unix.EXDEV):
			return Result{Err: fmt.Errorf("remove %q: the trash %s/ must be on the file system of the file, which is another: %w", key, d.trash.dir, err)}
		}
		return Result{Err: fmt.Errorf("remove %q: %w", key, &fs.PathError{Op: "renameat2", Path: key, Err: err})}
	}
	return Result{Err: fmt.Errorf("remove %q: trashed %d times this hour already; kept", key, maxTrashTries)}
}

// checkMoved makes sure that what went to the trash folder to is the file
// remove looked at. renameat2 moves whatever bears the name, folder or
// link included, where unlinkat would have refused a folder: anything else
// swapped in since goes back to its place, and the key fails, to be decided
// again on the next try.
func (d *folders) checkMoved(f file, to int, key string) Result {
	var st unix.Stat_t
	_, err := retry(func() (int, error) { return 0, unix.Fstatat(to, f.name, &st, unix.AT_SYMLINK_NOFOLLOW) })
	switch {
	case err != nil:
		return Result{Err: fmt.Errorf("remove %q: look at the file moved into the trash: %w", key, &fs.PathError{Op: "fstatat", Path: key, Err: err})}
	case sameFile(&st, &f.st):
		return Result{Outcome: Removed}
	}
	_, err = retry(func() (int, error) { return 0, unix.Renameat2(to, f.name, f.dir, f.name, unix.RENAME_NOREPLACE) })
	if err != nil {
		return Result{Err: fmt.Errorf("remove %q: it was replaced while being moved into the trash, and what replaced it stays in the trash: %w", key, err)}
	}
	return Result{Err: fmt.Errorf("remove %q: it was replaced while being moved into the trash; what replaced it is back in its place", key)}
}

// sameFile reports whether a and b describe the same unchanged file: an
// inode number alone is not enough, since a file made just after another
// was unlinked may get the same one.
func sameFile(a, b *unix.Stat_t) bool {
	return a.Dev == b.Dev && a.Ino == b.Ino && a.Mode&unix.S_IFMT == b.Mode&unix.S_IFMT &&
		a.Mtim == b.Mtim && a.Size == b.Size
}

// mkdirs returns the handle of the folder dir (a clean path under the
// root, "" for the root), making the missing folders on the way with mode
// perm, each made and opened beneath the one before it without following a
// link. The handle is the call's, like those of get, but kept apart.
func (d *folders) mkdirs(dir string, perm uint32) (int, error) {
	if dir == "" {
		return d.root, nil
	}
	if fd, ok := d.made[dir]; ok {
		return fd, nil
	}
	if d.made == nil {
		d.made = make(map[string]int)
	}
	if len(d.made) >= maxOpenDirs {
		d.closeMade()
	}
	fd, err := openBeneath(d.root, dir)
	switch {
	case missing(err):
		if fd, err = makeBeneath(d.root, dir, perm); err != nil {
			return -1, err
		}
	case err != nil:
		return -1, &fs.PathError{Op: "openat2", Path: dir, Err: err}
	}
	d.made[dir] = fd
	return fd, nil
}

func (d *folders) closeMade() {
	for _, fd := range d.made {
		unix.Close(fd)
	}
	clear(d.made)
}

// makeBeneath makes the folders of path under root that are missing, and
// opens the last.
func makeBeneath(root int, path string, perm uint32) (int, error) {
	parent := root
	closeParent := func() {
		if parent != root {
			unix.Close(parent)
		}
	}
	for elem := range strings.SplitSeq(path, "/") {
		_, err := retry(func() (int, error) { return 0, unix.Mkdirat(parent, elem, perm) })
		if err != nil && !errors.Is(err, unix.EEXIST) {
			closeParent()
			return -1, &fs.PathError{Op: "mkdirat", Path: path, Err: err}
		}
		next, err := openBeneath(parent, elem)
		closeParent()
		if err != nil {
			return -1, &fs.PathError{Op: "openat2", Path: path, Err: err}
		}
		parent = next
	}
	return parent, nil
}

// Untrash puts back the newest trashed copy of each key, with its
// modification time, and returns one error for each key: nil when it is
// back. It refuses a key whose place holds a file again (renameat2 with
// RENAME_NOREPLACE: a new upload is never overwritten), a key with no copy
// in the trash, and a key Check refuses. The folders on the key's way are
// made again when they are gone.
func (l *Local) Untrash(ctx context.Context, keys []string) []error {
	errs := make([]error, len(keys))
	buckets, err := l.buckets()
	if err != nil {
		for i := range errs {
			errs[i] = fmt.Errorf("untrash: %w", err)
		}
		return errs
	}
	dirs := l.folders()
	defer dirs.close()
	for i, key := range keys {
		if errs[i] = l.trash.checkKey(key); errs[i] != nil {
			continue
		}
		if err := ctx.Err(); err != nil {
			errs[i] = fmt.Errorf("untrash %q: %w", key, err)
			continue
		}
		errs[i] = dirs.untrash(key, buckets)
	}
	return errs
}

// untrash puts back the copy of key in the first of buckets that has one.
// The key's place is looked at first: the handle of the copy's folder must
// stay open until the rename, and the next lstat could close it.
func (d *folders) untrash(key string, buckets []bucket) error {
	place, err := d.lstat("untrash", key)
	switch {
	case err != nil:
		return err
	case place.found:
		return fmt.Errorf("untrash %q: %w", key, errTaken)
	}
	for _, b := range buckets {
		f, err := d.lstat("untrash", d.trash.dir+"/"+b.name+"/"+key)
		if err != nil {
			return err
		}
		if !f.found {
			continue
		}
		to, err := d.mkdirs(key[:max(strings.LastIndexByte(key, '/'), 0)], keyFolderMode)
		if err != nil {
			return fmt.Errorf("untrash %q: make its folder: %w", key, err)
		}
		_, err = retry(func() (int, error) { return 0, unix.Renameat2(f.dir, f.name, to, f.name, unix.RENAME_NOREPLACE) })
		switch {
		case err == nil:
			return nil
		case errors.Is(err, unix.EEXIST):
			return fmt.Errorf("untrash %q: %w", key, errTaken)
		}
		return fmt.Errorf("untrash %q: %w", key, &fs.PathError{Op: "renameat2", Path: key, Err: err})
	}
	return fmt.Errorf("untrash %q: %w", key, errNotInTrash)
}

// buckets lists the trash's buckets, newest first.
func (l *Local) buckets() ([]bucket, error) {
	if l.trash == nil {
		return nil, errNoTrash
	}
	fd, buckets, err := l.openTrash()
	if fd >= 0 {
		unix.Close(fd)
	}
	newestFirst(buckets)
	return buckets, err
}

// openTrash opens the trash folder to read it, and lists its buckets. fd is
// -1 when there is no trash folder yet, or on error.
func (l *Local) openTrash() (fd int, buckets []bucket, err error) {
	fd, err = openDirBeneath(l.root, l.trash.dir)
	switch {
	case missing(err):
		return -1, nil, nil
	case err != nil:
		return -1, nil, &fs.PathError{Op: "openat2", Path: l.trash.dir, Err: err}
	}
	names, err := readNames(fd)
	if err != nil {
		unix.Close(fd)
		return -1, nil, &fs.PathError{Op: "getdents", Path: l.trash.dir, Err: err}
	}
	for _, name := range names {
		if b, ok := parseBucket(name); ok {
			buckets = append(buckets, b)
		}
	}
	return fd, buckets, nil
}

// EmptyTrash deletes the trash's buckets that ended before before (every
// file in them was trashed before it), with everything in them, and
// returns how many files went. Each folder is opened beneath the one that
// holds it without following a link, and a link is deleted itself, never
// followed. Names in the trash that are no bucket are left alone.
func (l *Local) EmptyTrash(ctx context.Context, before time.Time) (int, error) {
	if l.trash == nil {
		return 0, errNoTrash
	}
	fd, buckets, err := l.openTrash()
	if err != nil {
		return 0, fmt.Errorf("empty the trash: %w", err)
	}
	if fd < 0 {
		return 0, nil
	}
	defer unix.Close(fd)
	removed := 0
	for _, b := range buckets {
		if b.end().After(before) {
			continue
		}
		n, err := removeAll(ctx, fd, b.name, l.trash.dir+"/"+b.name)
		removed += n
		if err != nil {
			return removed, fmt.Errorf("empty the trash: %w", err)
		}
	}
	return removed, nil
}

// removeAll deletes name, in the folder dir, with everything in it, and
// returns how many files (anything but a folder) went; path names it in
// errors.
func removeAll(ctx context.Context, dir int, name, path string) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	// Without AT_REMOVEDIR, unlinkat deletes a file or a link, never what
	// a link points to, and refuses a folder.
	_, err := retry(func() (int, error) { return 0, unix.Unlinkat(dir, name, 0) })
	switch {
	case err == nil:
		return 1, nil
	case missing(err):
		return 0, nil
	case !errors.Is(err, unix.EISDIR):
		return 0, &fs.PathError{Op: "unlinkat", Path: path, Err: err}
	}
	fd, err := openDirBeneath(dir, name)
	if err != nil {
		return 0, &fs.PathError{Op: "openat2", Path: path, Err: err}
	}
	removed, err := removeChildren(ctx, fd, path)
	unix.Close(fd)
	if err != nil {
		return removed, err
	}
	_, err = retry(func() (int, error) { return 0, unix.Unlinkat(dir, name, unix.AT_REMOVEDIR) })
	if err != nil && !missing(err) {
		return removed, &fs.PathError{Op: "unlinkat", Path: path, Err: err}
	}
	return removed, nil
}

// removeChildren deletes everything in the folder fd, named path.
func removeChildren(ctx context.Context, fd int, path string) (int, error) {
	names, err := readNames(fd)
	if err != nil {
		return 0, &fs.PathError{Op: "getdents", Path: path, Err: err}
	}
	removed := 0
	for _, name := range names {
		n, err := removeAll(ctx, fd, name, path+"/"+name)
		removed += n
		if err != nil {
			return removed, err
		}
	}
	return removed, nil
}

// openDirBeneath opens the folder path under dir to read its names, as
// openBeneath does: never leaving dir, never following a link.
func openDirBeneath(dir int, path string) (int, error) {
	how := unix.OpenHow{Flags: unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS}
	return retry(func() (int, error) { return unix.Openat2(dir, path, &how) })
}

// readNames returns the names in the folder fd, opened by openDirBeneath,
// without "." and "..".
func readNames(fd int) ([]string, error) {
	var names []string
	buf := make([]byte, 32<<10)
	for {
		n, err := retry(func() (int, error) { return unix.Getdents(fd, buf) })
		if err != nil {
			return nil, err
		}
		if n <= 0 {
			return names, nil
		}
		_, _, names = unix.ParseDirent(buf[:n], -1, names)
	}
}
