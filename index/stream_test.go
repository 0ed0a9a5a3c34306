package index

import (
	"errors"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

func all(t *testing.T, x *Index) []Entry {
	t.Helper()
	entries, _, err := x.Due(nil, time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	return entries
}

// filled marks x filled by a rescan, as the stream does before it applies
// changes.
func filled(t *testing.T, x *Index) {
	t.Helper()
	if err := x.Rescanned("sys/db/slot/public.t", 0, time.Date(2026, 10, 4, 0, 0, 0, 0, time.UTC)); err != nil {
		t.Fatal(err)
	}
	x.TakeEarliest() // the rescan's restart
}

func TestApplyFollowsTheTableAndReplaysHarmlessly(t *testing.T) {
	x := open(t, filepath.Join(t.TempDir(), "index.db"))
	filled(t, x)
	t0 := time.Date(2026, 10, 4, 12, 0, 0, 0, time.UTC)
	changes := []Change{
		{Op: Upsert, Entry: Entry{ID: "a", DeletedAt: t0, Key: "a.jpg"}},
		{Op: Upsert, Entry: Entry{ID: "b", DeletedAt: t0, Key: "b.jpg"}},
		{Op: Upsert, Entry: Entry{ID: "c", DeletedAt: t0, Key: "c.jpg"}},
		{Op: Remove, Entry: Entry{ID: "a"}},                                                   // restored
		{Op: Upsert, Entry: Entry{ID: "b", DeletedAt: t0.Add(time.Hour)}, KeyUnchanged: true}, // re-deleted, key in TOAST
		{Op: Remove, Entry: Entry{ID: "zz"}},                                                  // never indexed
		{Op: Upsert, Entry: Entry{ID: "d", DeletedAt: t0.Add(-time.Hour)}, KeyUnchanged: true},
	}
	want := []Entry{
		{ID: "d", DeletedAt: t0.Add(-time.Hour)},
		{ID: "c", DeletedAt: t0, Key: "c.jpg"},
		{ID: "b", DeletedAt: t0.Add(time.Hour), Key: "b.jpg"},
	}
	for replay := range 2 {
		if err := x.Apply(changes, 100); err != nil {
			t.Fatal(err)
		}
		if got := all(t, x); !reflect.DeepEqual(got, want) {
			t.Fatalf("replay %d: %+v; want %+v", replay, got, want)
		}
	}
	earliest, restart := x.TakeEarliest()
	if restart || !earliest.Equal(t0.Add(-time.Hour)) {
		t.Fatalf("TakeEarliest = %s, %v; want %s", earliest, restart, t0.Add(-time.Hour))
	}

	// The checkpoint never goes back.
	if err := x.Apply(nil, 50); err != nil {
		t.Fatal(err)
	}
	if st, err := x.State(); err != nil || st.Checkpoint != 100 {
		t.Fatalf("checkpoint %d (%v); want 100", st.Checkpoint, err)
	}
}

func TestApplyRefusesAnIndexNoRescanFilled(t *testing.T) {
	x := open(t, filepath.Join(t.TempDir(), "index.db"))
	change := []Change{{Op: Upsert, Entry: Entry{ID: "a", DeletedAt: time.Now(), Key: "a.jpg"}}}
	if err := x.Apply(change, 1); !errors.Is(err, ErrNotFilled) {
		t.Fatalf("Apply on a new index: %v; want ErrNotFilled", err)
	}
	filled(t, x)
	if err := x.Apply(change, 1); err != nil {
		t.Fatal(err)
	}
	if err := x.Reset(); err != nil {
		t.Fatal(err)
	}
	if err := x.Apply(change, 2); !errors.Is(err, ErrNotFilled) {
		t.Fatalf("Apply after Reset: %v; want ErrNotFilled", err)
	}
	if got := all(t, x); len(got) != 0 {
		t.Fatalf("a refused Apply wrote %+v", got)
	}
}

func TestResetForgetsTheStreamPosition(t *testing.T) {
	x := open(t, filepath.Join(t.TempDir(), "index.db"))
	at := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	if err := x.Rescanned("sys/db/slot/public.t", 42, at); err != nil {
		t.Fatal(err)
	}
	if st, err := x.State(); err != nil || st != (State{Checkpoint: 42, Origin: "sys/db/slot/public.t", RescannedAt: at}) {
		t.Fatalf("state %+v (%v)", st, err)
	}
	if _, restart := x.TakeEarliest(); !restart {
		t.Fatal("a completed rescan did not ask walks to start over")
	}
	if err := x.Reset(); err != nil {
		t.Fatal(err)
	}
	// A rescan that stops half-way leaves an index that claims no origin,
	// so the next start rescans again.
	if st, err := x.State(); err != nil || st != (State{}) {
		t.Fatalf("state after Reset %+v (%v); want empty", st, err)
	}
}

func TestNextFindsTheFirstEntryFromAPosition(t *testing.T) {
	x := open(t, filepath.Join(t.TempDir(), "index.db"))
	t0 := time.Date(2026, 10, 4, 12, 0, 0, 0, time.UTC)
	if _, ok, err := x.Next(nil); ok || err != nil {
		t.Fatalf("empty index: ok %v, %v", ok, err)
	}
	filled(t, x)
	err := x.Apply([]Change{
		{Op: Upsert, Entry: Entry{ID: "a", DeletedAt: t0, Key: "a"}},
		{Op: Upsert, Entry: Entry{ID: "b", DeletedAt: t0.Add(time.Minute), Key: "b"}},
	}, 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		from Position
		want time.Time
		ok   bool
	}{
		{nil, t0, true},
		{After(t0.Add(-time.Nanosecond)), t0, true},
		{After(t0), t0.Add(time.Minute), true},
		{After(t0.Add(time.Minute)), time.Time{}, false},
	} {
		got, ok, err := x.Next(tc.from)
		if err != nil || ok != tc.ok || !got.Equal(tc.want) {
			t.Errorf("Next(%x) = %s, %v, %v; want %s, %v", tc.from, got, ok, err, tc.want, tc.ok)
		}
	}
}
