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

// A row deleted outright may be put back within the grace: the orphan scan
// leaves its file and derived files alone meanwhile, and a later DELETE of
// the same key gives it the later grace.
func TestAFileInItsGraceIsNoOrphan(t *testing.T) {
	b := setup(t)
	b.withDerived("imagekit")
	b.seed(row{key: "up/2025/live.jpg", active: true})
	thumbs := imagekitFiles("up/2025/gone.jpg", specs...)
	for _, f := range append([]string{"up/2025/gone.jpg"}, thumbs...) {
		b.writeFile(f)
	}
	first := time.Now().Add(-time.Minute)
	if err := b.r.QueueGone(b.ctx, []reconciler.GoneRow{{ID: "1", Key: "up/2025/gone.jpg", At: first}}, time.Hour); err != nil {
		t.Fatal(err)
	}
	second := time.Now()
	if err := b.r.QueueGone(b.ctx, []reconciler.GoneRow{{ID: "1", Key: "up/2025/gone.jpg", At: second}}, time.Hour); err != nil {
		t.Fatal(err)
	}
	var notBefore, queued time.Time
	if err := b.pool.QueryRow(b.ctx, `SELECT not_before, enqueued_at FROM reconcile_forum_attachment_outbox`).Scan(&notBefore, &queued); err != nil {
		t.Fatal(err)
	}
	if notBefore.Sub(second.Add(time.Hour)).Abs() > time.Millisecond || queued.Sub(second).Abs() > time.Millisecond {
		t.Errorf("after a second DELETE: not before %s, queued %s; want its grace and time", notBefore, queued)
	}
	report, totals, err := b.scan(reconciler.OrphanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(report) != 0 || totals.Removed != 0 || !b.fileExists("up/2025/gone.jpg") || !b.fileExists(thumbs[0]) {
		t.Fatalf("the scan took files of a row inside its grace: %+v", report)
	}
}

// Whether a soft-deleted row was the purge's is judged at its DELETE, not
// when the stream, late, brings it: a row not yet due then was deleted by
// someone else, and its file is queued.
func TestQueueGoneJudgesDueAtTheDelete(t *testing.T) {
	b := setup(t)
	at := time.Now().Add(-2 * retention)
	rows := []reconciler.GoneRow{
		{ID: "1", Key: "up/not-due-then.jpg", SoftDeleted: true, DeletedAt: at.Add(-retention / 2).UTC(), At: at},
		{ID: "2", Key: "up/due-then.jpg", SoftDeleted: true, DeletedAt: at.Add(-2 * retention).UTC(), At: at},
	}
	if err := b.r.QueueGone(b.ctx, rows, time.Hour); err != nil {
		t.Fatal(err)
	}
	if n := b.count(`SELECT count(*) FROM reconcile_forum_attachment_outbox WHERE storage_key = 'up/not-due-then.jpg'`); n != 1 || b.count(`SELECT count(*) FROM reconcile_forum_attachment_outbox`) != 1 {
		t.Fatal("want the row not due at its DELETE queued, and only it")
	}
}

// A key that spells its path otherwise is queued as the file the storage
// holds, which its grace then protects.
func TestQueueGoneQueuesTheCleanKey(t *testing.T) {
	b := setup(t)
	b.seed(row{key: "up/live.jpg", active: true})
	b.writeFile("up/gone.jpg")
	if err := b.r.QueueGone(b.ctx, []reconciler.GoneRow{{ID: "1", Key: "up//gone.jpg", At: time.Now()}}, time.Hour); err != nil {
		t.Fatal(err)
	}
	if n := b.count(`SELECT count(*) FROM reconcile_forum_attachment_outbox WHERE storage_key = 'up/gone.jpg'`); n != 1 {
		t.Fatalf("the clean key is not queued")
	}
	if _, totals, err := b.scan(reconciler.OrphanOptions{Prefixes: []string{"up/"}}); err != nil || totals.Removed != 0 || !b.fileExists("up/gone.jpg") {
		t.Fatalf("the scan took a file inside its grace: %+v, %v", totals, err)
	}
}
