package reconciler

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/reconcile/reconcile/internal/storage"
)

// OrphanOptions say what an orphan scan covers and does.
type OrphanOptions struct {
	// Prefixes are the folders the table owns (table.prefixes); none: the
	// folder its keys share and the derived patterns' folders under it.
	// "/" is the whole root, said on purpose.
	Prefixes []string
	// Grace is how old a file must be to be an orphan.
	Grace time.Duration
	// DryRun lists and removes nothing.
	DryRun bool
	// StartAfter resumes an interrupted scan after this key.
	StartAfter string
	// Skip is a prefix never scanned: the trash.
	Skip string
	// MaxDeletes bounds the files removed (safety.max_deletes); past it the
	// scan goes on as a dry run. 0: no bound.
	MaxDeletes int
	// Slot is the service's replication slot: when it exists, the scan
	// waits until the service has seen the DELETEs made before the scan
	// began, whose files it keeps for their grace.
	Slot string
	// Now is the clock the files' ages are measured with.
	Now func() time.Time
	// Source, when set, gives the files instead of listing the storage: an
	// S3 Inventory report, in no particular order, as of AsOf. Only files
	// modified before AsOf are judged, and a file written since is kept.
	Source func(ctx context.Context, fn func(storage.Object) error) error
	AsOf   time.Time
}

// Orphan is a file under the table's prefixes that no row owns.
type Orphan struct {
	Key     string    `json:"storage_key"`
	Reason  string    `json:"reason"`
	Size    int64     `json:"size"`
	ModTime time.Time `json:"modified_at"`
	Age     string    `json:"age"`
	// Action is what became of it: "would remove" (dry run), "removed",
	// "missing" (gone meanwhile), "kept: ..." with why, or "failed: ...".
	Action string `json:"action"`
}

// OrphanTotals sum up a scan.
type OrphanTotals struct {
	Prefixes []string `json:"prefixes"`
	Listed   int      `json:"files_listed"`
	Orphans  int      `json:"orphans"` // removed, or to remove: reclaimable
	Bytes    int64    `json:"orphan_bytes"`
	Removed  int      `json:"removed"`
	Young    int      `json:"younger_than_grace"`
	Kept     int      `json:"kept"`
	Failed   int      `json:"failed"`
	Refused  int      `json:"refused"`
	// Foreign counts old files left in folders (just under a prefix) where
	// no row owns any file: ForeignFolders names them.
	Foreign        int      `json:"left_in_foreign_folders"`
	ForeignFolders []string `json:"foreign_folders,omitempty"`
	// BudgetReached: safety.max_deletes stopped the removals; the rest
	// was only listed.
	BudgetReached bool   `json:"max_deletes_reached,omitempty"`
	LastHandled   string `json:"last_handled,omitempty"`
}

// ErrOrphanScanStopped wraps the error that cut a scan short; the message
// says how to resume.
var ErrOrphanScanStopped = errors.New("orphan scan stopped")

// orphanBatch is how many candidates are judged together: one stat of
// local files, one query to the database, one removal.
const orphanBatch = 500

// Reasons a file is an orphan.
const (
	ReasonNoRow   = "no row names it"
	ReasonDerived = "derived from a missing source"
)

// ScanOrphans lists the files under the table's prefixes, in byte order,
// beside the locations its rows own, read in the same order from the
// database: a file that no row names, and that no derived location of a
// row owns, is an orphan once it is older than the grace period. Each is
// checked against the database again just before its removal. Memory
// stays flat: neither side is held whole.
func (r *Reconciler) ScanOrphans(ctx context.Context, opts OrphanOptions, report func(Orphan) error) (OrphanTotals, error) {
	prefixes, err := r.orphanPrefixes(ctx, opts.Prefixes)
	if err != nil {
		return OrphanTotals{}, err
	}
	return r.scanOrphans(ctx, opts, prefixes, len(opts.Prefixes) == 0 || slices.Contains(prefixes, ""), report)
}

// ScanOrphans is Reconciler.ScanOrphans over the folders of every table,
// each table's Prefixes or its default ones: the locations of every
// table's rows own files under any of them. A table whose rows name no
// file yet has no default folder: it is left out, and said so. guarded
// when a table's folders are its default ones, or the whole root.
func (rs Tables) ScanOrphans(ctx context.Context, opts OrphanOptions, report func(Orphan) error) (OrphanTotals, error) {
	var all []string
	guarded := false
	for _, r := range rs {
		prefixes, err := r.orphanPrefixes(ctx, r.table.Prefixes)
		if errors.Is(err, ErrNoFiles) && len(rs) > 1 {
			r.log.WarnContext(ctx, "the orphan scan leaves out a table whose rows name no file yet: it has no folder to scan by default", "error", err)
			continue
		}
		if err != nil {
			return OrphanTotals{}, err
		}
		all = append(all, prefixes...)
		guarded = guarded || len(r.table.Prefixes) == 0 || slices.Contains(prefixes, "")
	}
	if len(all) == 0 {
		return OrphanTotals{}, fmt.Errorf("no row of any table names a file: is it the right database? Nothing was removed: %w", ErrNoFiles)
	}
	return rs[0].scanOrphans(ctx, opts, outermost(all), guarded, report)
}

// scanOrphans scans prefixes, which outermost has sorted; guarded: the
// folder guard is on.
func (r *Reconciler) scanOrphans(ctx context.Context, opts OrphanOptions, prefixes []string, guarded bool, report func(Orphan) error) (OrphanTotals, error) {
	var totals OrphanTotals
	if opts.Now == nil {
		opts.Now = time.Now
	}
	totals.Prefixes = prefixes
	if !opts.DryRun {
		if err := r.ensureFiles(ctx); err != nil {
			return totals, err
		}
	}
	s := &orphanScan{r: r, opts: opts, report: report, totals: &totals, derivedRe: make([]*regexp.Regexp, len(r.patterns)),
		prefixes: prefixes, topOwned: map[string]bool{}, waitedFor: map[string]bool{},
		guarded: guarded}
	for i, p := range r.patterns {
		s.derivedRe[i] = p.Regexp()
	}
	r.unclean.expire() // read afresh for the scan
	if _, err := r.uncleanOwners(ctx); err != nil {
		return totals, err
	}
	if opts.Source != nil {
		if err := s.fromSource(ctx, prefixes); err != nil {
			return totals, fmt.Errorf("%w: %w", ErrOrphanScanStopped, err)
		}
		return totals, nil
	}
	for _, prefix := range prefixes {
		if opts.StartAfter != "" && opts.StartAfter > prefix && !strings.HasPrefix(opts.StartAfter, prefix) {
			continue // wholly before the resume point
		}
		if err := s.scan(ctx, prefix); err != nil {
			if totals.LastHandled != "" {
				return totals, fmt.Errorf("%w: %w; resume with --start-after %q", ErrOrphanScanStopped, err, totals.LastHandled)
			}
			return totals, fmt.Errorf("%w: %w", ErrOrphanScanStopped, err)
		}
	}
	return totals, nil
}

// orphanPrefixes are the configured prefixes, or the default ones, sorted,
// without one inside another.
func (r *Reconciler) orphanPrefixes(ctx context.Context, configured []string) ([]string, error) {
	var prefixes []string
	for _, p := range configured {
		if p == "/" {
			p = ""
		} else if !strings.HasSuffix(p, "/") {
			p += "/"
		}
		prefixes = append(prefixes, p)
	}
	if len(configured) == 0 {
		base, err := r.uploadFolder(ctx)
		if err != nil {
			return nil, err
		}
		prefixes = append(prefixes, base)
		for _, p := range r.table.Derived {
			prefix := p.Prefix(base)
			if prefix == "" {
				return nil, fmt.Errorf("table.derived %q may put files anywhere in the storage: set table.prefixes to the folders the table owns (\"/\" for the whole root): %w", p, ErrSetup)
			}
			prefixes = append(prefixes, prefix)
		}
	}
	return outermost(prefixes), nil
}

// outermost sorts prefixes, and leaves out those inside another.
func outermost(prefixes []string) []string {
	slices.Sort(prefixes)
	var out []string
	for _, p := range prefixes {
		if len(out) == 0 || !strings.HasPrefix(p, out[len(out)-1]) {
			out = append(out, p)
		}
	}
	return out
}

// uploadFolder is the folder the table's keys share, up to the first
// element of digits (Django's upload_to "forum/attachments/%Y/%m/%d/"
// gives "forum/attachments/"). The whole root is never taken by default.
func (r *Reconciler) uploadFolder(ctx context.Context) (string, error) {
	var lo, hi string
	if err := r.db.QueryRow(ctx, r.sql.keyRange).Scan(&lo, &hi); err != nil {
		return "", fmt.Errorf("read the range of the table's keys: %w", err)
	}
	if hi == "" {
		return "", fmt.Errorf("no row of %s names a file: is it the right database and table? Nothing was removed: %w", r.table.qualified(), ErrNoFiles)
	}
	shared := ""
	for _, elem := range strings.Split(commonPrefix(lo, hi), "/") {
		if !strings.HasPrefix(hi[len(shared):], elem+"/") || strings.Trim(elem, "0123456789") == "" {
			break
		}
		shared += elem + "/"
	}
	if shared == "" {
		return "", fmt.Errorf("the keys of %s share no folder (from %q to %q): set table.prefixes to the folders the table owns (\"/\" for the whole root): %w",
			r.table.qualified(), lo, hi, ErrSetup)
	}
	return shared, nil
}

// orphanScan is the state of one scan.
type orphanScan struct {
	r         *Reconciler
	opts      OrphanOptions
	report    func(Orphan) error
	totals    *OrphanTotals
	derivedRe []*regexp.Regexp
	pending   []storage.Object // unowned files awaiting judgement
	heldSince time.Time        // when the first of them was listed
	prefixes  []string         // what the scan covers
	topOwned  map[string]bool  // folders just under a prefix: does a row own a file there?
	lastTop   string           // the last such folder seen owned in the listing
	waitedFor map[string]bool  // write transactions waited for once
	startLSN  string           // the WAL's end when the rows' locations were last read
	behindAt  string           // the startLSN behind was asked for
	behind    string           // why the service's DELETEs up to behindAt are not known ("": they are)
	guarded   bool             // files in folders where no row owns any stay: the prefixes were not named on purpose
	lastWhy   string           // the last reason files were kept for, logged once
	listed    string           // the last key listed
}

// owner is a location of a row, open while the listing is inside it.
type owner struct {
	loc     string
	pattern int // -1: a row's own file
}

// scan merges the listing under prefix with the locations the rows own.
func (s *orphanScan) scan(ctx context.Context, prefix string) error {
	if err := s.markWAL(ctx); err != nil {
		return err
	}
	rows, err := s.r.db.Query(ctx, s.r.sql.locations, prefix)
	if err != nil {
		return fmt.Errorf("read the table's locations under %q: %w", prefix, err)
	}
	defer rows.Close()
	var (
		next    owner
		more    = true
		open    []owner
		started bool
	)
	advance := func() error {
		if more = rows.Next(); more {
			return rows.Scan(&next.loc, &next.pattern)
		}
		return rows.Err()
	}
	if err := advance(); err != nil {
		return fmt.Errorf("read the table's locations under %q: %w", prefix, err)
	}
	empty := !more
	err = s.r.store.List(ctx, storage.ListOptions{Prefix: prefix, StartAfter: s.opts.StartAfter}, func(obj storage.Object) error {
		if !started && empty && !s.opts.DryRun {
			// Every file would look orphaned: a wrong prefix, database or
			// table, more likely than a table that owns nothing there.
			return fmt.Errorf("no row of %s owns a file under %q, yet the storage holds %q there: is it the right database, table and prefix? Nothing was removed: %w",
				s.r.table.qualified(), prefix, obj.Key, ErrNoFiles)
		}
		started = true
		s.listed = obj.Key
		if s.opts.Skip != "" && strings.HasPrefix(obj.Key, s.opts.Skip) {
			return nil
		}
		s.totals.Listed++
		for more && next.loc <= obj.Key {
			open = push(open, next)
			if err := advance(); err != nil {
				return fmt.Errorf("read the table's locations under %q: %w", prefix, err)
			}
		}
		for len(open) > 0 && !strings.HasPrefix(obj.Key, open[len(open)-1].loc) {
			open = open[:len(open)-1]
		}
		if s.owned(open, obj.Key) {
			if s.guarded {
				if top, _ := s.top(obj.Key); top != "" && top != s.lastTop {
					s.topOwned[top], s.lastTop = true, top
				}
			}
			if len(s.pending) == 0 {
				s.totals.LastHandled = obj.Key
			}
			return nil
		}
		return s.hold(ctx, obj)
	})
	if err != nil {
		return err
	}
	return s.judge(ctx)
}

// fromSource judges the files a report gives, under the prefixes: with no
// order to merge in, every one is asked of the database, in batches.
func (s *orphanScan) fromSource(ctx context.Context, prefixes []string) error {
	if err := s.markWAL(ctx); err != nil {
		return err
	}
	for _, prefix := range prefixes {
		owns, err := s.ownsUnder(ctx, prefix)
		if err != nil {
			return err
		}
		if !owns && !s.opts.DryRun {
			// Every file there would look orphaned.
			return fmt.Errorf("no row of %s owns a file under %q: is it the right database, table and prefix? Nothing was removed: %w",
				s.r.table.qualified(), prefix, ErrNoFiles)
		}
	}
	err := s.opts.Source(ctx, func(obj storage.Object) error {
		under := slices.ContainsFunc(prefixes, func(p string) bool { return strings.HasPrefix(obj.Key, p) })
		if !under || s.opts.Skip != "" && strings.HasPrefix(obj.Key, s.opts.Skip) {
			return nil
		}
		s.totals.Listed++
		if !obj.ModTime.Before(s.opts.AsOf) {
			// Changed while the report was made: it may be gone, or
			// another file, by now.
			s.totals.Young++
			return nil
		}
		return s.hold(ctx, obj)
	})
	if err != nil {
		return err
	}
	return s.judge(ctx)
}

// hold keeps a file for judgement, judging once a batch is full.
func (s *orphanScan) hold(ctx context.Context, obj storage.Object) error {
	if len(s.pending) == 0 {
		s.heldSince = s.opts.Now()
	}
	s.pending = append(s.pending, obj)
	if len(s.pending) >= orphanBatch {
		return s.judge(ctx)
	}
	return nil
}

// push opens loc, closing first the open locations it is not inside of:
// the open ones are then always prefixes of one another, and of the file
// being looked at.
func push(open []owner, o owner) []owner {
	for len(open) > 0 && !strings.HasPrefix(o.loc, open[len(open)-1].loc) {
		open = open[:len(open)-1]
	}
	return append(open, o)
}

// owned tells whether an open location owns key.
func (s *orphanScan) owned(open []owner, key string) bool {
	for _, o := range open {
		switch {
		case o.pattern < 0 && o.loc == key:
			return true
		case o.pattern >= 0 && s.r.patterns[o.pattern].Owns(o.loc, key):
			return true
		}
	}
	return false
}

// judge decides the pending files: too young, owned after all (the
// database asked again), or orphans, removed unless this is a dry run.
func (s *orphanScan) judge(ctx context.Context) error {
	if len(s.pending) == 0 {
		return nil
	}
	batch := s.pending
	s.pending = nil
	changed, err := s.look(ctx, batch)
	if err != nil {
		return err
	}
	old, err := s.oldOrphans(ctx, batch, changed)
	if err != nil {
		return err
	}
	if old, err = s.holdBack(ctx, old); err != nil {
		return err
	}
	// Asked again just before the removal: a row committed since the
	// listing owns its file.
	keys := make([]string, len(old))
	for i, o := range old {
		keys[i] = o.Key
	}
	owned, err := s.r.ownedFiles(ctx, keys)
	if err != nil {
		return err
	}
	orphans := slices.DeleteFunc(old, func(o Orphan) bool { return owned[o.Key] })
	if err := s.remove(ctx, orphans); err != nil {
		return err
	}
	if s.opts.Source == nil {
		s.totals.LastHandled = s.listed
	}
	return ctx.Err()
}

// look fills in the times and sizes a local listing does not carry, for
// the candidates only, and returns the status change times that come after
// the modification times.
func (s *orphanScan) look(ctx context.Context, batch []storage.Object) (map[string]time.Time, error) {
	var keys []string
	for _, obj := range batch {
		if obj.Refused == nil && obj.ModTime.IsZero() {
			keys = append(keys, obj.Key)
		}
	}
	changed := map[string]time.Time{}
	if len(keys) == 0 {
		return changed, nil
	}
	infos := s.r.store.Stat(ctx, keys)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	byKey := make(map[string]storage.FileInfo, len(keys))
	for i, k := range keys {
		byKey[k] = infos[i]
	}
	for i, obj := range batch {
		info, ok := byKey[obj.Key]
		if !ok {
			continue
		}
		batch[i].ModTime, batch[i].Size = info.ModTime, info.Size
		if info.Changed.After(info.ModTime) {
			// A copy that kept an old modification time (an import whose
			// rows are still to come) is as young as the copy.
			changed[obj.Key] = info.Changed
		}
		switch {
		case info.Err != nil:
			batch[i].Refused = info.Err
		case !info.Exists:
			batch[i].Refused = errGone
		}
	}
	return changed, nil
}

// oldOrphans reports the refused files of a batch, counts the young ones,
// leaves those of folders no row owns a file in, and returns the others.
func (s *orphanScan) oldOrphans(ctx context.Context, batch []storage.Object, changed map[string]time.Time) ([]Orphan, error) {
	now := s.opts.Now()
	var old []Orphan
	for _, obj := range batch {
		o := Orphan{Key: obj.Key, Reason: s.reason(obj.Key), Size: obj.Size, ModTime: obj.ModTime}
		switch {
		case errors.Is(obj.Refused, errGone):
			continue
		case obj.Refused != nil:
			s.totals.Refused++
			o.Action = "kept: " + obj.Refused.Error()
			if err := s.report(o); err != nil {
				return nil, err
			}
			continue
		case now.Sub(obj.ModTime) < s.opts.Grace, now.Sub(changed[obj.Key]) < s.opts.Grace:
			s.totals.Young++
			continue
		}
		o.Age = now.Sub(obj.ModTime).Round(time.Second).String()
		if s.guarded {
			top, root := s.guardFolder(o.Key)
			owns := !root
			if top != "" {
				var err error
				if owns, err = s.ownsUnder(ctx, top); err != nil {
					return nil, err
				}
			}
			if !owns {
				s.foreign(cmp.Or(top, "/"))
				continue
			}
		}
		old = append(old, o)
	}
	return old, nil
}

// holdBack keeps, and reports, every file of old while a transaction open
// now may hold its row uncommitted, or while the service may not have
// queued a row deleted outright that owns it; it returns old otherwise.
func (s *orphanScan) holdBack(ctx context.Context, old []Orphan) ([]Orphan, error) {
	if len(old) == 0 {
		return nil, nil
	}
	xid, err := s.openWriter(ctx)
	if err != nil {
		return nil, err
	}
	why := ""
	if xid != "" {
		why = fmt.Sprintf("transaction %s of the database, open for over %s, may still commit a row that names it", xid, txWait)
	} else if why, err = s.serviceBehind(ctx); err != nil {
		return nil, err
	}
	if why == "" {
		return old, nil
	}
	if why != s.lastWhy {
		s.lastWhy = why
		s.r.log.WarnContext(ctx, "[CLEANUP] Orphan scan keeps the files it judges: "+why, "files", len(old))
	}
	for _, o := range old {
		s.totals.Kept++
		o.Action = "kept: " + why
		if err := s.report(o); err != nil {
			return nil, err
		}
	}
	return nil, nil
}

// remove removes the orphans, within safety.max_deletes, unless this is a
// dry run, and reports each. A file written after it was seen is another
// file: the listing's files were seen when listed (the times an S3 listing
// gives are of then), a report's when it was made.
func (s *orphanScan) remove(ctx context.Context, orphans []Orphan) error {
	queuedAt := s.heldSince
	if s.opts.Source != nil {
		queuedAt = s.opts.AsOf
	}
	n := 0 // the orphans to remove
	if !s.opts.DryRun {
		n = len(orphans)
		if left := s.opts.MaxDeletes - s.totals.Removed; s.opts.MaxDeletes > 0 && n > left {
			for i := left; i < len(orphans); i++ {
				orphans[i].Action = "would remove (safety.max_deletes reached)"
			}
			n, s.opts.DryRun, s.totals.BudgetReached = left, true, true
		}
	}
	if n > 0 {
		removals := make([]storage.Removal, n)
		for i, o := range orphans[:n] {
			removals[i] = storage.Removal{Key: o.Key, QueuedAt: queuedAt}
		}
		for i, res := range s.r.store.Remove(ctx, removals) {
			o := &orphans[i]
			switch {
			case res.Err != nil:
				s.totals.Failed++
				o.Action = "failed: " + res.Err.Error()
			case res.Outcome == storage.Removed:
				s.totals.Removed++
				o.Action = "removed"
			case res.Outcome == storage.Missing:
				o.Action = "missing"
			default:
				s.totals.Kept++
				o.Action = "kept: written again since it was listed"
			}
		}
	}
	for _, o := range orphans {
		if o.Action == "" {
			o.Action = "would remove"
		}
		if o.Action == "removed" || strings.HasPrefix(o.Action, "would remove") {
			s.totals.Orphans++
			s.totals.Bytes += o.Size
		}
		if err := s.report(o); err != nil {
			return err
		}
	}
	return nil
}

// txWait bounds the wait for a write transaction open at a recheck: past
// it, the files judged while it is open stay.
const txWait = 10 * time.Second

// openWriter returns a write transaction of this database that is open at
// the recheck and was so txWait ago, or "". A row it inserted is not seen
// by the recheck until it commits: a bulk import may hold the rows of old
// files. Each is waited for once; one that outlasts the wait keeps the
// files judged while it is open.
func (s *orphanScan) openWriter(ctx context.Context) (string, error) {
	// Those of this database: pg_locks and the sessions' databases are
	// shown to every role, the sessions' xids are not.
	read := func() ([]string, error) {
		rows, err := s.r.db.Query(ctx, `
			SELECT l.transactionid::text FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
			WHERE l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock' AND l.granted
			  AND a.datname = current_database() AND a.pid <> pg_backend_pid()
			UNION ALL
			SELECT transaction::text FROM pg_prepared_xacts WHERE database = current_database()`)
		if err != nil {
			return nil, fmt.Errorf("read the transactions in progress: %w", err)
		}
		return pgx.CollectRows(rows, pgx.RowTo[string])
	}
	open, err := read()
	if err != nil {
		return "", err
	}
	var waiting []string
	for _, xid := range open {
		if !s.waitedFor[xid] {
			waiting = append(waiting, xid)
		}
	}
	for deadline := time.Now().Add(txWait); len(waiting) > 0 && time.Now().Before(deadline); {
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
		now, err := read()
		if err != nil {
			return "", err
		}
		waiting = slices.DeleteFunc(waiting, func(xid string) bool { return !slices.Contains(now, xid) })
		open = slices.DeleteFunc(open, func(xid string) bool { return !slices.Contains(now, xid) })
	}
	for _, xid := range open {
		if len(waiting) == 0 || slices.Contains(waiting, xid) {
			s.waitedFor[xid] = true
		}
	}
	if len(open) == 0 {
		return "", nil
	}
	return slices.Min(open), nil
}

// markWAL notes the WAL's end as the rows' locations are about to be read:
// the DELETEs before it are the ones the service must have seen.
func (s *orphanScan) markWAL(ctx context.Context) error {
	if err := s.r.db.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&s.startLSN); err != nil {
		return fmt.Errorf("read the WAL position: %w", err)
	}
	return nil
}

// serviceWait bounds the wait for the service to see the DELETEs made
// before the scan began: it reports its position every
// replication.status_interval (10 s by default).
const serviceWait = 30 * time.Second

// serviceBehind says why the rows deleted outright before the rows'
// locations were read are not all known (their files, which may be put
// back, wait out their grace in the outbox once the service has seen their
// DELETEs), waiting for the service once for each read; "" when they are,
// or when there is no service.
func (s *orphanScan) serviceBehind(ctx context.Context) (string, error) {
	if s.behindAt == s.startLSN {
		return s.behind, nil
	}
	why := ""
	if s.opts.Slot != "" {
		for deadline := time.Now().Add(serviceWait); ; {
			var exists, caughtUp, active bool
			err := s.r.db.QueryRow(ctx, `
				SELECT count(*) > 0, coalesce(bool_and(confirmed_flush_lsn >= $2::pg_lsn), false), coalesce(bool_and(active), false)
				FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database()`, s.opts.Slot, s.startLSN).Scan(&exists, &caughtUp, &active)
			if err != nil {
				return "", fmt.Errorf("read replication slot %s: %w", s.opts.Slot, err)
			}
			if !exists || caughtUp {
				break
			}
			if time.Now().After(deadline) {
				state := "is not running"
				if active {
					state = "is behind"
				}
				why = fmt.Sprintf("the service (replication slot %s) %s: a row deleted outright before the scan may be put back within orphans.grace (drop the slot if the service is retired)", s.opts.Slot, state)
				break
			}
			select {
			case <-ctx.Done():
				return "", ctx.Err()
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	s.behindAt, s.behind = s.startLSN, why
	return why, nil
}

// top is the folder just under the scan's prefix that holds key: a year of
// Django's dated folders, or another model's folder under a shared one; ""
// for a file right under the prefix, or under none. root: that prefix is
// the whole root.
func (s *orphanScan) top(key string) (folder string, root bool) {
	for _, p := range s.prefixes {
		if rest, ok := strings.CutPrefix(key, p); ok {
			if i := strings.IndexByte(rest, '/'); i >= 0 {
				return p + rest[:i+1], false
			}
			return "", p == ""
		}
	}
	return "", false
}

// guardFolder is the folder whose files the table must own for key to be
// judged: the folder just under the prefix that holds key or, for a
// derived file in a folder of its pattern's own, the one that would hold
// its source (CACHE/images/avatars/alice/1a2b.jpg is another model's when
// the table owns nothing under avatars/). root: key, or its source, lies
// right under the whole root, where nothing vouches for it.
func (s *orphanScan) guardFolder(key string) (folder string, root bool) {
	for _, p := range s.r.patterns {
		lead := p.Prefix("")
		if lead == "" || !strings.HasPrefix(key, lead) {
			continue
		}
		// The source of the deepest location that could own key.
		if cands := p.Candidates(key); len(cands) > 0 {
			if folder, root := s.top(p.Source(cands[len(cands)-1])); folder != "" || root {
				return folder, root
			}
		}
	}
	return s.top(key)
}

// ownsUnder tells whether a row owns any file under folder, as the listing
// showed or else the database says. A folder where none does is not the
// table's (another model's files under a shared prefix), or this is the
// wrong database: its files are left alone.
func (s *orphanScan) ownsUnder(ctx context.Context, folder string) (bool, error) {
	if owns, ok := s.topOwned[folder]; ok {
		return owns, nil
	}
	var owns bool
	if err := s.r.db.QueryRow(ctx, s.r.sql.ownsUnder, folder).Scan(&owns); err != nil {
		return false, fmt.Errorf("read the table's locations under %q: %w", folder, err)
	}
	s.topOwned[folder] = owns
	return owns, nil
}

// foreign counts a file left in a folder no row owns a file under, and
// names the folder once.
func (s *orphanScan) foreign(folder string) {
	s.totals.Foreign++
	if !slices.Contains(s.totals.ForeignFolders, folder) && len(s.totals.ForeignFolders) < maxForeignFolders {
		s.totals.ForeignFolders = append(s.totals.ForeignFolders, folder)
		s.r.log.Warn("[CLEANUP] Left files no row owns in a folder where no row owns any file: another model's, or the wrong database? Name the table's folders in table.prefixes",
			"folder", folder)
	}
}

// maxForeignFolders bounds the folders the totals name.
const maxForeignFolders = 100

// errGone marks a candidate found gone when looked at: nothing to do.
var errGone = errors.New("gone")

// reason says why a file is an orphan: derived, when a derived pattern
// could have named it.
func (s *orphanScan) reason(key string) string {
	for i, re := range s.derivedRe {
		// A pattern beside its sources ({key}.*) could have named any
		// file with a dot: only one of a folder of its own says so.
		if s.r.patterns[i].Prefix("") != "" && re.MatchString(key) {
			return ReasonDerived + " (" + s.r.patterns[i].String() + ")"
		}
	}
	return ReasonNoRow
}
