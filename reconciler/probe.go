package reconciler

import (
	"context"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/reconcile/reconcile/internal/storage"
)

// ErrNoFiles means the storage holds none of the files the table's rows
// name: an unmounted volume, a wrong root, bucket or prefix. Every file
// would then look missing and every due row would be purged with its real
// file left behind, tracked by nothing; so nothing is deleted.
var ErrNoFiles = errors.New("storage holds none of the table's files")

const (
	// probeEach is how many of the highest and of the lowest keys the probe
	// looks for: one listing or a few system calls.
	probeEach = 16
	// probeFresh is how long a probe that found files vouches for the
	// storage. A removal that finds every file of its batch missing asks
	// again at once.
	probeFresh = time.Minute
)

// probeState remembers the last probe that found files.
type probeState struct {
	mu sync.Mutex
	ok time.Time
}

// ensureFiles probes the storage unless a probe found files within
// probeFresh.
func (r *Reconciler) ensureFiles(ctx context.Context) error {
	r.probe.mu.Lock()
	fresh := !r.probe.ok.IsZero() && time.Since(r.probe.ok) < probeFresh
	r.probe.mu.Unlock()
	if fresh {
		return nil
	}
	return r.probeFiles(ctx)
}

// probeFiles looks in storage for the files of some rows of the table,
// whatever their state. One file found is enough: rows whose files were
// removed by hand are then purged and counted as missing. None found, and
// the storage cannot be told from an empty one: ErrNoFiles. A table with no
// key at all has nothing to lose.
func (r *Reconciler) probeFiles(ctx context.Context) error {
	rows, err := r.db.Query(ctx, r.sql.probeKeys, probeEach)
	if err != nil {
		return fmt.Errorf("probe storage: read keys: %w", err)
	}
	keys, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("probe storage: read keys: %w", err)
	}
	if len(keys) == 0 {
		return nil
	}
	infos := r.store.Stat(ctx, keys)
	if err := ctx.Err(); err != nil {
		return err
	}
	var failures []string
	for _, info := range infos {
		switch {
		case info.Err != nil:
			failures = append(failures, info.Err.Error())
		case info.Exists:
			r.probe.mu.Lock()
			r.probe.ok = time.Now()
			r.probe.mu.Unlock()
			return nil
		}
	}
	if len(failures) == len(keys) {
		// Not an empty storage: one that did not answer.
		return fmt.Errorf("probe %s: %s", r.storageName(), failures[0])
	}
	shown := keys[:min(len(keys), 3)]
	msg := fmt.Sprintf("%s holds none of the %d files probed (keys of the table's rows, such as %s)",
		r.storageName(), len(keys), strings.Join(shown, ", "))
	if len(failures) > 0 {
		msg += fmt.Sprintf("; %d could not be looked at: %s", len(failures), failures[0])
	}
	return fmt.Errorf("%s: is the volume mounted, and are the root, bucket and prefix right? Nothing was deleted: %w", msg, ErrNoFiles)
}

func (r *Reconciler) storageName() string {
	if r.cfg.StorageName != "" {
		return "storage (" + r.cfg.StorageName + ")"
	}
	return "storage"
}

// errNeighboursMissing is the error left in the outbox for a missing file
// whose neighbours are all missing too.
var errNeighboursMissing = errors.New("missing, and so are the files of the rows nearest to it: the folder may be on a volume that is not mounted; the key stays in the outbox (if the files are gone for good, delete the key from the outbox)")

// maxMissingFolders bounds the folders of missing files judged in one
// removal; the files of further folders wait, untouched, in the outbox
// for the next.
const maxMissingFolders = 16

// missingVerdict is what confirmMissing makes of files found missing:
// missing indeed, kept in the outbox with a reason, or not judged yet.
type missingVerdict struct {
	confirmed []string
	unsure    map[string]error
	later     []string
}

// confirmMissing judges files found missing: missing indeed, or maybe on a
// part of the storage that is away (a folder on a volume of its own, not
// mounted). For each folder, the files of the rows whose keys come next to
// one of its keys, and share the most of its path, must be there: a folder
// whose nearest neighbours are all missing too is not taken for missing.
// With no other row there is nothing to compare with, and missing is
// missing.
func (r *Reconciler) confirmMissing(ctx context.Context, missing []string) (missingVerdict, error) {
	v := missingVerdict{unsure: map[string]error{}}
	byFolder := map[string][]string{}
	var folders []string
	for _, key := range missing {
		folder := path.Dir(key)
		if _, ok := byFolder[folder]; !ok {
			folders = append(folders, folder)
		}
		byFolder[folder] = append(byFolder[folder], key)
	}
	slices.Sort(folders)
	if len(folders) > maxMissingFolders {
		for _, folder := range folders[maxMissingFolders:] {
			v.later = append(v.later, byFolder[folder]...)
		}
		folders = folders[:maxMissingFolders]
	}
	nearest := map[string][]string{} // folder -> its nearest neighbours' keys
	var all []string
	for _, folder := range folders {
		key := byFolder[folder][0]
		rows, err := r.db.Query(ctx, r.sql.neighbours, key)
		if err != nil {
			return v, fmt.Errorf("read the keys next to missing files: %w", err)
		}
		near, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return v, fmt.Errorf("read the keys next to missing files: %w", err)
		}
		best := 0
		for _, n := range near {
			switch d := sharedDepth(key, n); {
			case d > best:
				best, nearest[folder] = d, []string{n}
			case d == best:
				nearest[folder] = append(nearest[folder], n)
			}
		}
		all = append(all, nearest[folder]...)
	}
	infos := map[string]storage.FileInfo{}
	for i, info := range r.store.Stat(ctx, all) {
		infos[all[i]] = info
	}
	if err := ctx.Err(); err != nil {
		return v, err
	}
	for _, folder := range folders {
		var reason error = errNeighboursMissing
		for _, n := range nearest[folder] {
			switch info := infos[n]; {
			case info.Exists:
				reason = nil
			case info.Err != nil && reason != nil:
				reason = fmt.Errorf("missing, and the files of the rows nearest to it could not be looked at: %w", info.Err)
			}
		}
		if len(nearest[folder]) == 0 || reason == nil {
			v.confirmed = append(v.confirmed, byFolder[folder]...)
			continue
		}
		for _, key := range byFolder[folder] {
			v.unsure[key] = reason
		}
	}
	return v, nil
}

// sharedDepth counts the folders that the paths of a and b share.
func sharedDepth(a, b string) int {
	n := 0
	for {
		i, j := strings.IndexByte(a, '/'), strings.IndexByte(b, '/')
		if i < 0 || j < 0 || a[:i] != b[:j] {
			return n
		}
		a, b, n = a[i+1:], b[j+1:], n+1
	}
}
