package index

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// far is a cutoff past every entry of the tests.
var far = time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC)

// testEntries are n entries whose id order is their due order.
func testEntries(n int) []Entry {
	base := time.Date(2025, 10, 4, 0, 0, 0, 0, time.UTC)
	entries := make([]Entry, n)
	for i := range entries {
		entries[i] = Entry{
			ID:        fmt.Sprintf("id-%06d", i),
			DeletedAt: base.Add(time.Duration(i) * time.Minute),
			Key:       fmt.Sprintf("forum/attachments/2025/10/04/%06d.jpg", i),
		}
	}
	return entries
}

// rescan fills x as a rescan does.
func rescan(t *testing.T, x *Index, entries []Entry) {
	t.Helper()
	if err := x.Reset(); err != nil {
		t.Fatal(err)
	}
	if err := x.LoadEntries(entries); err != nil {
		t.Fatal(err)
	}
	if err := x.LoadDue(entries); err != nil {
		t.Fatal(err)
	}
	filled(t, x)
}

var templateFile struct {
	sync.Mutex
	b []byte
}

// template is the file of an index of 20,000 entries, filled by a rescan
// and closed: each bucket spans a few hundred pages.
func template(t *testing.T) []byte {
	t.Helper()
	templateFile.Lock()
	defer templateFile.Unlock()
	if templateFile.b != nil {
		return templateFile.b
	}
	path := filepath.Join(t.TempDir(), "template.db")
	x, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	rescan(t, x, testEntries(20000))
	if err := x.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// bbolt grows a small file to its map, a power of two long; cut the
	// pages past the last one in use (and one more), so that the map goes
	// on past the end of the file and a wild leaf can point there.
	l := readLayout(t, path)
	if cut := int((l.end + 1) * uint64(l.pageSize)); cut < len(b) {
		b = b[:cut]
	}
	templateFile.b = b
	return b
}

func write(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// layout is what the newest meta page of a bbolt file says.
type layout struct {
	pageSize int64
	// Page ids: the root bucket's page, which lists the buckets (and holds
	// the meta bucket, a small one, inline), the freelist's, and the
	// first past the end of the file's pages.
	root, freelist, end uint64
}

// readLayout reads the meta pages (bbolt's page header is 16 bytes; a
// meta page then holds magic, version, page size, flags, the root
// bucket's page and sequence, the freelist's page, the end and the txid,
// in native byte order).
func readLayout(t *testing.T, path string) layout {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	meta := func(at int) (layout, uint64) {
		m := b[at+16:]
		return layout{int64(le.Uint32(m[8:])), le.Uint64(m[16:]), le.Uint64(m[32:]), le.Uint64(m[40:])}, le.Uint64(m[48:])
	}
	l0, tx0 := meta(0)
	l1, tx1 := meta(int(l0.pageSize))
	if tx1 > tx0 {
		return l1
	}
	return l0
}

// dataPages lists every page past the two meta pages but the freelist's
// and, unless withRoot, the root bucket's: with that one intact the index
// opens, and only the buckets' pages hold garbage.
func (l layout) dataPages(withRoot bool) []uint64 {
	var ids []uint64
	for id := uint64(2); id < l.end; id++ {
		if id != l.freelist && (withRoot || id != l.root) {
			ids = append(ids, id)
		}
	}
	return ids
}

// garbage fills page p, whose id is id, of a file of fileSize bytes in
// pages of pageSize.
type garbage func(p []byte, id uint64, fileSize, pageSize int64)

var kinds = map[string]garbage{
	// What a disk returning the wrong blocks gives.
	"random": func(p []byte, id uint64, _, _ int64) { fill(p, id) },
	// A page that names itself right but has no valid type.
	"bad type": func(p []byte, id uint64, _, _ int64) {
		fill(p, id)
		header(p, id, 7, 0)
	},
	// A leaf whose one element points past the end of the file, into the
	// rest of bbolt's map of it (the map is a power of two long, the file
	// is not): reading it faults (SIGBUS) instead of panicking, unless
	// the index asks the runtime for a panic. (A pointer further off could
	// land in some other mapping and read garbage without a fault.)
	"wild leaf": func(p []byte, id uint64, fileSize, pageSize int64) {
		fill(p, id)
		header(p, id, 2, 1)
		le := binary.LittleEndian
		elem := int64(id)*pageSize + 16
		le.PutUint32(p[16:], 0)                                // flags
		le.PutUint32(p[20:], uint32(fileSize+pageSize/2-elem)) // position of the key, from the element
		le.PutUint32(p[24:], 8)                                // key size
		le.PutUint32(p[28:], 8)                                // value size
	},
}

func fill(p []byte, id uint64) {
	r := rand.New(rand.NewPCG(id, 1))
	for i := range p {
		p[i] = byte(r.Uint32())
	}
}

func header(p []byte, id uint64, flags, count uint16) {
	le := binary.LittleEndian
	le.PutUint64(p, id)
	le.PutUint16(p[8:], flags)
	le.PutUint16(p[10:], count)
	le.PutUint32(p[12:], 0) // overflow
}

// corrupt writes garbage over the pages ids of the file at path. An index
// that has the file open sees it at once: bbolt maps the file shared.
func corrupt(t *testing.T, path string, l layout, g garbage, ids ...uint64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if n := fi.Size(); n&(n-1) == 0 {
		t.Fatalf("the file is %d bytes, a power of two: bbolt's map ends with it, and a wild leaf could not point past it", n)
	}
	p := make([]byte, l.pageSize)
	for _, id := range ids {
		g(p, id, fi.Size(), l.pageSize)
		if _, err := f.WriteAt(p, int64(id)*l.pageSize); err != nil {
			t.Fatal(err)
		}
	}
}

// discards records the calls of OnDiscard.
type discards struct {
	mu      sync.Mutex
	moved   []string
	reasons []error
}

func watch(x *Index) *discards {
	d := &discards{}
	x.OnDiscard(func(movedTo string, reason error) {
		d.mu.Lock()
		defer d.mu.Unlock()
		d.moved, d.reasons = append(d.moved, movedTo), append(d.reasons, reason)
	})
	return d
}

func (d *discards) calls() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.moved...)
}

// checkSetAside checks that err reports one heal, which OnDiscard saw,
// that moved the corrupt file (size bytes) where both say, and asked
// walks to start over.
func checkSetAside(t *testing.T, x *Index, err error, d *discards, size int64) {
	t.Helper()
	calls := d.calls()
	if len(calls) != 1 || d.reasons[0] == nil {
		t.Fatalf("OnDiscard called %d times: %q, %v", len(calls), calls, d.reasons)
	}
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "moved aside to "+calls[0]) {
		t.Fatalf("error %v; want ErrCorrupt naming %s", err, calls[0])
	}
	if fi, err := os.Stat(calls[0]); err != nil || fi.Size() != size {
		t.Fatalf("the corrupt file was not kept at %s: %v", calls[0], err)
	}
	if _, restart := x.TakeEarliest(); !restart {
		t.Error("the heal did not ask walks to start over")
	}
}

func size(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// checkEmptyUntilRescan checks that a healed index is empty, claims no
// stream position, refuses changes until a rescan fills it, and then
// works.
func checkEmptyUntilRescan(t *testing.T, x *Index) {
	t.Helper()
	if st, err := x.State(); err != nil || st != (State{}) {
		t.Fatalf("state after the heal: %+v, %v", st, err)
	}
	if got := all(t, x); len(got) != 0 {
		t.Fatalf("%d entries after the heal", len(got))
	}
	change := []Change{{Op: Upsert, Entry: Entry{ID: "new", DeletedAt: far.Add(-time.Hour), Key: "new.jpg"}}}
	if err := x.Apply(change, 200); !errors.Is(err, ErrNotFilled) {
		t.Fatalf("Apply after the heal: %v; want ErrNotFilled", err)
	}
	entries := testEntries(1000)
	rescan(t, x, entries)
	if err := x.Apply(change, 200); err != nil {
		t.Fatal(err)
	}
	if got := all(t, x); len(got) != len(entries)+1 || got[0] != entries[0] {
		t.Fatalf("after the rescan: %d entries, first %+v", len(got), got[0])
	}
	if err := x.Check(); err != nil {
		t.Fatal(err)
	}
}

func TestOpenSetsAsideAnIndexWithGarbagePages(t *testing.T) {
	tmpl := template(t)
	for name, g := range kinds {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "index.db")
			write(t, path, tmpl)
			l := readLayout(t, path)
			corrupt(t, path, l, g, l.dataPages(true)...)
			x := open(t, path)
			if fi, err := os.Stat(x.Discarded); x.Discarded == "" || err != nil || fi.Size() != int64(len(tmpl)) {
				t.Fatalf("Discarded %q: %v", x.Discarded, err)
			}
			checkEmptyUntilRescan(t, x)
		})
	}
}

// A file shorter than bbolt's two meta pages (a truncated copy, another
// file written over it) is set aside too: bbolt refuses it with a plain
// error, which would stop every run.
func TestOpenSetsAsideAShortFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "index.db")
	if err := os.WriteFile(path, []byte("# HELP reconcile_purged_rows_total Rows hard-deleted.\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	x := open(t, path)
	if x.Discarded == "" {
		t.Fatal("the short file was not set aside")
	}
	checkEmptyUntilRescan(t, x)
}

func TestOperationsHealAnIndexWhoseBucketsAreGarbage(t *testing.T) {
	tmpl := template(t)
	change := []Change{{Op: Upsert, Entry: Entry{ID: "id-000042", DeletedAt: far, Key: "k"}}}
	ops := map[string]func(x *Index) error{
		"Due": func(x *Index) error {
			_, _, err := x.Due(nil, far, 100)
			return err
		},
		"Next": func(x *Index) error {
			_, _, err := x.Next(nil)
			return err
		},
		"Apply":       func(x *Index) error { return x.Apply(change, 300) },
		"LoadEntries": func(x *Index) error { return x.LoadEntries(testEntries(10)) },
		"LoadDue":     func(x *Index) error { return x.LoadDue(testEntries(10)) },
	}
	// Every operation on random garbage; the other kinds on a read and
	// a write.
	cases := [][2]string{{"bad type", "Due"}, {"bad type", "Apply"}, {"wild leaf", "Due"}, {"wild leaf", "Apply"}}
	for op := range ops {
		cases = append(cases, [2]string{"random", op})
	}
	for _, c := range cases {
		kind, op := c[0], c[1]
		g, do := kinds[kind], ops[op]
		t.Run(kind+"/"+op, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "index.db")
			write(t, path, tmpl)
			l := readLayout(t, path)
			corrupt(t, path, l, g, l.dataPages(false)...)
			x := open(t, path)
			if x.Discarded != "" {
				t.Fatalf("the root page is intact, yet Open set the file aside: %s", x.Discarded)
			}
			d := watch(x)
			checkSetAside(t, x, do(x), d, int64(len(tmpl)))
			// The loads of a rescan whose index was lost go nowhere.
			if err := x.LoadEntries(testEntries(10)); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("LoadEntries after the heal, without Reset: %v; want ErrCorrupt", err)
			}
			if err := x.Rescanned("o", 1, time.Now()); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Rescanned after the heal, without Reset: %v; want ErrCorrupt", err)
			}
			checkEmptyUntilRescan(t, x)
		})
	}
}

func TestResetOfAnIndexWhoseBucketsAreGarbage(t *testing.T) {
	tmpl := template(t)
	path := filepath.Join(t.TempDir(), "index.db")
	write(t, path, tmpl)
	l := readLayout(t, path)
	corrupt(t, path, l, kinds["random"], l.dataPages(false)...)
	x := open(t, path)
	d := watch(x)
	// DeleteBucket walks the old pages: the heal leaves what Reset is for.
	if err := x.Reset(); err != nil {
		t.Fatalf("Reset: %v", err)
	}
	if calls := d.calls(); len(calls) != 1 {
		t.Fatalf("OnDiscard called %d times", len(calls))
	}
	entries := testEntries(20000)
	if err := x.LoadEntries(entries); err != nil {
		t.Fatal(err)
	}
	if err := x.LoadDue(entries); err != nil {
		t.Fatal(err)
	}
	filled(t, x)
	if got := all(t, x); len(got) != len(entries) {
		t.Fatalf("%d entries after the rescan", len(got))
	}
}

func TestGoroutinesThatFindTheSameGarbageHealOnce(t *testing.T) {
	tmpl := template(t)
	ops := []func(x *Index) error{
		func(x *Index) error {
			_, _, err := x.Due(nil, far, 100)
			return err
		},
		func(x *Index) error {
			_, _, err := x.Next(nil)
			return err
		},
		func(x *Index) error {
			return x.Apply([]Change{{Op: Remove, Entry: Entry{ID: "id-000042"}}}, 300)
		},
	}
	for round := range 3 {
		dir := t.TempDir()
		path := filepath.Join(dir, "index.db")
		write(t, path, tmpl)
		l := readLayout(t, path)
		corrupt(t, path, l, kinds["random"], l.dataPages(false)...)
		x := open(t, path)
		d := watch(x)
		start := make(chan struct{})
		errs := make([]error, 8)
		var wg sync.WaitGroup
		for i := range errs {
			wg.Go(func() {
				<-start
				errs[i] = ops[i%len(ops)](x)
			})
		}
		close(start)
		wg.Wait()
		corrupts := 0
		for i, err := range errs {
			switch {
			case errors.Is(err, ErrCorrupt):
				corrupts++
			case err != nil && !errors.Is(err, ErrNotFilled):
				t.Errorf("round %d, goroutine %d: %v", round, i, err)
			}
		}
		aside, _ := filepath.Glob(path + ".corrupt-*")
		if calls := d.calls(); corrupts == 0 || len(calls) != 1 || len(aside) != 1 {
			t.Fatalf("round %d: %d ErrCorrupt, OnDiscard %q, files set aside %q; want one heal", round, corrupts, calls, aside)
		}
	}
}

func TestAHealFoundTwiceHappensOnce(t *testing.T) {
	path := filepath.Join(t.TempDir(), "index.db")
	x := open(t, path)
	d := watch(x)
	// Two operations that ran on generation 0 and panicked.
	first := x.heal(0, errors.New("invalid page type"), false)
	second := x.heal(0, errors.New("invalid page type"), false)
	if !errors.Is(first, ErrCorrupt) || !errors.Is(second, ErrCorrupt) || !strings.Contains(second.Error(), "another operation") {
		t.Fatalf("heals: %v; %v", first, second)
	}
	aside, _ := filepath.Glob(path + ".corrupt-*")
	if calls := d.calls(); len(calls) != 1 || len(aside) != 1 {
		t.Fatalf("OnDiscard %q, files set aside %q; want one heal", calls, aside)
	}
	if err := x.LoadEntries(testEntries(1)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("LoadEntries after the heal: %v", err)
	}
	checkEmptyUntilRescan(t, x)
}

func TestGarbageFreelist(t *testing.T) {
	tmpl := template(t)

	t.Run("at open", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "index.db")
		write(t, path, tmpl)
		l := readLayout(t, path)
		corrupt(t, path, l, kinds["random"], l.freelist)
		// bbolt reads the freelist when it opens a file for writing.
		x := open(t, path)
		if x.Discarded == "" {
			t.Fatal("Open kept a file with a garbage freelist")
		}
		checkEmptyUntilRescan(t, x)
	})

	t.Run("a write that panics", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "index.db")
		write(t, path, tmpl)
		x := open(t, path)
		d := watch(x)
		l := readLayout(t, path)
		corrupt(t, path, l, kinds["random"], l.dataPages(false)...)
		corrupt(t, path, l, kinds["bad type"], l.freelist)
		was := size(t, path)
		// After the panic in Apply, bbolt's rollback reads the freelist
		// page again and panics too, keeping its writer lock: the handle
		// can only be dropped, and nothing may wait on it (the other
		// writes, Close in the cleanup).
		errs := make([]error, 8)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range errs {
			wg.Go(func() {
				<-start
				errs[i] = x.Apply([]Change{{Op: Remove, Entry: Entry{ID: "id-000042"}}}, 300)
			})
		}
		close(start)
		wg.Wait()
		checkSetAside(t, x, errs[slices.IndexFunc(errs, func(err error) bool { return errors.Is(err, ErrCorrupt) })], d, was)
		for _, err := range errs {
			if err != nil && !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrNotFilled) {
				t.Fatal(err)
			}
		}
		checkEmptyUntilRescan(t, x)
	})

	t.Run("a write committed", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "index.db")
		write(t, path, tmpl)
		x := open(t, path)
		d := watch(x)
		l := readLayout(t, path)
		corrupt(t, path, l, kinds["bad type"], l.freelist)
		// A commit writes a new freelist from the one bbolt read at open:
		// the page with garbage is only freed.
		if err := x.Apply([]Change{{Op: Remove, Entry: Entry{ID: "id-000042"}}}, 300); err != nil {
			t.Fatal(err)
		}
		if calls := d.calls(); len(calls) != 0 {
			t.Fatalf("healed: %q", calls)
		}
	})
}

func TestSetAsideOverwritesNothing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "index.db")
	write(t, path, []byte("new"))
	now := time.Now().Unix()
	var earlier []string
	for sec := now; sec <= now+2; sec++ {
		name := fmt.Sprintf("%s.corrupt-%d", path, sec)
		write(t, name, []byte("old"))
		earlier = append(earlier, name)
	}
	to, err := setAside(path)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(to); err != nil || string(b) != "new" || !strings.HasPrefix(to, earlier[0]+".") && !strings.HasPrefix(to, earlier[1]+".") {
		t.Fatalf("moved to %s (%q, %v)", to, b, err)
	}
	for _, name := range earlier {
		if b, err := os.ReadFile(name); err != nil || string(b) != "old" {
			t.Fatalf("%s: %q, %v", name, b, err)
		}
	}
}
