//go:build linux

package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// readFlags open a folder to read its entries, which an O_PATH handle cannot.
const readFlags = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC

// readBatch is how many entries a folder is read by at a time.
const readBatch = 1024

// List calls fn for every file (and refused entry) under opts.Prefix after
// opts.StartAfter, in byte order of keys (the order of S3 listings, and of
// Go's string comparison). An error of fn stops the listing and is returned
// as it is.
//
// It walks the folders depth first, each opened with openat2 beneath its
// parent without following a link, so the walk never leaves the root. A
// symbolic link on the prefix's own folder path is an error (ErrUnsafeKey);
// one met inside the walk, to a file or a folder, is listed as refused and
// never followed. A folder whose name ValidateKey refuses is listed once, as
// refused, under its key with a trailing '/', and not entered: no key under
// it could be removed. A missing prefix folder lists nothing.
//
// Each folder's entries are read and sorted before its first is listed
// (folders as if their names ended in '/', as the keys under them do), so
// memory holds the entries of the folders on the current path, not the
// tree's. Whole subtrees that sort before opts.StartAfter are skipped
// unread. Without opts.Info a file costs no system call of its own: its type
// comes from the folder's entries. ctx is checked between folders.
func (l *Local) List(ctx context.Context, opts ListOptions, fn func(Object) error) error {
	folder, name, err := splitPrefix(opts.Prefix)
	if err != nil {
		return err
	}
	fd, err := l.openPrefix(opts.Prefix, folder)
	if err != nil || fd < 0 {
		return err
	}
	w := localWalk{ctx: ctx, opts: opts, fn: fn, observe: l.observe}
	return w.folder(fd, folder, name)
}

// CheckList tells whether listing under prefix is allowed, before any work
// depends on it: it opens the prefix's folder to read it. A missing folder
// is fine; permission denied, or a symbolic link on the way, is an error.
func (l *Local) CheckList(ctx context.Context, prefix string) error {
	folder, _, err := splitPrefix(prefix)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("list %q: %w", prefix, err)
	}
	fd, err := l.openPrefix(prefix, folder)
	if err != nil || fd < 0 {
		return err
	}
	return unix.Close(fd)
}

// openPrefix opens folder, the folder of the listing prefix ("" or ending
// in '/'), to read it; -1 and no error if it is missing.
func (l *Local) openPrefix(prefix, folder string) (int, error) {
	path := strings.TrimSuffix(folder, "/")
	if path == "" {
		path = "."
	}
	fd, err := openToRead(l.root, path)
	switch {
	case err == nil:
		return fd, nil
	case missing(err):
		return -1, nil
	case errors.Is(err, unix.ELOOP):
		return -1, unsafeKey(prefix, "passes through a symbolic link")
	case errors.Is(err, unix.EXDEV):
		return -1, unsafeKey(prefix, "leads outside the storage root")
	}
	return -1, fmt.Errorf("list %q: %w", prefix, &fs.PathError{Op: "openat2", Path: path, Err: err})
}

// openToRead opens the folder path under dir to read it, as openBeneath does.
func openToRead(dir int, path string) (int, error) {
	how := unix.OpenHow{Flags: readFlags, Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS}
	return retry(func() (int, error) { return unix.Openat2(dir, path, &how) })
}

// localWalk is one call of List.
type localWalk struct {
	ctx     context.Context
	opts    ListOptions
	fn      func(Object) error
	observe Observer
}

// entry is an entry of a folder.
type entry struct {
	key string // its name, with '/' appended for a folder: entries sort as their keys do
	typ fs.FileMode
}

func (e entry) name() string { return strings.TrimSuffix(e.key, "/") }

// folder lists the folder open as fd, whose keys start with path ("" or
// ending in '/'), keeping only the entries whose names start with name, and
// closes fd.
func (w *localWalk) folder(fd int, path, name string) error {
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	if err := w.ctx.Err(); err != nil {
		return fmt.Errorf("list %q: %w", path, err)
	}
	start := time.Now()
	entries, err := readFolder(f, name)
	w.observe(OpList, time.Since(start))
	if err != nil {
		return fmt.Errorf("list %q: %w", path, err)
	}
	for _, e := range entries {
		key := path + e.key
		if w.before(key, e.typ.IsDir()) {
			continue
		}
		if err := w.visit(fd, key, e); err != nil {
			return err
		}
	}
	return nil
}

// readFolder returns the entries of f whose names start with name, sorted.
func readFolder(f *os.File, name string) ([]entry, error) {
	var entries []entry
	for {
		batch, err := f.ReadDir(readBatch)
		for _, d := range batch {
			if !strings.HasPrefix(d.Name(), name) {
				continue
			}
			e := entry{key: d.Name(), typ: d.Type()}
			if e.typ.IsDir() {
				e.key += "/"
			}
			entries = append(entries, e)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	slices.SortFunc(entries, func(a, b entry) int { return strings.Compare(a.key, b.key) })
	return entries, nil
}

// before reports whether key, and for a folder's key (ending in '/') every
// key under it, sorts at or before opts.StartAfter.
func (w *localWalk) before(key string, dir bool) bool {
	after := w.opts.StartAfter
	if dir {
		return key < after && !strings.HasPrefix(after, key)
	}
	return key <= after
}

// visit lists e, whose key is key, of the folder open as dir.
func (w *localWalk) visit(dir int, key string, e entry) error {
	if e.typ.IsDir() {
		return w.subfolder(dir, key, e.name())
	}
	o := Object{Key: key}
	switch {
	case !e.typ.IsRegular():
		o.Refused = refusal(key, e.typ)
	case ValidateKey(e.key) != nil:
		o.Refused = ValidateKey(key)
	case w.opts.Info:
		var st unix.Stat_t
		start := time.Now()
		_, err := retry(func() (int, error) { return 0, unix.Fstatat(dir, e.key, &st, unix.AT_SYMLINK_NOFOLLOW) })
		w.observe(OpStat, time.Since(start))
		switch typ := fileMode(st.Mode); {
		case missing(err):
			return nil // removed since its folder was read
		case err != nil:
			return fmt.Errorf("list %q: %w", key, &fs.PathError{Op: "fstatat", Path: key, Err: err})
		case typ.IsDir():
			return nil // replaced by a folder since its folder was read: not a file
		case !typ.IsRegular():
			o.Refused = refusal(key, typ)
		default:
			o.Size, o.ModTime = st.Size, time.Unix(st.Mtim.Unix())
		}
	}
	return w.fn(o)
}

// subfolder lists the folder name of the folder open as dir; key is its
// key, ending in '/'.
func (w *localWalk) subfolder(dir int, key, name string) error {
	if ValidateKey(name) != nil {
		return w.fn(Object{Key: key, Refused: ValidateKey(strings.TrimSuffix(key, "/"))})
	}
	fd, err := openToRead(dir, name)
	switch {
	case err == nil:
		return w.folder(fd, key, "")
	case missing(err):
		return nil // removed, or replaced by a file, since its folder was read
	case errors.Is(err, unix.ELOOP):
		// Replaced by a link since its folder was read.
		return w.fn(Object{Key: key, Refused: unsafeKey(key, "is a symbolic link")})
	}
	return fmt.Errorf("list %q: %w", key, &fs.PathError{Op: "openat2", Path: key, Err: err})
}

// refusal is the Refused of the entry key of type typ, which is neither a
// file nor a folder.
func refusal(key string, typ fs.FileMode) error {
	switch {
	case typ&fs.ModeSymlink != 0:
		return unsafeKey(key, "is a symbolic link")
	case typ&fs.ModeDevice != 0:
		return notFile(key, "device")
	case typ&fs.ModeNamedPipe != 0:
		return notFile(key, "fifo")
	case typ&fs.ModeSocket != 0:
		return notFile(key, "socket")
	}
	return notFile(key, "unknown type")
}

// fileMode returns the type bits of a stat's mode as fs.FileMode has them.
func fileMode(mode uint32) fs.FileMode {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return 0
	case unix.S_IFDIR:
		return fs.ModeDir
	case unix.S_IFLNK:
		return fs.ModeSymlink
	case unix.S_IFBLK:
		return fs.ModeDevice
	case unix.S_IFCHR:
		return fs.ModeDevice | fs.ModeCharDevice
	case unix.S_IFIFO:
		return fs.ModeNamedPipe
	case unix.S_IFSOCK:
		return fs.ModeSocket
	}
	return fs.ModeIrregular
}
