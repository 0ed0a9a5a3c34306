package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// statusJSON runs `reconcile status --format json` and decodes its report.
func statusJSON(t *testing.T) statusReport {
	t.Helper()
	code, out, stderr := reconcile("status", "--format", "json")
	if code != exitOK {
		t.Fatalf("status: exit %d\n%s%s", code, out, stderr)
	}
	var rep statusReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("status printed no report (%v):\n%s", err, out)
	}
	return rep
}

// about fails unless t is within a minute of want.
func about(t *testing.T, what string, got *time.Time, want time.Time) {
	t.Helper()
	if got == nil || got.Sub(want).Abs() > time.Minute {
		t.Errorf("%s = %v; want about %s", what, got, want.UTC())
	}
}

// Before migrate, without an index: status reports what there is, and
// creates nothing, neither the outbox, nor the slot, nor the index.
func TestStatusChangesNothing(t *testing.T) {
	f := newForum(t)
	t.Setenv("RECONCILE_REPLICATION_SLOT", f.slot())
	f.add("s/due.jpg", 48)

	rep := statusJSON(t)
	if rep.Index != nil || !strings.Contains(rep.IndexUnavailable, "no index at") {
		t.Errorf("index: %+v, %q; want it unavailable, the file missing", rep.Index, rep.IndexUnavailable)
	}
	if rep.Outbox.Exists || rep.Slot.Exists || rep.Lock.Held || rep.Table != "public.forum_attachment" {
		t.Errorf("report %+v; want no outbox, no slot, no lock", rep)
	}
	code, out, stderr := reconcile("status")
	if code != exitOK {
		t.Fatalf("status: exit %d\n%s%s", code, out, stderr)
	}
	for _, want := range []string{"  unavailable    no index at ", "run `reconcile migrate`", "the service creates it", "nobody"} {
		if !strings.Contains(out, want) {
			t.Errorf("text output lacks %q:\n%s", want, out)
		}
	}
	if f.count(`SELECT count(*) FROM pg_tables WHERE tablename = 'reconcile_forum_attachment_outbox'`) != 0 {
		t.Error("status created the outbox")
	}
	if f.count(fmt.Sprintf(`SELECT count(*) FROM pg_replication_slots WHERE slot_name = '%s'`, f.slot())) != 0 {
		t.Error("status created the slot")
	}
	if _, err := os.Stat(os.Getenv("RECONCILE_INDEX_PATH")); !os.IsNotExist(err) {
		t.Errorf("status created the index: %v", err)
	}
	if code, _, _ := reconcile("status", "--format", "yaml"); code != exitUsage {
		t.Errorf("--format yaml: exit %d, want %d", code, exitUsage)
	}
}

// With the service running, the index's figures come from its /status;
// stopped, from the file; the rest from the database every time.
func TestStatusOfTheService(t *testing.T) {
	f := newForum(t)
	serviceEnv(t, f, "1h")
	f.migrate()
	// Keys that leave the storage root are refused, never purged: their
	// rows stay due, as a stuck purge leaves them.
	for i := range 2 {
		f.add(fmt.Sprintf("../stuck-%d.jpg", i), 3) // due for 2 hours: overdue
	}
	late := f.add("../late.jpg", 0)
	if _, err := f.pool.Exec(context.Background(), `UPDATE forum_attachment SET deleted_at = now() - interval '90 minutes' WHERE id = $1`, late); err != nil {
		t.Fatal(err)
	}
	f.add("s/recent.jpg", 0)
	f.add("s/active.jpg", -1)
	s := startService(t, false)
	eventually(t, 30*time.Second, func() bool {
		st, err := s.idx.State()
		return err == nil && !st.SweptAt.IsZero()
	}, func() string { return fmt.Sprintf("no sweep recorded:\n%s", s.logs) })
	queued := time.Now().Add(-2 * time.Hour)
	if _, err := f.pool.Exec(context.Background(), `
		INSERT INTO reconcile_forum_attachment_outbox (storage_key, attachment_id, enqueued_at, next_attempt_at)
		VALUES ('s/failing.jpg', '1', $1, now() + interval '1 hour')`, queued); err != nil {
		t.Fatal(err)
	}

	// status finds the service where it listens.
	t.Setenv("RECONCILE_HTTP_LISTEN", strings.TrimPrefix(s.url(""), "http://"))

	check := func(rep statusReport, source string) {
		t.Helper()
		ix := rep.Index
		if ix == nil {
			t.Fatalf("no index figures: %s", rep.IndexUnavailable)
		}
		if ix.Source != source || !ix.Filled || ix.Rows != 4 || ix.DueRows != 3 || ix.OverdueRows != 2 || ix.OverdueAfterSeconds != 3600 || ix.CheckpointLSN == "" {
			t.Errorf("index %+v; want from the %s, filled, 4 rows, 3 due, 2 overdue", ix, source)
		}
		about(t, "next_due_at", ix.NextDueAt, time.Now().Add(-2*time.Hour))
		about(t, "last_rescan_at", ix.LastRescanAt, time.Now())
		about(t, "last_sweep_at", ix.LastSweepAt, time.Now())
		if o := rep.Outbox; !o.Exists || o.PendingFiles != 1 || o.OldestAgeSeconds < 7000 {
			t.Errorf("outbox %+v; want 1 file pending for 2 hours", o)
		}
		about(t, "oldest_enqueued_at", rep.Outbox.OldestEnqueuedAt, queued)
		if sl := rep.Slot; !sl.Exists || sl.Name != f.slot() || sl.WALStatus != "reserved" || sl.MaxRetainedWALBytes != 1<<30 || sl.MaxSlotWALKeepBytes != -1 {
			t.Errorf("slot %+v", sl)
		}
	}

	rep := statusJSON(t)
	check(rep, "service")
	if !rep.Slot.Active || rep.Slot.ActivePID == 0 {
		t.Errorf("slot %+v; want it active while the service streams", rep.Slot)
	}
	var holder int
	if err := f.pool.QueryRow(context.Background(), `SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&holder); err != nil {
		t.Fatal(err)
	}
	if l := rep.Lock; !l.Held || l.PID != holder || l.ApplicationName != "reconcile" || l.ClientAddr != "127.0.0.1" || l.BackendStartAt == nil {
		t.Errorf("lock %+v; want held by pid %d, reconcile, from 127.0.0.1", l, holder)
	}
	code, out, stderr := reconcile("status")
	if code != exitOK {
		t.Fatalf("status: exit %d\n%s%s", code, out, stderr)
	}
	for _, want := range []string{"(from the running service)", "  rows           4\n", "  due            3\n", "  overdue        2 (due for longer than 1h, sweep.overdue_after)",
		"  pending files  1\n", "(2h ago)", "  active         yes (walsender pid ", "  held by        pid " + fmt.Sprint(holder) + ", reconcile, from 127.0.0.1, connected "} {
		if !strings.Contains(out, want) {
			t.Errorf("text output lacks %q:\n%s", want, out)
		}
	}

	// The service holds the file and cannot be asked: said, and the rest
	// is reported.
	t.Setenv("RECONCILE_HTTP_LISTEN", "127.0.0.1:1")
	if rep := statusJSON(t); rep.Index != nil || !strings.Contains(rep.IndexUnavailable, "ask http://127.0.0.1:1/status") || !rep.Lock.Held {
		t.Errorf("with nothing at http.listen: %+v", rep)
	}
	t.Setenv("RECONCILE_HTTP_LISTEN", "")
	if rep := statusJSON(t); rep.Index != nil || !strings.Contains(rep.IndexUnavailable, "http.listen is off") || !rep.Lock.Held {
		t.Errorf("with http.listen off: %+v", rep)
	}

	if err := s.stop(); err != nil {
		t.Fatal(err)
	}
	rep = statusJSON(t)
	check(rep, "file")
	if rep.Lock.Held {
		t.Errorf("lock %+v; want it free once the service stopped", rep.Lock)
	}

	t.Setenv("RECONCILE_DATABASE_URL", "postgres://forum@127.0.0.1:1/forum?connect_timeout=2")
	if code, _, stderr := reconcile("status"); code != exitFailed || !strings.Contains(stderr, "connect to database") {
		t.Errorf("database away: exit %d, %s; want %d", code, stderr, exitFailed)
	}
}

func TestSpan(t *testing.T) {
	for d, want := range map[time.Duration]string{
		42 * time.Second:                        "42s",
		12*time.Minute + 3*time.Second:          "12m3s",
		12 * time.Minute:                        "12m",
		3*time.Hour + 12*time.Minute:            "3h12m",
		3*time.Hour + 20*time.Second:            "3h",
		5*24*time.Hour + 3*time.Hour:            "5d3h",
		50*time.Hour + 29*time.Minute:           "2d2h",
		59*time.Minute + 59*time.Second:         "59m59s",
		59*time.Minute + 59500*time.Millisecond: "1h",
	} {
		if got := span(d); got != want {
			t.Errorf("span(%s) = %q; want %q", d, got, want)
		}
	}
}
