package index

import (
	"errors"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

func ids(entries []Entry) []string {
	var out []string
	for _, e := range entries {
		out = append(out, e.ID)
	}
	return out
}

// Each table keeps its own rows: a rescan of one, or its removal, leaves
// the others and the stream's position alone; Index's own walk reads
// every table in due order.
func TestTablesAreRescannedAndDroppedAlone(t *testing.T) {
	x := open(t, filepath.Join(t.TempDir(), "index.db"))
	filled(t, x)
	t0 := time.Date(2026, 10, 4, 12, 0, 0, 0, time.UTC)
	at := func(h int) time.Time { return t0.Add(time.Duration(h) * time.Hour) }
	err := x.Apply([]Change{
		{Op: Upsert, Table: "public.a", Entry: Entry{ID: "1", DeletedAt: at(1), Key: "a1.jpg"}},
		{Op: Upsert, Table: "public.b", Entry: Entry{ID: "1", DeletedAt: at(2), Key: "b1.jpg"}},
		{Op: Upsert, Table: "public.a", Entry: Entry{ID: "2", DeletedAt: at(3), Key: "a2.jpg"}},
		{Op: Upsert, Table: "public.b", Entry: Entry{ID: "3", DeletedAt: at(0), Key: "b3.jpg"}},
	}, 100)
	if err != nil {
		t.Fatal(err)
	}
	a, b := x.Table("public.a"), x.Table("public.b")
	if err := a.Filled("fa"); err != nil {
		t.Fatal(err)
	}
	if err := b.Filled("fb"); err != nil {
		t.Fatal(err)
	}
	due := func(tb *Table, cutoff time.Time) []string {
		t.Helper()
		got, _, err := tb.Due(nil, cutoff, 100)
		if err != nil {
			t.Fatal(err)
		}
		return ids(got)
	}
	if got := due(a, at(10)); !reflect.DeepEqual(got, []string{"1", "2"}) {
		t.Fatalf("a: %v", got)
	}
	if got := due(b, at(1)); !reflect.DeepEqual(got, []string{"3"}) {
		t.Fatalf("b up to its cutoff: %v", got)
	}
	// Every table, in due order, in pages.
	var walked []string
	var from Position
	for {
		page, next, err := x.Due(from, at(10), 1)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range page {
			walked = append(walked, e.Key)
		}
		if next == nil {
			break
		}
		from = next
	}
	if want := []string{"b3.jpg", "a1.jpg", "b1.jpg", "a2.jpg"}; !reflect.DeepEqual(walked, want) {
		t.Fatalf("every table: %v, want %v", walked, want)
	}
	if next, ok, err := b.Next(nil); err != nil || !ok || !next.Equal(at(0)) {
		t.Fatalf("b.Next = %s, %v, %v", next, ok, err)
	}
	if st, err := a.Stats(at(1), at(0)); err != nil || st.Rows != 2 || st.Due != 1 || st.Overdue != 0 {
		t.Fatalf("a.Stats = %+v, %v", st, err)
	}

	// b is rescanned alone.
	if err := b.Reset(); err != nil {
		t.Fatal(err)
	}
	tables, err := x.Tables()
	if err != nil || !reflect.DeepEqual(tables, map[string]string{"public.a": "fa", "public.b": ""}) {
		t.Fatalf("Tables after b's reset = %v, %v", tables, err)
	}
	if err := b.LoadEntries([]Entry{{ID: "9", DeletedAt: at(5), Key: "b9.jpg"}}); err != nil {
		t.Fatal(err)
	}
	if err := b.LoadDue([]Entry{{ID: "9", DeletedAt: at(5)}}); err != nil {
		t.Fatal(err)
	}
	if err := b.Filled("fb2"); err != nil {
		t.Fatal(err)
	}
	if got := due(b, at(10)); !reflect.DeepEqual(got, []string{"9"}) {
		t.Fatalf("b after its rescan: %v", got)
	}
	if got := due(a, at(10)); !reflect.DeepEqual(got, []string{"1", "2"}) {
		t.Fatalf("a after b's rescan: %v", got)
	}
	if st, err := x.State(); err != nil || st.Checkpoint != 100 || st.Origin == "" {
		t.Fatalf("the stream's position after b's rescan: %+v, %v", st, err)
	}

	// a is dropped.
	if err := x.DropTable("public.a"); err != nil {
		t.Fatal(err)
	}
	if got := due(a, at(10)); len(got) != 0 {
		t.Fatalf("a after its drop: %v", got)
	}
	if tables, err := x.Tables(); err != nil || !reflect.DeepEqual(tables, map[string]string{"public.b": "fb2"}) {
		t.Fatalf("Tables after a's drop = %v, %v", tables, err)
	}

	// Reset empties every table.
	if err := x.Reset(); err != nil {
		t.Fatal(err)
	}
	if tables, err := x.Tables(); err != nil || len(tables) != 0 {
		t.Fatalf("Tables after Reset = %v, %v", tables, err)
	}
}

// A walk of one table hears of its own changes; any change wakes a walk
// of every table.
func TestTakeEarliestPerTable(t *testing.T) {
	x := open(t, filepath.Join(t.TempDir(), "index.db"))
	filled(t, x)
	a, b := x.Table("a"), x.Table("b")
	if _, restart := a.TakeEarliest(); !restart {
		t.Fatal("a first walk does not start from the start")
	}
	b.TakeEarliest()
	t0 := time.Date(2026, 10, 4, 12, 0, 0, 0, time.UTC)
	if err := x.Apply([]Change{{Op: Upsert, Table: "a", Entry: Entry{ID: "1", DeletedAt: t0}}}, 1); err != nil {
		t.Fatal(err)
	}
	if at, restart := a.TakeEarliest(); !at.Equal(t0) || restart {
		t.Fatalf("a: %s, %v", at, restart)
	}
	if at, restart := b.TakeEarliest(); !at.IsZero() || restart {
		t.Fatalf("b heard of a's change: %s, %v", at, restart)
	}
	if at, _ := x.TakeEarliest(); !at.Equal(t0) {
		t.Fatalf("every table: %s", at)
	}
	if err := a.Reset(); err != nil {
		t.Fatal(err)
	}
	if _, restart := a.TakeEarliest(); !restart {
		t.Fatal("a's reset does not restart its walk")
	}
	if _, restart := b.TakeEarliest(); restart {
		t.Fatal("a's reset restarts b's walk")
	}
}

// A heal between two tables' rescans, within one rescan of the whole
// index: the second table fills its own part, but the whole is refused,
// since the first table's part went with the heal.
func TestAHealBetweenTwoTablesFailsTheWholeRescan(t *testing.T) {
	tmpl := template(t)
	path := filepath.Join(t.TempDir(), "index.db")
	write(t, path, tmpl)
	x := open(t, path)
	if err := x.Reset(); err != nil {
		t.Fatal(err)
	}
	a, b := x.Table("public.a"), x.Table("public.b")
	if err := a.Reset(); err != nil {
		t.Fatal(err)
	}
	if err := a.LoadEntries(testEntries(3000)); err != nil {
		t.Fatal(err)
	}
	if err := a.Filled("fa"); err != nil {
		t.Fatal(err)
	}
	l := readLayout(t, path)
	corrupt(t, path, l, kinds["random"], l.dataPages(false)...)
	if _, _, err := a.Due(nil, far, 10); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Due on garbage: %v; want ErrCorrupt", err)
	}
	if err := b.Reset(); err != nil {
		t.Fatal(err)
	}
	if err := b.Filled("fb"); err != nil {
		t.Fatalf("b's own rescan after the heal: %v", err)
	}
	if err := x.Rescanned("o", 1, time.Now()); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("the whole rescan, a's part lost to the heal: %v; want ErrCorrupt", err)
	}
}
