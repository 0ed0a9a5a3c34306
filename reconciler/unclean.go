package reconciler

import (
	"context"
	"fmt"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// maxUnclean bounds the keys read whose path is not clean.
const maxUnclean = 100000

// uncleanFresh is how long the keys read vouch for the table.
const uncleanFresh = time.Minute

// unclean are the rows whose key names their file by a path that listings
// and other keys spell otherwise ("a//b.jpg", "a/./b.jpg", "./a.jpg":
// Django cleans it before it reaches the disk), read at most once a
// minute: a file such a key names is not an orphan, and not freed when a
// row of the clean key goes.
type unclean struct {
	mu      sync.Mutex
	at      time.Time
	files   map[string]string // the file, cleaned -> the key
	derived []owner           // the derived locations of the cleaned keys
}

// uncleanOwners reads, or returns as read within uncleanFresh, the keys
// that are not clean paths.
func (r *Reconciler) uncleanOwners(ctx context.Context) (*unclean, error) {
	u := &r.unclean
	u.mu.Lock()
	defer u.mu.Unlock()
	if !u.at.IsZero() && time.Since(u.at) < uncleanFresh {
		return u, nil
	}
	rows, err := r.db.Query(ctx, r.sql.uncleanKeys, maxUnclean+1)
	if err != nil {
		return nil, fmt.Errorf("read keys that are not clean paths: %w", err)
	}
	keys, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("read keys that are not clean paths: %w", err)
	}
	if len(keys) > maxUnclean {
		return nil, fmt.Errorf("more than %d keys of %s are not clean paths (such as %q): their files cannot be told; nothing was removed: %w",
			maxUnclean, r.table.qualified(), keys[0], ErrSetup)
	}
	u.files, u.derived = make(map[string]string, len(keys)), nil
	for _, key := range keys {
		file := strings.TrimPrefix(path.Clean("/"+key), "/")
		u.files[file] = key
		for i, p := range r.patterns {
			u.derived = append(u.derived, owner{loc: p.Location(file), pattern: i})
		}
	}
	u.at = time.Now()
	return u, nil
}

// expire makes the next uncleanOwners read the keys again.
func (u *unclean) expire() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.at = time.Time{}
}

// owns tells whether a key that is not a clean path owns file, as its own
// or through a derived location, and names the key.
func (u *unclean) owns(r *Reconciler, file string) (string, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if key, ok := u.files[file]; ok {
		return key, true
	}
	for _, o := range u.derived {
		if r.patterns[o.pattern].Owns(o.loc, file) {
			return o.loc, true
		}
	}
	return "", false
}
