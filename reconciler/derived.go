package reconciler

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	"github.com/reconcile/reconcile/internal/storage"
)

// derivedListings bounds the listings of derived files in flight: on S3
// each is a round trip.
const derivedListings = 32

// derivedFiles are the derived files of some sources that no remaining row
// maps to, ready to be removed, and the sources whose derived files could
// not be listed: their files, their own included, stay for a retry.
type derivedFiles struct {
	removals []storage.Removal
	sources  [][]int // for each removal, the sources (indexes) it derives from
	kept     int     // files found that a remaining row maps to, or names
	failed   map[int]error
}

// location is where one pattern puts one source's derived files.
type location struct {
	pattern int
	loc     string
	source  int
}

// findDerived lists the derived files of sources (removals claimed from
// the outbox, whose rows are gone) and keeps those that a remaining row
// still maps to, or names as its own file. A location two sources share
// (imagekit's folder of leaf.jpg and leaf.png) goes only with the last of
// its rows. Locations are listed once per folder, not once per source.
func (r *Reconciler) findDerived(ctx context.Context, sources []storage.Removal) (derivedFiles, error) {
	d := derivedFiles{failed: map[int]error{}}
	byFolder := map[string][]location{}
	for i, src := range sources {
		for j, p := range r.table.Derived {
			loc := p.Location(src.Key)
			folder := loc[:strings.LastIndexByte(strings.TrimSuffix(loc, "/"), '/')+1]
			byFolder[folder] = append(byFolder[folder], location{pattern: j, loc: loc, source: i})
		}
	}
	var (
		mu    sync.Mutex
		found = map[string]*derivedFile{}
		g     errgroup.Group
	)
	g.SetLimit(derivedListings)
	for _, locs := range byFolder {
		g.Go(func() error {
			files, err := r.listLocations(ctx, locs)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				for _, l := range locs {
					d.failed[l.source] = err
				}
				return nil
			}
			for file, f := range files {
				if found[file] == nil {
					found[file] = &derivedFile{modTime: f.modTime}
				}
				found[file].sources = append(found[file].sources, f.sources...)
			}
			return nil
		})
	}
	_ = g.Wait()
	if err := ctx.Err(); err != nil {
		return d, err
	}
	files := make([]string, 0, len(found))
	for file := range found {
		files = append(files, file)
	}
	slices.Sort(files)
	owned, err := r.ownedFiles(ctx, files)
	if err != nil {
		return d, err
	}
	for _, file := range files {
		if owned[file] {
			d.kept++
			continue
		}
		srcs := found[file].sources
		queued := sources[srcs[0]].QueuedAt
		for _, s := range srcs[1:] {
			// The earliest: a file written after any of its sources was
			// queued may be a new upload's.
			if q := sources[s].QueuedAt; q.Before(queued) {
				queued = q
			}
		}
		d.removals = append(d.removals, storage.Removal{Key: file, QueuedAt: queued, Listed: found[file].modTime})
		d.sources = append(d.sources, srcs)
	}
	return d, nil
}

// derivedFile is a derived file listed: the sources (indexes) whose
// locations own it, and its modification time as listed (zero on local
// disk, listed without it).
type derivedFile struct {
	sources []int
	modTime time.Time
}

// listLocations lists the files that locations in one folder own. One listing of what the locations share serves them all, unless
// it turns out to hold far more than they do (a flat folder of many
// files): the locations are then listed one by one.
func (r *Reconciler) listLocations(ctx context.Context, locs []location) (map[string]*derivedFile, error) {
	files := map[string]*derivedFile{}
	owners := map[string][]location{} // by location
	prefix := locs[0].loc
	for _, l := range locs {
		owners[l.loc] = append(owners[l.loc], l)
		prefix = commonPrefix(prefix, l.loc)
	}
	collect := func(obj storage.Object) error {
		if obj.Refused != nil {
			r.log.WarnContext(ctx, "[CLEANUP] Left a derived file that cannot be removed safely", "storage_key", obj.Key, "error", obj.Refused)
			return nil
		}
		for j, p := range r.table.Derived {
			for _, c := range p.Candidates(obj.Key) {
				for _, l := range owners[c] {
					if l.pattern != j || !p.Owns(c, obj.Key) {
						continue
					}
					f := files[obj.Key]
					if f == nil {
						f = &derivedFile{modTime: obj.ModTime}
						files[obj.Key] = f
					}
					if !slices.Contains(f.sources, l.source) {
						f.sources = append(f.sources, l.source)
					}
				}
			}
		}
		return nil
	}
	if len(owners) > 1 {
		budget := 1000 + 100*len(owners)
		err := r.store.List(ctx, storage.ListOptions{Prefix: prefix}, func(obj storage.Object) error {
			if budget--; budget < 0 {
				return errWideListing
			}
			return collect(obj)
		})
		switch {
		case err == nil:
			return files, nil
		case !errors.Is(err, errWideListing):
			return nil, fmt.Errorf("list derived files under %q: %w", prefix, err)
		}
		clear(files)
	}
	for loc := range owners {
		if err := r.store.List(ctx, storage.ListOptions{Prefix: loc}, collect); err != nil {
			return nil, fmt.Errorf("list derived files under %q: %w", loc, err)
		}
	}
	return files, nil
}

// errWideListing stops a shared listing that holds far more files than
// its locations own.
var errWideListing = errors.New("listing wider than its locations")

func commonPrefix(a, b string) string {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return a[:n]
}

// ownedFiles tells which files a row of the table owns: as its own file,
// or through a derived pattern whose location for the row's key owns it,
// whether the key spells the file's path cleanly or not.
// The database answers from the key index and the patterns' indexes.
func (r *Reconciler) ownedFiles(ctx context.Context, files []string) (map[string]bool, error) {
	owned := map[string]bool{}
	if len(files) == 0 {
		return owned, nil
	}
	args := []any{files}
	for _, p := range r.patterns {
		var cands []string
		for _, f := range files {
			cands = append(cands, p.Candidates(f)...)
		}
		slices.Sort(cands)
		args = append(args, slices.Compact(cands))
	}
	rows, err := r.db.Query(ctx, r.sql.derivedOwners, args...)
	if err != nil {
		return nil, fmt.Errorf("check derived files against the table: %w", err)
	}
	keys := map[string]bool{}
	locs := make([]map[string]bool, len(r.patterns))
	for i := range locs {
		locs[i] = map[string]bool{}
	}
	var (
		pattern int
		value   string
	)
	_, err = pgx.ForEachRow(rows, []any{&pattern, &value}, func() error {
		if pattern < 0 {
			keys[value] = true
		} else {
			locs[pattern][value] = true
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("check derived files against the table: %w", err)
	}
	u, err := r.uncleanOwners(ctx)
	if err != nil {
		return nil, err
	}
	for _, f := range files {
		_, owned[f] = u.owns(r, f)
		owned[f] = owned[f] || keys[f]
		for i, p := range r.patterns {
			for _, c := range p.Candidates(f) {
				owned[f] = owned[f] || locs[i][c] && p.Owns(c, f)
			}
		}
	}
	return owned, nil
}

// removeDerived removes the derived files of sources and says which
// sources may now lose their own file: those whose derived files are all
// gone or kept. Each source that may not gets the reason in failed.
func (r *Reconciler) removeDerived(ctx context.Context, sources []storage.Removal) (removed, kept int, failed map[int]error, err error) {
	d, err := r.findDerived(ctx, sources)
	if err != nil {
		return 0, 0, nil, err
	}
	results := r.store.Remove(ctx, d.removals)
	perSource := map[int]int{}
	for i, res := range results {
		switch {
		case res.Err != nil:
			for _, s := range d.sources[i] {
				if _, ok := d.failed[s]; !ok {
					d.failed[s] = fmt.Errorf("derived file %q: %w", d.removals[i].Key, res.Err)
				}
			}
		case res.Outcome == storage.Removed:
			removed++
			for _, s := range d.sources[i] {
				perSource[s]++
			}
		case res.Outcome == storage.Rewritten:
			d.kept++
			r.log.WarnContext(ctx, "[CLEANUP] Kept derived file written again after its source's removal was queued",
				"storage_key", d.removals[i].Key, "modified_at", res.ModTime.UTC().Format(time.RFC3339Nano))
		}
	}
	for s, n := range perSource {
		r.log.InfoContext(ctx, "[CLEANUP] Removed derived files", "storage_key", sources[s].Key, "files", n)
	}
	return removed, d.kept, d.failed, nil
}

// listChecker is a store that can tell, before any work, whether it may
// list: S3 credentials without s3:ListBucket.
type listChecker interface {
	CheckList(ctx context.Context, prefix string) error
}

// checkDerived checks what the derived patterns need: each pattern's index,
// which `reconcile migrate` builds, and permission to list where the
// pattern puts its files.
func (r *Reconciler) checkDerived(ctx context.Context) error {
	for _, p := range r.table.Derived {
		for _, key := range r.table.keyColumns() {
			name := quote(r.table.Schema, r.table.derivedIndexName(r.table.Name, key, p))
			var valid bool
			if err := r.db.QueryRow(ctx, r.sql.indexValid, name).Scan(&valid); err != nil {
				return fmt.Errorf("look for the index of table.derived %q: %w", p, err)
			}
			if !valid {
				return fmt.Errorf("index %s of table.derived %q is missing; run `reconcile migrate` first: %w", name, p, ErrSetup)
			}
		}
		if lc, ok := r.store.(listChecker); ok {
			if err := lc.CheckList(ctx, p.Prefix("")); err != nil {
				return fmt.Errorf("table.derived %q needs to list the storage: %w", p, err)
			}
		}
	}
	return nil
}
