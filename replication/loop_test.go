package replication

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/reconcile/reconcile/index"
)

// The tables of these tests, one of each shape, and one more that the
// publication carries but the configuration does not.
var (
	forumTable = Table{Schema: "forum", Name: "attachment", ID: "id", Keys: []string{"image"}, IsActive: "is_active", DeletedAt: "deleted_at"}
	blogTable  = Table{Schema: "blog", Name: "photo", ID: "id", Keys: []string{"image", "thumb"}, IsDeleted: "is_deleted", DeletedAt: "deleted_at"}
	docsTable  = Table{Schema: "docs", Name: "file", ID: "id", Keys: []string{"path"}, DeletedAt: "removed_at"}
)

// Their relation ids, and their columns in the order the server sends.
const (
	forumRel uint32 = 16001 + iota
	blogRel
	docsRel
	otherRel
)

var relations = [][]byte{
	relationMsg(forumRel, "forum", "attachment", "id", "image", "is_active", "deleted_at"),
	relationMsg(blogRel, "blog", "photo", "id", "title", "image", "thumb", "is_deleted", "deleted_at"),
	relationMsg(docsRel, "docs", "file", "id", "path", "removed_at"),
	relationMsg(otherRel, "forum", "other", "id", "image", "is_active", "deleted_at"),
}

// recordingIndex is a real index that also records the changes it was
// given, and can be made to refuse them.
type recordingIndex struct {
	*index.Index
	mu        sync.Mutex
	applied   []index.Change
	failApply error
}

func (r *recordingIndex) Apply(changes []index.Change, checkpoint uint64) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failApply != nil {
		return r.failApply
	}
	if err := r.Index.Apply(changes, checkpoint); err != nil {
		return err
	}
	r.applied = append(r.applied, changes...)
	return nil
}

func (r *recordingIndex) changes() []index.Change {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.applied)
}

// loopHarness feeds a loop, as a connection would, and records what it
// sends, rescans and hands over.
type loopHarness struct {
	t       *testing.T
	l       *loop
	idx     *recordingIndex
	lsn     uint64 // the WAL position of the next message
	start   uint64
	txAt    time.Time
	sent    []pglogrepl.LSN // standby status updates, in order
	rescans chan string     // the index's checkpoint when each rescan ran
	handed  []DeletedRow
	// failDeleted makes Config.Deleted fail.
	failDeleted error
}

const harnessStart = 1000

func newLoopHarness(t *testing.T, tables ...Table) *loopHarness {
	t.Helper()
	x, err := index.Open(filepath.Join(t.TempDir(), "index.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := x.Check(); err != nil {
			t.Error(err)
		}
		_ = x.Close()
	})
	const origin = "sys/db/slot"
	if err := x.Rescanned(origin, harnessStart, time.Now()); err != nil {
		t.Fatal(err)
	}
	h := &loopHarness{t: t, idx: &recordingIndex{Index: x}, lsn: harnessStart, start: harnessStart, rescans: make(chan string, 10), txAt: time.Now().UTC().Truncate(time.Microsecond)}
	cfg := Config{Tables: tables, StatusInterval: 10 * time.Millisecond, Watchdog: time.Minute}
	cfg.Deleted = func(_ context.Context, rows []DeletedRow) error {
		if h.failDeleted != nil {
			return h.failDeleted
		}
		h.handed = append(h.handed, rows...)
		return nil
	}
	s := New(cfg, h.idx, func(ctx context.Context) error {
		st, err := x.State()
		if err != nil {
			return err
		}
		h.rescans <- pglogrepl.LSN(st.Checkpoint).String()
		return x.Reset()
	}, slog.New(slog.NewTextHandler(t.Output(), nil)))
	h.l = s.newLoop(context.Background(), func(pos pglogrepl.LSN, _ bool) error {
		h.sent = append(h.sent, pos)
		return nil
	}, origin, harnessStart, time.Now())
	h.l.lastMsg, h.l.nextStatus = time.Now(), time.Now().Add(time.Hour)
	t.Cleanup(h.l.apply.abandonRescan)
	for _, r := range relations {
		h.must(h.wal(r))
	}
	return h
}

func (h *loopHarness) must(err error) {
	h.t.Helper()
	if err != nil {
		h.t.Fatal(err)
	}
}

// wal sends one pgoutput message.
func (h *loopHarness) wal(msg []byte) error {
	h.lsn += 10
	return h.l.handle(xlogData(h.lsn, msg))
}

// tx sends one transaction of msgs, and returns its end.
func (h *loopHarness) tx(msgs ...[]byte) uint64 {
	h.t.Helper()
	end := h.lsn + 10*uint64(len(msgs)+2) + 1
	h.must(h.wal(beginMsg(end-1, h.txAt)))
	for _, m := range msgs {
		h.must(h.wal(m))
	}
	h.must(h.wal(commitMsg(end, h.txAt)))
	h.lsn = end
	return end
}

func (h *loopHarness) keepalive(walEnd uint64, reply bool) error {
	return h.l.handle(keepaliveData(walEnd, reply))
}

// tick runs the loop's timers as they stand a second from now: a pending
// flush is due.
func (h *loopHarness) tick() error {
	h.l.lastMsg = time.Now()
	return h.l.timers(time.Now().Add(time.Second))
}

func (h *loopHarness) checkpoint() uint64 {
	h.t.Helper()
	st, err := h.idx.State()
	h.must(err)
	return st.Checkpoint
}

func (h *loopHarness) lastSent() pglogrepl.LSN {
	if len(h.sent) == 0 {
		return 0
	}
	return h.sent[len(h.sent)-1]
}

const at1, at2 = "2026-11-25 01:02:03+00", "2026-12-01 00:00:00+00"

func ts(s string) time.Time {
	t, err := parseTimestamp(s)
	if err != nil {
		panic(err)
	}
	return t
}

func upsert(t Table, id, key, at string) index.Change {
	return index.Change{Op: index.Upsert, Table: t.IndexName(), Entry: index.Entry{ID: id, Key: key, DeletedAt: ts(at)}}
}

func remove(t Table, id string) index.Change {
	return index.Change{Op: index.Remove, Table: t.IndexName(), Entry: index.Entry{ID: id}}
}

// Each shape, on each table, through decoding, applying and
// acknowledging: the index gets the changes under the table's name, the
// rows deleted outright are handed over, and the server hears the
// transaction's end once the index holds it.
func TestLoopAppliesTheChangesOfEveryTable(t *testing.T) {
	sep := index.KeySeparator
	for _, tc := range []struct {
		name    string
		msgs    [][]byte
		want    []index.Change
		deleted []DeletedRow
	}{
		{"is_active: soft-deleted", [][]byte{insertMsg(forumRel, text("f1"), text("a.jpg"), text("f"), text(at1))},
			[]index.Change{upsert(forumTable, "f1", "a.jpg", at1)}, nil},
		{"is_active: live", [][]byte{insertMsg(forumRel, text("f1"), text("a.jpg"), text("t"), null)},
			[]index.Change{remove(forumTable, "f1")}, nil},
		{"is_active: inactive without deleted_at", [][]byte{insertMsg(forumRel, text("f1"), text("a.jpg"), text("f"), null)},
			[]index.Change{remove(forumTable, "f1")}, nil},
		{"is_active: active with deleted_at", [][]byte{insertMsg(forumRel, text("f1"), text("a.jpg"), text("t"), text(at1))},
			[]index.Change{remove(forumTable, "f1")}, nil},
		{"is_active: restored", [][]byte{
			updateMsg(forumRel, nil, []col{text("f1"), text("a.jpg"), text("f"), text(at1)}),
			updateMsg(forumRel, nil, []col{text("f1"), text("a.jpg"), text("t"), null}),
		}, []index.Change{upsert(forumTable, "f1", "a.jpg", at1), remove(forumTable, "f1")}, nil},
		{"is_active: re-deleted", [][]byte{
			updateMsg(forumRel, nil, []col{text("f1"), text("a.jpg"), text("f"), text(at1)}),
			updateMsg(forumRel, nil, []col{text("f1"), text("a.jpg"), text("f"), text(at2)}),
		}, []index.Change{upsert(forumTable, "f1", "a.jpg", at1), upsert(forumTable, "f1", "a.jpg", at2)}, nil},
		{"is_active: the id updated", [][]byte{
			updateMsg(forumRel, []col{text("f1"), null, null, null}, []col{text("f2"), text("a.jpg"), text("f"), text(at1)}),
		}, []index.Change{remove(forumTable, "f1"), upsert(forumTable, "f2", "a.jpg", at1)}, nil},
		{"is_active: key in TOAST", [][]byte{updateMsg(forumRel, nil, []col{text("f1"), toast, text("f"), text(at1)})},
			[]index.Change{{Op: index.Upsert, Table: "forum.attachment", Entry: index.Entry{ID: "f1", DeletedAt: ts(at1)}, KeyUnchanged: true}}, nil},
		{"is_active: deleted outright", [][]byte{deleteMsg(forumRel, 'O', text("f1"), text("a.jpg"), text("f"), text(at1))},
			[]index.Change{remove(forumTable, "f1")},
			[]DeletedRow{{Table: "forum.attachment", ID: "f1", Key: "a.jpg", SoftDeleted: true, DeletedAt: ts(at1)}}},
		{"is_active: deleted, its key alone", [][]byte{deleteMsg(forumRel, 'K', text("f1"), null, null, null)},
			[]index.Change{remove(forumTable, "f1")}, nil},
		{"is_active: unreadable deleted_at", [][]byte{insertMsg(forumRel, text("f1"), text("a.jpg"), text("f"), text("infinity"))},
			[]index.Change{remove(forumTable, "f1")}, nil},

		{"is_deleted: soft-deleted, two keys", [][]byte{insertMsg(blogRel, text("b1"), text("T"), text("p.jpg"), text("p_t.jpg"), text("t"), text(at1))},
			[]index.Change{upsert(blogTable, "b1", "p.jpg"+sep+"p_t.jpg", at1)}, nil},
		{"is_deleted: a NULL key", [][]byte{insertMsg(blogRel, text("b1"), text("T"), text("p.jpg"), null, text("t"), text(at1))},
			[]index.Change{upsert(blogTable, "b1", "p.jpg"+sep, at1)}, nil},
		{"is_deleted: not deleted", [][]byte{insertMsg(blogRel, text("b1"), text("T"), text("p.jpg"), text("p_t.jpg"), text("f"), text(at1))},
			[]index.Change{remove(blogTable, "b1")}, nil},
		{"is_deleted: restored", [][]byte{
			updateMsg(blogRel, nil, []col{text("b1"), text("T"), text("p.jpg"), text("p_t.jpg"), text("t"), text(at1)}),
			updateMsg(blogRel, nil, []col{text("b1"), text("T"), text("p.jpg"), text("p_t.jpg"), text("f"), null}),
		}, []index.Change{upsert(blogTable, "b1", "p.jpg"+sep+"p_t.jpg", at1), remove(blogTable, "b1")}, nil},
		{"is_deleted: re-deleted", [][]byte{
			updateMsg(blogRel, nil, []col{text("b1"), text("T"), text("p.jpg"), text("p_t.jpg"), text("t"), text(at1)}),
			updateMsg(blogRel, nil, []col{text("b1"), text("T"), text("p.jpg"), text("p_t.jpg"), text("t"), text(at2)}),
		}, []index.Change{upsert(blogTable, "b1", "p.jpg"+sep+"p_t.jpg", at1), upsert(blogTable, "b1", "p.jpg"+sep+"p_t.jpg", at2)}, nil},
		{"is_deleted: the id updated", [][]byte{
			updateMsg(blogRel, []col{text("b1"), null, null, null, null, null}, []col{text("b2"), text("T"), text("p.jpg"), text("p_t.jpg"), text("t"), text(at1)}),
		}, []index.Change{remove(blogTable, "b1"), upsert(blogTable, "b2", "p.jpg"+sep+"p_t.jpg", at1)}, nil},
		{"is_deleted: one key of two in TOAST", [][]byte{updateMsg(blogRel, nil, []col{text("b1"), text("T"), text("p.jpg"), toast, text("t"), text(at1)})},
			[]index.Change{upsert(blogTable, "b1", "", at1)}, nil},
		{"is_deleted: deleted outright, one row per file", [][]byte{deleteMsg(blogRel, 'O', text("b1"), text("T"), text("p.jpg"), text("p_t.jpg"), text("f"), null)},
			[]index.Change{remove(blogTable, "b1")},
			[]DeletedRow{{Table: "blog.photo", ID: "b1", Key: "p.jpg"}, {Table: "blog.photo", ID: "b1", Key: "p_t.jpg"}}},
		{"is_deleted: deleted outright, one file", [][]byte{deleteMsg(blogRel, 'O', text("b1"), text("T"), null, text("p_t.jpg"), text("t"), text(at1))},
			[]index.Change{remove(blogTable, "b1")},
			[]DeletedRow{{Table: "blog.photo", ID: "b1", Key: "p_t.jpg", SoftDeleted: true, DeletedAt: ts(at1)}}},

		{"deleted_at: soft-deleted", [][]byte{insertMsg(docsRel, text("d1"), text("x.pdf"), text(at1))},
			[]index.Change{upsert(docsTable, "d1", "x.pdf", at1)}, nil},
		{"deleted_at: live", [][]byte{insertMsg(docsRel, text("d1"), text("x.pdf"), null)},
			[]index.Change{remove(docsTable, "d1")}, nil},
		{"deleted_at: restored and deleted again", [][]byte{
			updateMsg(docsRel, nil, []col{text("d1"), text("x.pdf"), text(at1)}),
			updateMsg(docsRel, nil, []col{text("d1"), text("x.pdf"), null}),
			updateMsg(docsRel, nil, []col{text("d1"), text("x.pdf"), text(at2)}),
		}, []index.Change{upsert(docsTable, "d1", "x.pdf", at1), remove(docsTable, "d1"), upsert(docsTable, "d1", "x.pdf", at2)}, nil},
		{"deleted_at: the id updated", [][]byte{updateMsg(docsRel, []col{text("d1"), null, null}, []col{text("d2"), text("x.pdf"), text(at1)})},
			[]index.Change{remove(docsTable, "d1"), upsert(docsTable, "d2", "x.pdf", at1)}, nil},
		{"deleted_at: key in TOAST", [][]byte{updateMsg(docsRel, nil, []col{text("d1"), toast, text(at1)})},
			[]index.Change{{Op: index.Upsert, Table: "docs.file", Entry: index.Entry{ID: "d1", DeletedAt: ts(at1)}, KeyUnchanged: true}}, nil},
		{"deleted_at: deleted outright", [][]byte{deleteMsg(docsRel, 'O', text("d1"), text("x.pdf"), null)},
			[]index.Change{remove(docsTable, "d1")},
			[]DeletedRow{{Table: "docs.file", ID: "d1", Key: "x.pdf"}}},

		{"a table not configured", [][]byte{
			insertMsg(otherRel, text("o1"), text("o.jpg"), text("f"), text(at1)),
			deleteMsg(otherRel, 'O', text("o2"), text("o.jpg"), text("f"), text(at1)),
		}, nil, nil},
		{"every table in one transaction", [][]byte{
			insertMsg(forumRel, text("f1"), text("a.jpg"), text("f"), text(at1)),
			insertMsg(otherRel, text("o1"), text("o.jpg"), text("f"), text(at1)),
			insertMsg(blogRel, text("b1"), text("T"), text("p.jpg"), text("p_t.jpg"), text("t"), text(at2)),
			insertMsg(docsRel, text("d1"), text("x.pdf"), text(at1)),
		}, []index.Change{upsert(forumTable, "f1", "a.jpg", at1), upsert(blogTable, "b1", "p.jpg"+sep+"p_t.jpg", at2), upsert(docsTable, "d1", "x.pdf", at1)}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newLoopHarness(t, forumTable, blogTable, docsTable)
			end := h.tx(tc.msgs...)
			if h.checkpoint() != harnessStart || len(h.sent) != 0 {
				t.Fatalf("before the flush: checkpoint %d, sent %v; want nothing moved", h.checkpoint(), h.sent)
			}
			h.l.nextStatus = time.Time{} // a transaction with nothing to apply waits for a report
			h.must(h.tick())
			if got := h.idx.changes(); !slices.EqualFunc(got, tc.want, sameChange) {
				t.Errorf("index changes:\n got %+v\nwant %+v", got, tc.want)
			}
			for i := range tc.deleted {
				tc.deleted[i].At = h.txAt
			}
			if !slices.EqualFunc(h.handed, tc.deleted, sameDeleted) {
				t.Errorf("handed over:\n got %+v\nwant %+v", h.handed, tc.deleted)
			}
			if h.checkpoint() != end || h.lastSent() != pglogrepl.LSN(end) {
				t.Errorf("checkpoint %d, sent %v; want both at the commit's end, %d", h.checkpoint(), h.sent, end)
			}
		})
	}
}

func sameChange(a, b index.Change) bool {
	return a.Op == b.Op && a.Table == b.Table && a.KeyUnchanged == b.KeyUnchanged &&
		a.Entry.ID == b.Entry.ID && a.Entry.Key == b.Entry.Key && a.Entry.DeletedAt.Equal(b.Entry.DeletedAt)
}

func sameDeleted(a, b DeletedRow) bool {
	return a.Table == b.Table && a.ID == b.ID && a.Key == b.Key && a.SoftDeleted == b.SoftDeleted &&
		a.DeletedAt.Equal(b.DeletedAt) && a.At.Equal(b.At)
}

// A Relation message of a table configured without a column reconcile
// reads stops the stream, saying so.
func TestLoopRefusesARelationWithoutItsColumns(t *testing.T) {
	h := newLoopHarness(t, forumTable, blogTable, docsTable)
	err := h.wal(relationMsg(blogRel, "blog", "photo", "id", "image", "is_deleted", "deleted_at"))
	if !errors.Is(err, ErrSetup) || !strings.Contains(err.Error(), `no column "thumb"`) {
		t.Fatalf("%v; want an ErrSetup naming thumb", err)
	}
}

// A TRUNCATE of a configured table rebuilds the index at its commit; of
// another, nothing.
func TestLoopRescansAtATruncate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		rels   []uint32
		rescan bool
	}{
		{"a configured table", []uint32{docsRel}, true},
		{"with another", []uint32{otherRel, blogRel}, true},
		{"another table alone", []uint32{otherRel}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newLoopHarness(t, forumTable, blogTable, docsTable)
			end := h.tx(insertMsg(forumRel, text("f1"), text("a.jpg"), text("f"), text(at1)), truncateMsg(tc.rels...))
			h.must(h.tick())
			if got := len(h.rescans); (got == 1) != tc.rescan || got > 1 {
				t.Fatalf("%d rescans; want rescan %v", got, tc.rescan)
			}
			if tc.rescan && len(h.idx.changes()) != 0 {
				t.Fatalf("the changes before the TRUNCATE were applied: %+v", h.idx.changes())
			}
			if h.checkpoint() != end || h.lastSent() != pglogrepl.LSN(end) {
				t.Fatalf("checkpoint %d, sent %v; want %d", h.checkpoint(), h.sent, end)
			}
		})
	}
}

// A transaction of more than rescanOver changes, over all the tables, is
// covered by a rescan instead; its DELETEs are still handed over, and the
// next transaction is applied as usual.
func TestLoopRescansForALargeTransaction(t *testing.T) {
	h := newLoopHarness(t, forumTable, blogTable, docsTable)
	msgs := make([][]byte, 0, rescanOver+3)
	for i := range rescanOver / 2 {
		msgs = append(msgs, insertMsg(forumRel, text("f"+strconv.Itoa(i)), text("a.jpg"), text("f"), text(at1)))
		msgs = append(msgs, insertMsg(docsRel, text("d"+strconv.Itoa(i)), text("x.pdf"), text(at1)))
	}
	// Past the limit: the rescan runs while the rest is received.
	msgs = append(msgs, insertMsg(blogRel, text("b-over"), text("T"), text("p.jpg"), null, text("t"), text(at1)))
	msgs = append(msgs, deleteMsg(blogRel, 'O', text("b-gone"), text("T"), text("g.jpg"), text("g_t.jpg"), text("f"), null))
	msgs = append(msgs, insertMsg(forumRel, text("f-late"), text("a.jpg"), text("f"), text(at1)))
	end := h.tx(msgs...)
	if got := len(h.rescans); got != 1 {
		t.Fatalf("%d rescans; want 1", got)
	}
	// The index's checkpoint when the rescan ran: the chunks applied before
	// the limit was crossed did not move it.
	if at := <-h.rescans; at != pglogrepl.LSN(harnessStart).String() {
		t.Fatalf("the rescan ran at checkpoint %s; want %s", at, pglogrepl.LSN(harnessStart))
	}
	if h.checkpoint() != end || h.lastSent() != pglogrepl.LSN(end) {
		t.Fatalf("checkpoint %d, sent %v; want the large transaction's end %d", h.checkpoint(), h.sent, end)
	}
	want := []DeletedRow{{Table: "blog.photo", ID: "b-gone", Key: "g.jpg", At: h.txAt}, {Table: "blog.photo", ID: "b-gone", Key: "g_t.jpg", At: h.txAt}}
	if !slices.EqualFunc(h.handed, want, sameDeleted) {
		t.Fatalf("handed over %+v; want the DELETE's rows %+v", h.handed, want)
	}
	for _, c := range h.idx.changes() {
		if c.Entry.ID == "b-over" || c.Entry.ID == "f-late" {
			t.Fatalf("a change past the limit was applied: %+v", c)
		}
	}

	applied := len(h.idx.changes())
	next := h.tx(insertMsg(docsRel, text("d-next"), text("y.pdf"), text(at2)))
	h.must(h.tick())
	if got := h.idx.changes()[applied:]; !slices.EqualFunc(got, []index.Change{upsert(docsTable, "d-next", "y.pdf", at2)}, sameChange) {
		t.Fatalf("after the large transaction: %+v", got)
	}
	if h.checkpoint() != next || len(h.rescans) != 0 {
		t.Fatalf("checkpoint %d, %d more rescans; want %d, none", h.checkpoint(), len(h.rescans), next)
	}
}

// Between transactions a keepalive's position is acknowledged, but only
// once the index holds it as its checkpoint; inside one it is not.
func TestLoopAcknowledgesKeepalives(t *testing.T) {
	t.Run("between transactions", func(t *testing.T) {
		h := newLoopHarness(t, forumTable, blogTable, docsTable)
		end := h.tx(insertMsg(forumRel, text("f1"), text("a.jpg"), text("f"), text(at1)))
		h.must(h.keepalive(end+500, false))
		if h.checkpoint() != harnessStart || len(h.sent) != 0 {
			t.Fatalf("checkpoint %d, sent %v before any report", h.checkpoint(), h.sent)
		}
		h.must(h.keepalive(end+500, true))
		if h.checkpoint() != end+500 || h.lastSent() != pglogrepl.LSN(end+500) {
			t.Fatalf("checkpoint %d, sent %v; want the keepalive's %d", h.checkpoint(), h.sent, end+500)
		}
	})
	t.Run("the index refusing", func(t *testing.T) {
		h := newLoopHarness(t, forumTable, blogTable, docsTable)
		h.idx.failApply = errors.New("disk full")
		h.tx(insertMsg(forumRel, text("f1"), text("a.jpg"), text("f"), text(at1)))
		if err := h.keepalive(h.lsn+500, true); err == nil {
			t.Fatal("the report went on without the index")
		}
		if h.checkpoint() != harnessStart || len(h.sent) != 0 {
			t.Fatalf("checkpoint %d, sent %v; want nothing acknowledged", h.checkpoint(), h.sent)
		}
	})
	t.Run("an idle stream", func(t *testing.T) {
		h := newLoopHarness(t, forumTable)
		h.must(h.keepalive(harnessStart+800, true))
		if h.checkpoint() != harnessStart+800 || h.lastSent() != harnessStart+800 {
			t.Fatalf("checkpoint %d, sent %v; want the keepalive's", h.checkpoint(), h.sent)
		}
	})
	t.Run("inside a transaction", func(t *testing.T) {
		h := newLoopHarness(t, forumTable, blogTable, docsTable)
		first := h.tx(insertMsg(forumRel, text("f1"), text("a.jpg"), text("f"), text(at1)))
		h.must(h.tick())
		end := h.lsn + 100
		h.must(h.wal(beginMsg(end-1, h.txAt)))
		h.must(h.wal(insertMsg(docsRel, text("d1"), text("x.pdf"), text(at1))))
		h.must(h.keepalive(end+5000, true))
		h.l.nextStatus = time.Time{} // a periodic report is due too
		h.must(h.tick())
		if h.checkpoint() != first || h.lastSent() != pglogrepl.LSN(first) {
			t.Fatalf("checkpoint %d, sent %v; want the last commit's %d", h.checkpoint(), h.sent, first)
		}
		h.must(h.wal(commitMsg(end, h.txAt)))
		h.must(h.tick())
		if h.checkpoint() != end || h.lastSent() != pglogrepl.LSN(end) {
			t.Fatalf("checkpoint %d, sent %v; want the commit's end %d, not the keepalive's", h.checkpoint(), h.sent, end)
		}
	})
}

// The rows deleted outright are handed over before the index records a
// position past their transaction: when that fails, the checkpoint stays
// and the server hears nothing new, so the stream replays them.
func TestLoopHandsDeletedRowsOverBeforeTheCheckpoint(t *testing.T) {
	h := newLoopHarness(t, forumTable, blogTable, docsTable)
	h.failDeleted = errors.New("database gone")
	h.tx(deleteMsg(docsRel, 'O', text("d1"), text("x.pdf"), null))
	if err := h.tick(); err == nil || !strings.Contains(err.Error(), "hand over rows deleted outright") {
		t.Fatalf("flush: %v; want the hand-over's failure", err)
	}
	if h.checkpoint() != harnessStart || len(h.sent) != 0 || len(h.idx.changes()) != 0 {
		t.Fatalf("checkpoint %d, sent %v, changes %+v; want nothing moved", h.checkpoint(), h.sent, h.idx.changes())
	}
	// The next try hands them over first.
	h.failDeleted = nil
	h.must(h.l.apply.flush())
	if len(h.handed) != 1 || h.checkpoint() != h.lsn {
		t.Fatalf("handed %+v, checkpoint %d; want the row, then %d", h.handed, h.checkpoint(), h.lsn)
	}
}

// The server hears a commit's position only after the index has
// committed it: not at the commit message, not when the index refuses.
func TestLoopReportsACommitOnlyOnceTheIndexHoldsIt(t *testing.T) {
	h := newLoopHarness(t, forumTable, blogTable, docsTable)
	end := h.tx(insertMsg(blogRel, text("b1"), text("T"), text("p.jpg"), text("p_t.jpg"), text("t"), text(at1)))
	h.l.nextStatus = time.Time{}
	h.idx.failApply = errors.New("disk full")
	if err := h.tick(); err == nil {
		t.Fatal("the report went on without the index")
	}
	if len(h.sent) != 0 || h.checkpoint() != harnessStart {
		t.Fatalf("sent %v, checkpoint %d; want nothing", h.sent, h.checkpoint())
	}
	h.idx.failApply = nil
	h.l.nextStatus = time.Time{}
	h.must(h.tick())
	if h.checkpoint() != end || !slices.Equal(h.sent, []pglogrepl.LSN{pglogrepl.LSN(end)}) {
		t.Fatalf("checkpoint %d, sent %v; want %d, reported once", h.checkpoint(), h.sent, end)
	}
}

// A heartbeat after the last commit is how fresh the index is.
func TestLoopHeartbeatTellsTheIndexFresh(t *testing.T) {
	h := newLoopHarness(t, forumTable)
	at := time.Now().Add(-time.Second).Truncate(time.Nanosecond)
	h.tx()
	h.must(h.wal(heartbeatMsg(strconv.FormatInt(at.UnixNano(), 10))))
	if !h.l.apply.seenAt.Equal(at) {
		t.Fatalf("seen at %s; want the heartbeat's %s", h.l.apply.seenAt, at)
	}
}
