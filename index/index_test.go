package index

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func open(t *testing.T, path string) *Index {
	t.Helper()
	x, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := x.Check(); err != nil {
			t.Errorf("consistency check: %v", err)
		}
		x.Close()
	})
	return x
}

// countDue walks the due entries up to cutoff.
func countDue(t *testing.T, x *Index, cutoff time.Time) (int, error) {
	t.Helper()
	entries, _, err := x.Due(nil, cutoff, 1<<20)
	return len(entries), err
}

func TestDueOrderPagesAndMoves(t *testing.T) {
	x := open(t, filepath.Join(t.TempDir(), "index.db"))
	base := time.Date(2025, 10, 4, 2, 0, 0, 0, time.UTC)
	var entries []Entry
	for i := range 25 {
		// Inserted newest first: due order must come from the keys.
		entries = append(entries, Entry{ID: string(rune('z' - i)), DeletedAt: base.Add(time.Duration(25-i) * time.Hour), Key: "k"})
	}
	entries = append(entries, Entry{ID: "old", DeletedAt: time.Date(1960, 1, 1, 0, 0, 0, 0, time.UTC), Key: "old.jpg"})
	// Out of each bucket's order on purpose: loads stay correct, only slower.
	if err := x.LoadEntries(entries); err != nil {
		t.Fatal(err)
	}
	if err := x.LoadDue(entries); err != nil {
		t.Fatal(err)
	}
	cutoff := base.Add(20 * time.Hour)
	if n, err := countDue(t, x, cutoff); err != nil || n != 21 {
		t.Fatalf("CountDue = %d, %v; want 21", n, err)
	}
	var got []Entry
	var from Position
	for {
		page, next, err := x.Due(from, cutoff, 4)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, page...)
		if next == nil {
			break
		}
		from = next
	}
	if len(got) != 21 || got[0].ID != "old" || got[0].Key != "old.jpg" || !got[0].DeletedAt.Equal(entries[25].DeletedAt) {
		t.Fatalf("walk = %d entries, first %+v", len(got), got[0])
	}
	for i := 1; i < len(got); i++ {
		if got[i].DeletedAt.Before(got[i-1].DeletedAt) {
			t.Fatalf("out of order at %d: %v after %v", i, got[i].DeletedAt, got[i-1].DeletedAt)
		}
	}

	if err := x.Reset(); err != nil {
		t.Fatal(err)
	}
	if n, _ := countDue(t, x, base.Add(200*time.Hour)); n != 0 {
		t.Fatalf("after reset: %d", n)
	}
	if page, _, err := x.Due(nil, base.Add(200*time.Hour), 10); err != nil || len(page) != 0 {
		t.Fatalf("after reset: Due = %v, %v", page, err)
	}
}

func TestUnreadableIndexIsMovedAside(t *testing.T) {
	path := filepath.Join(t.TempDir(), "index.db")
	if err := os.WriteFile(path, []byte("this is not a bbolt file, not at all; garbage garbage garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	x := open(t, path)
	if x.Discarded == "" {
		t.Fatal("Discarded is empty")
	}
	if _, err := os.Stat(x.Discarded); err != nil {
		t.Fatalf("the unreadable file was not kept aside: %v", err)
	}
	if err := x.LoadEntries([]Entry{{ID: "a", DeletedAt: time.Now(), Key: "k"}}); err != nil {
		t.Fatal(err)
	}
}

func TestSecondOpenIsRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "index.db")
	open(t, path)
	if _, err := Open(path); !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open: %v, want ErrLocked", err)
	}
}
