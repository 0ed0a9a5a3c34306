package index

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestStatsCountsDueAndOverdueEntries(t *testing.T) {
	x := open(t, filepath.Join(t.TempDir(), "index.db"))
	if st, err := x.Stats(far, far); err != nil || st != (Stats{}) {
		t.Fatalf("empty index: %+v, %v", st, err)
	}
	entries := testEntries(100) // a minute apart
	rescan(t, x, entries)
	base := entries[0].DeletedAt
	// The cutoffs are inclusive, as the purge's.
	st, err := x.Stats(base.Add(59*time.Minute), base.Add(9*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if want := (Stats{Rows: 100, Due: 60, Overdue: 10, Earliest: base}); st != want {
		t.Fatalf("Stats = %+v; want %+v", st, want)
	}
	// Changes move the figures: a re-deletion, a restore, a new row.
	err = x.Apply([]Change{
		{Op: Upsert, Entry: Entry{ID: entries[0].ID, DeletedAt: base.Add(time.Hour)}, KeyUnchanged: true},
		{Op: Remove, Entry: Entry{ID: entries[1].ID}},
		{Op: Upsert, Entry: Entry{ID: "new", DeletedAt: base.Add(-time.Hour), Key: "new.jpg"}},
	}, 10)
	if err != nil {
		t.Fatal(err)
	}
	st, err = x.Stats(base.Add(59*time.Minute), base.Add(9*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if want := (Stats{Rows: 100, Due: 59, Overdue: 9, Earliest: base.Add(-time.Hour)}); st != want {
		t.Fatalf("after changes: Stats = %+v; want %+v", st, want)
	}
}

func TestSweptIsKeptAcrossRescans(t *testing.T) {
	x := open(t, filepath.Join(t.TempDir(), "index.db"))
	if st, err := x.State(); err != nil || !st.SweptAt.IsZero() {
		t.Fatalf("new index: SweptAt %s, %v", st.SweptAt, err)
	}
	at := time.Date(2026, 10, 4, 12, 30, 0, 0, time.UTC)
	if err := x.Swept(at); err != nil {
		t.Fatal(err)
	}
	rescan(t, x, testEntries(10))
	if st, err := x.State(); err != nil || !st.SweptAt.Equal(at) {
		t.Fatalf("SweptAt = %s, %v; want %s", st.SweptAt, err, at)
	}
}

// Status reads the index beside the service: it must create nothing, heal
// nothing, and step back while the service holds the file.
func TestOpenReadOnly(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "index.db")
	if _, err := OpenReadOnly(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing file: %v; want fs.ErrNotExist", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("OpenReadOnly created the file: %v", err)
	}

	w, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	rescan(t, w, testEntries(30))
	if _, err := OpenReadOnly(path); !errors.Is(err, ErrLocked) {
		t.Fatalf("while a writer holds it: %v; want ErrLocked", err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}

	r, err := OpenReadOnly(path)
	if err != nil {
		t.Fatal(err)
	}
	st, err := r.Stats(far, far)
	if err != nil || st.Rows != 30 || st.Due != 30 {
		t.Fatalf("Stats = %+v, %v; want 30 rows, all due", st, err)
	}
	if state, err := r.State(); err != nil || state.Origin == "" {
		t.Fatalf("State = %+v, %v", state, err)
	}
	if err := r.Swept(time.Now()); err == nil {
		t.Fatal("Swept on a read-only index succeeded")
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}

	// Garbage is reported and stays where it is.
	tmpl := template(t)
	write(t, path, tmpl)
	l := readLayout(t, path)
	corrupt(t, path, l, kinds["random"], l.dataPages(false)...)
	r, err = OpenReadOnly(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := r.Stats(far, far); err == nil {
		t.Fatal("Stats of garbage succeeded")
	}
	if got := size(t, path); got != int64(len(tmpl)) {
		t.Fatalf("the file is %d bytes after the read, want %d: it was moved or written", got, len(tmpl))
	}
	if matches, _ := filepath.Glob(path + ".corrupt-*"); len(matches) != 0 {
		t.Fatalf("set aside: %v", matches)
	}
}

// BenchmarkStats counts a million entries, a third of them due.
func BenchmarkStats(b *testing.B) {
	x, err := Open(filepath.Join(b.TempDir(), "index.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer x.Close()
	base := time.Date(2025, 10, 4, 0, 0, 0, 0, time.UTC)
	entries := make([]Entry, 1_000_000)
	for i := range entries {
		entries[i] = Entry{ID: fmt.Sprintf("id-%08d", i), DeletedAt: base.Add(time.Duration(i) * time.Second), Key: "forum/attachments/2025/10/04/x.jpg"}
	}
	if err := x.LoadDue(entries); err != nil {
		b.Fatal(err)
	}
	if err := x.LoadEntries(entries); err != nil {
		b.Fatal(err)
	}
	cutoff := base.Add(time.Duration(len(entries)/3) * time.Second)
	b.ResetTimer()
	for range b.N {
		st, err := x.Stats(cutoff, cutoff.Add(-time.Hour))
		if err != nil || st.Rows != len(entries) || st.Due != len(entries)/3+1 {
			b.Fatalf("Stats = %+v, %v", st, err)
		}
	}
}
