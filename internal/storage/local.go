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

// errIsDir is returned for a key that names a directory: a key names a file,
// and removing an empty directory would be a surprise.
var errIsDir = errors.New("is a directory")

// Local stores files under a root directory, like Django's FileSystemStorage
// under MEDIA_ROOT. It needs Linux 5.6 or later: the folder of each key is
// opened with openat2(2) beneath the root with RESOLVE_BENEATH and
// RESOLVE_NO_SYMLINKS, so the kernel itself refuses a key that would leave
// the root or pass through a symbolic link, even one that stays inside: the
// key "alias/f.jpg" through a link to "real" would name the file of another
// row, which the database cannot tell. The file is then examined (fstatat)
// and removed (unlinkat) through that folder handle without following a
// link: three system calls per file, fewer when keys share a folder.
type Local struct {
	root    int // the root directory, opened in NewLocal
	observe Observer
	trash   *trash // nil: files are deleted
}

// folderFlags open a folder only to name the files in it: O_PATH needs
// search permission on the way, not read permission on the folder.
const folderFlags = unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC

// NewLocal opens the directory root. It must exist, and the kernel must
// have openat2 (Linux 5.6 or later): NewLocal tries it once.
func NewLocal(root string, opts ...Option) (*Local, error) {
	o := applyOptions(opts)
	tr, err := checkTrash(o.trash)
	if err != nil {
		return nil, err
	}
	fd, err := retry(func() (int, error) { return unix.Open(root, folderFlags, 0) })
	if err != nil {
		return nil, fmt.Errorf("open storage root: %w", &fs.PathError{Op: "open", Path: root, Err: err})
	}
	probe, err := openBeneath(fd, ".")
	if err == nil {
		unix.Close(probe)
		return &Local{root: fd, observe: o.observe, trash: tr}, nil
	}
	unix.Close(fd)
	switch {
	case errors.Is(err, unix.ENOSYS):
		return nil, errors.New("local storage needs Linux 5.6 or later (openat2)")
	case errors.Is(err, unix.EPERM):
		// Seccomp profiles written before openat2 existed (older
		// container runtimes) answer EPERM to system calls they do not know.
		return nil, fmt.Errorf("local storage needs openat2 (Linux 5.6 or later), which was refused: a seccomp profile may block it: %w", err)
	}
	return nil, fmt.Errorf("open storage root: %w", &fs.PathError{Op: "openat2", Path: root, Err: err})
}

// Check reports, for each key, whether it can be removed. A missing file is
// fine; a symbolic link anywhere on the path (ErrUnsafeKey) and a directory
// are refused. Once ctx is done, the remaining valid keys fail with its
// error.
func (l *Local) Check(ctx context.Context, keys []string) []error {
	dirs := l.folders()
	defer dirs.close()
	errs := make([]error, len(keys))
	for i, key := range keys {
		if errs[i] = l.trash.checkKey(key); errs[i] != nil {
			continue
		}
		if err := ctx.Err(); err != nil {
			errs[i] = fmt.Errorf("check %q: %w", key, err)
			continue
		}
		start := time.Now()
		_, errs[i] = dirs.lstat("check", key)
		l.observe(OpStat, time.Since(start))
	}
	return errs
}

// Stat tells, for each key, whether its file exists, when it was last
// modified and its size. A key refused by Check gets its error.
func (l *Local) Stat(ctx context.Context, keys []string) []FileInfo {
	dirs := l.folders()
	defer dirs.close()
	infos := make([]FileInfo, len(keys))
	for i, key := range keys {
		if err := l.trash.checkKey(key); err != nil {
			infos[i].Err = err
			continue
		}
		if err := ctx.Err(); err != nil {
			infos[i].Err = fmt.Errorf("stat %q: %w", key, err)
			continue
		}
		start := time.Now()
		f, err := dirs.lstat("stat", key)
		l.observe(OpStat, time.Since(start))
		switch {
		case err != nil:
			infos[i].Err = err
		case f.found:
			infos[i] = FileInfo{Exists: true, ModTime: f.modTime(), Changed: time.Unix(f.st.Ctim.Unix()), Size: f.st.Size}
		}
	}
	return infos
}

// Remove removes the files of removals, one after another, and returns one
// Result for each. Each file is looked at just before it is removed: a
// missing file is Missing, a file modified since its removal was queued is
// Rewritten and kept, a key refused by Check gets its error. A key listed
// twice is removed once, then Missing. Once ctx is done, the remaining
// valid keys fail with its error. With a trash (WithTrash) a file is
// renamed into it rather than unlinked.
func (l *Local) Remove(ctx context.Context, removals []Removal) []Result {
	dirs := l.folders()
	defer dirs.close()
	results := make([]Result, len(removals))
	for i, r := range removals {
		start := time.Now()
		results[i] = dirs.remove(ctx, r)
		l.observe(OpRemove, time.Since(start))
	}
	return results
}

// Close closes the root.
func (l *Local) Close() error {
	return unix.Close(l.root)
}

// rewrittenLocal reports whether a file last modified at modTime may have
// been written again since its removal was queued at queuedAt, and must be
// kept.
//
// A modification time cannot be compared with queuedAt to the nanosecond:
// the kernel stamps it from a coarse clock that lags the clock time.Now
// reads by up to a tick (a file written right after time.Now() had an mtime
// 1 to 6 ms before it, every time, on ext4 with Linux 6.18), some file
// systems keep whole seconds, and an NFS server uses its own clock. So a
// file modified less than a second before queuedAt is kept too: this fails
// closed, like the S3 rule, which keeps a file modified in the same second.
func rewrittenLocal(modTime, queuedAt time.Time) bool {
	return !modTime.Before(queuedAt.Add(-time.Second))
}

// maxOpenDirs bounds the folders one call holds open.
const maxOpenDirs = 64

// folders holds the folders one call has opened, by their path from the
// root. They serve the call's later keys in the same folder (keys usually
// come sorted) and never outlive the call, so a folder moved meanwhile is
// soon resolved again.
type folders struct {
	root int
	open map[string]int

	trash *trash // nil: files are deleted
	// made holds the folders mkdirs opened, apart from open: a file's
	// folder in open stays open while its place in the trash is made.
	made map[string]int
}

func (l *Local) folders() *folders {
	return &folders{root: l.root, open: make(map[string]int), trash: l.trash}
}

func (d *folders) close() {
	for _, fd := range d.open {
		unix.Close(fd)
	}
	clear(d.open)
	d.closeMade()
}

// get returns the handle of the folder dir ("" for the root).
func (d *folders) get(dir string) (int, error) {
	if dir == "" {
		return d.root, nil
	}
	if fd, ok := d.open[dir]; ok {
		return fd, nil
	}
	if len(d.open) >= maxOpenDirs {
		d.close() // keys spread over many folders: start afresh
	}
	fd, err := openBeneath(d.root, dir)
	if err != nil {
		return -1, err
	}
	d.open[dir] = fd
	return fd, nil
}

// file is what a key names: its folder's handle, its name in that folder,
// and its status if found.
type file struct {
	dir   int
	name  string
	found bool
	st    unix.Stat_t
}

func (f *file) modTime() time.Time {
	return time.Unix(f.st.Mtim.Unix())
}

// lstat opens the folder of key (a valid key) and looks at its file without
// following a link. A missing folder or file is not an error (found is
// false); a symbolic link anywhere on the path, and a directory, are.
func (d *folders) lstat(op, key string) (file, error) {
	slash := strings.LastIndexByte(key, '/')
	folder := key[:max(slash, 0)]
	f := file{name: key[slash+1:]}
	var err error
	if f.dir, err = d.get(folder); err != nil {
		switch {
		case missing(err):
			return f, nil
		case errors.Is(err, unix.ELOOP):
			return f, unsafeKey(key, "passes through a symbolic link")
		case errors.Is(err, unix.EXDEV):
			return f, unsafeKey(key, "leads outside the storage root")
		}
		return f, fmt.Errorf("%s %q: %w", op, key, &fs.PathError{Op: "openat2", Path: folder, Err: err})
	}
	_, err = retry(func() (int, error) { return 0, unix.Fstatat(f.dir, f.name, &f.st, unix.AT_SYMLINK_NOFOLLOW) })
	switch {
	case missing(err):
		return f, nil
	case err != nil:
		return f, fmt.Errorf("%s %q: %w", op, key, &fs.PathError{Op: "fstatat", Path: key, Err: err})
	case f.st.Mode&unix.S_IFMT == unix.S_IFLNK:
		return f, unsafeKey(key, "is a symbolic link")
	case f.st.Mode&unix.S_IFMT == unix.S_IFDIR:
		return f, fmt.Errorf("%s %q: %w", op, key, errIsDir)
	}
	f.found = true
	return f, nil
}

// remove removes the file of one removal if it is still the file queued.
func (d *folders) remove(ctx context.Context, r Removal) Result {
	if err := d.trash.checkKey(r.Key); err != nil {
		return Result{Err: err}
	}
	if r.QueuedAt.IsZero() {
		return Result{Err: fmt.Errorf("remove %q: %w", r.Key, errNoQueuedAt)}
	}
	if err := ctx.Err(); err != nil {
		return Result{Err: fmt.Errorf("remove %q: %w", r.Key, err)}
	}
	f, err := d.lstat("remove", r.Key)
	switch {
	case err != nil:
		return Result{Err: err}
	case !f.found:
		return Result{Outcome: Missing}
	case rewrittenLocal(f.modTime(), r.QueuedAt):
		return Result{Outcome: Rewritten, ModTime: f.modTime()}
	case d.trash != nil:
		return d.moveToTrash(f, r.Key)
	}
	// unlinkat without AT_REMOVEDIR never removes a directory and never
	// follows a link: a link swapped in since fstatat is removed itself, its
	// target is not touched.
	_, err = retry(func() (int, error) { return 0, unix.Unlinkat(f.dir, f.name, 0) })
	switch {
	case err == nil:
		return Result{Outcome: Removed}
	case missing(err):
		return Result{Outcome: Missing} // removed by someone else meanwhile
	case errors.Is(err, unix.EISDIR):
		return Result{Err: fmt.Errorf("remove %q: %w", r.Key, errIsDir)}
	}
	return Result{Err: fmt.Errorf("remove %q: %w", r.Key, &fs.PathError{Op: "unlinkat", Path: r.Key, Err: err})}
}

// openBeneath opens the folder path under dir without leaving dir and
// without following any symbolic link: the kernel answers ELOOP for a link
// anywhere on the path and EXDEV for a path that would escape.
func openBeneath(dir int, path string) (int, error) {
	how := unix.OpenHow{Flags: folderFlags, Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS}
	return retry(func() (int, error) { return unix.Openat2(dir, path, &how) })
}

// missing reports an error that means there is no such file: a missing
// element, or a file where a folder should be.
func missing(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR)
}

// retry calls fn again, a few times, while it is interrupted (EINTR, which
// a network file system may return) or asked to try again (EAGAIN, which
// openat2 returns when a rename raced with a RESOLVE_BENEATH lookup).
func retry(fn func() (int, error)) (int, error) {
	for range 8 {
		n, err := fn()
		if err != unix.EINTR && err != unix.EAGAIN {
			return n, err
		}
	}
	return fn()
}
