package reconciler_test

import (
	"bytes"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/reconcile/reconcile/reconciler"
)

// counts records what a progress callback is told, from any goroutine.
type counts struct {
	mu   sync.Mutex
	seen []int
}

func (c *counts) add(n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seen = append(c.seen, n)
}

// requireRising fails unless the counts rise strictly and end at last.
func (c *counts) requireRising(t *testing.T, last int) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := 1; i < len(c.seen); i++ {
		if c.seen[i] <= c.seen[i-1] {
			t.Fatalf("counts %v: %d after %d", c.seen, c.seen[i], c.seen[i-1])
		}
	}
	if len(c.seen) == 0 || c.seen[len(c.seen)-1] != last {
		t.Fatalf("counts %v, want them to end at %d", c.seen, last)
	}
}

// Batches finish out of order on three workers, one is split around a row
// the database refuses and one holds a refused storage key: the purge's
// progress still only rises, and ends at every due row handled.
func TestPurgeProgressOnlyRises(t *testing.T) {
	b := setup(t, func(c *reconciler.Config) { c.BatchSize = 4 })
	rows := dueRows(57, "rise/%02d.jpg")
	rows = append(rows, row{key: "../outside.jpg", deletedAt: ago(2 * retention), noFile: true})
	ids := b.seed(rows...)
	_, err := b.pool.Exec(b.ctx, fmt.Sprintf(`
		CREATE FUNCTION odd_row() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF OLD.id = '%s' THEN RAISE EXCEPTION 'the app says no' USING ERRCODE = 'U0001'; END IF;
			RETURN OLD;
		END $$;
		CREATE TRIGGER odd_row BEFORE DELETE ON forum_attachment FOR EACH ROW EXECUTE FUNCTION odd_row()`, ids[9]))
	if err != nil {
		t.Fatal(err)
	}
	cutoff := rescanned(t, b.ctx, b.r)
	var c counts
	s, err := b.r.Purge(b.ctx, cutoff, c.add)
	if err != nil {
		t.Fatal(err)
	}
	if s.Purged != 56 || s.Failed != 2 {
		t.Fatalf("summary = %+v; want 56 purged, 2 failed", s)
	}
	c.requireRising(t, len(rows))
}

// The audit's progress counts the due rows first, then rises by one per
// row examined, refused rows included.
func TestAuditProgressCountsEachDueRow(t *testing.T) {
	b := setup(t)
	b.seed(append(dueRows(12, "audit/%02d.jpg"),
		row{key: "../outside.jpg", deletedAt: ago(2 * retention), noFile: true},
		row{key: "audit/recent.jpg", deletedAt: ago(retention / 2)},
		row{key: "audit/inconsistent.jpg"},
	)...)
	w, err := reconciler.NewAuditWriter("text", &bytes.Buffer{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var c counts
	var totals []int
	if _, err := b.r.Audit(b.ctx, w, func(examined, total int) {
		c.add(examined)
		totals = append(totals, total)
	}); err != nil {
		t.Fatal(err)
	}
	c.requireRising(t, 13)
	if c.seen[0] != 0 || len(c.seen) != 14 || slices.IndexFunc(totals, func(n int) bool { return n != 13 }) >= 0 {
		t.Fatalf("examined %v of totals %v; want 0 to 13 of 13", c.seen, totals)
	}
}
