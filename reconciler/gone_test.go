package reconciler_test

import (
	"testing"
	"time"

	"github.com/reconcile/reconcile/reconciler"
)

// The files of rows deleted outright wait in the outbox for the grace
// period, unseen by the outbox's figures; a row that was soft-deleted and
// due was the purge's, and is not queued again.
func TestQueueGoneWaitsForTheGrace(t *testing.T) {
	b := setup(t)
	now := time.Now()
	rows := []reconciler.GoneRow{
		{ID: "1", Key: "up/gone.jpg", At: now},
		{ID: "2", Key: "up/purged.jpg", SoftDeleted: true, DeletedAt: now.Add(-2 * retention).UTC(), At: now},
		{ID: "3", Key: "up/soft-not-due.jpg", SoftDeleted: true, DeletedAt: now.UTC(), At: now},
		{ID: "4", Key: "", At: now},
	}
	b.writeFile("up/gone.jpg")
	if err := b.r.QueueGone(b.ctx, rows, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	if n := b.count(`SELECT count(*) FROM reconcile_forum_attachment_outbox`); n != 2 {
		t.Fatalf("outbox holds %d keys; want gone.jpg and soft-not-due.jpg", n)
	}
	if pending, _, _, err := b.r.OutboxStats(b.ctx); err != nil || pending != 0 {
		t.Fatalf("outbox figures count %d keys in their grace (%v)", pending, err)
	}
	s, err := b.r.DrainOutbox(b.ctx, true)
	if err != nil || s.FilesRemoved != 0 || !b.fileExists("up/gone.jpg") {
		t.Fatalf("a drain within the grace: %+v, %v", s, err)
	}
	time.Sleep(2 * time.Second)
	if pending, _, _, err := b.r.OutboxStats(b.ctx); err != nil || pending != 2 {
		t.Fatalf("after the grace the figures count %d keys (%v); want 2", pending, err)
	}
	s, err = b.r.DrainOutbox(b.ctx, true)
	if err != nil || s.FilesRemoved != 1 || b.fileExists("up/gone.jpg") {
		t.Fatalf("a drain after the grace: %+v, %v", s, err)
	}
}
