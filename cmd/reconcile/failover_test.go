package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Two services on one database and one storage, each with its own index:
// the one that holds the advisory lock streams and purges, the other waits.

// replica starts the service as a real process, named who for the
// database: its sessions carry the setting failover.who, which the test's
// trigger records.
func replica(t *testing.T, f *forum, who string) (*exec.Cmd, *syncBuffer) {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.Env = append(os.Environ(), "RECONCILE_TEST_AS_MAIN=1",
		"RECONCILE_INDEX_PATH="+filepath.Join(t.TempDir(), who+".db"),
		"RECONCILE_DATABASE_URL="+f.url+"&options=-c%20failover.who%3D"+who)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			_ = cmd.Wait()
		}
	})
	return cmd, out
}

func waitOutput(t *testing.T, out *syncBuffer, substr string) {
	t.Helper()
	eventually(t, 30*time.Second, func() bool { return strings.Contains(out.String(), substr) },
		func() string { return fmt.Sprintf("log line %q never came:\n%s", substr, out) })
}

// replicas starts two services, a first so that it holds the lock, and
// waits until b waits for it.
func replicas(t *testing.T, f *forum) (a *exec.Cmd, aOut *syncBuffer, b *exec.Cmd, bOut *syncBuffer) {
	t.Helper()
	a, aOut = replica(t, f, "a")
	waitOutput(t, aOut, "streaming changes")
	b, bOut = replica(t, f, "b")
	waitOutput(t, bOut, "another reconcile holds the advisory lock; waiting to take over")
	return a, aOut, b, bOut
}

// lockHolder is the backend pid of the session holding the service's
// advisory lock; 0 when none does.
func (f *forum) lockHolder() int32 {
	f.t.Helper()
	var pid int32
	err := f.pool.QueryRow(context.Background(), `
		SELECT coalesce(max(pid), 0) FROM pg_locks
		WHERE locktype = 'advisory' AND granted AND objsubid = 1
		  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
		  AND classid = ((hashtextextended($1, 0) >> 32) & 4294967295)::oid
		  AND objid = (hashtextextended($1, 0) & 4294967295)::oid`,
		`reconcile:"public"."forum_attachment"`).Scan(&pid)
	if err != nil {
		f.t.Fatal(err)
	}
	return pid
}

// slotUser is the pid of the walsender reading the service's slot; 0 when
// none does.
func (f *forum) slotUser() int32 {
	f.t.Helper()
	var pid int32
	err := f.pool.QueryRow(context.Background(),
		`SELECT coalesce(max(active_pid), 0) FROM pg_replication_slots WHERE slot_name = $1`, f.slot()).Scan(&pid)
	if err != nil {
		f.t.Fatal(err)
	}
	return pid
}

func (f *forum) fileGone(key string) bool {
	_, err := os.Stat(filepath.Join(f.root, key))
	return os.IsNotExist(err)
}

// SIGKILL of the holder: the other takes over and purges each row, the
// file and then the row, within 10 s of its due time. The standby leaves
// the slot alone until it holds the lock.
func TestFailoverAfterSIGKILL(t *testing.T) {
	f := newForum(t)
	const retention = 3 * time.Second
	serviceEnv(t, f, retention.String())
	f.migrate()
	a, _, _, bOut := replicas(t, f)
	holder, reader := f.lockHolder(), f.slotUser()
	if holder == 0 || reader == 0 {
		t.Fatalf("lock held by %d, slot read by %d; want both taken by the first service", holder, reader)
	}
	for _, line := range []string{"streaming changes", "created replication slot", "rescanning the table"} {
		if strings.Contains(bOut.String(), line) {
			t.Fatalf("the waiting service logged %q before it held the lock:\n%s", line, bOut)
		}
	}

	type row struct {
		id, key   string
		due, gone time.Time
	}
	var rows []*row
	soft := func(name string) {
		key := "forum/attachments/" + name + ".jpg"
		id := f.add(key, -1)
		rows = append(rows, &row{id: id, key: key, due: f.softDelete(id).Add(retention)})
	}
	soft("before-kill") // falls due after the kill
	if err := a.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	_ = a.Wait()
	for i := range 3 {
		soft(fmt.Sprintf("after-kill-%d", i))
	}

	// When the lock and the slot come free, when each row goes.
	var lockFree, slotFree, took time.Duration
	deadline := killed.Add(30 * time.Second)
	for left := len(rows); left > 0; {
		if time.Now().After(deadline) {
			t.Fatalf("%d rows never purged:\n%s", left, bOut)
		}
		now := time.Since(killed)
		if pid := f.lockHolder(); lockFree == 0 && pid != holder {
			lockFree = now
		}
		if pid := f.slotUser(); slotFree == 0 && pid != reader {
			slotFree = now
		}
		if took == 0 && strings.Contains(bOut.String(), "took the advisory lock") {
			took = now
		}
		left = 0
		for _, r := range rows {
			if r.gone.IsZero() && !f.exists(r.id) {
				r.gone = time.Now()
			}
			if r.gone.IsZero() {
				left++
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("after the SIGKILL: lock free in %s, slot free in %s, lock taken over in %s", lockFree, slotFree, took)
	for _, r := range rows {
		late := r.gone.Sub(r.due)
		t.Logf("%s purged %s after its due time", r.key, late)
		if late > 10*time.Second {
			t.Errorf("%s purged %s after its due time; want within 10 s", r.key, late)
		}
		// The file goes after the row's commit, through the outbox.
		eventually(t, 5*time.Second, func() bool { return f.fileGone(r.key) },
			func() string { return fmt.Sprintf("%s: the row is gone, its file is not", r.key) })
	}
}

// pg_terminate_backend of the holder's lock session: the holder stops
// purging at once, before the other starts. A trigger records each deleted
// row with who deleted it and when the deleting statement started.
func TestFailoverFencesAHolderWhoseSessionIsTerminated(t *testing.T) {
	f := newForum(t)
	const retention = 10 * time.Second
	serviceEnv(t, f, retention.String())
	f.migrate()
	ctx := context.Background()
	if _, err := f.pool.Exec(ctx, `
		CREATE TABLE purge_log (id uuid, who text, started timestamptz, at timestamptz);
		CREATE FUNCTION log_purge() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			INSERT INTO purge_log VALUES (OLD.id, current_setting('failover.who', true), statement_timestamp(), clock_timestamp());
			RETURN NULL;
		END $$;
		CREATE TRIGGER log_purge AFTER DELETE ON forum_attachment FOR EACH ROW EXECUTE FUNCTION log_purge()`); err != nil {
		t.Fatal(err)
	}
	_, aOut, _, bOut := replicas(t, f)

	// Rows falling due every 20 ms for 6 s, from 1 s on: the holder is
	// purging when its session goes.
	const n = 300
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("forum/attachments/fence-%03d.jpg", i)
		id := f.add(keys[i], -1)
		if _, err := f.pool.Exec(ctx, `
			UPDATE forum_attachment SET is_active = false,
			       deleted_at = now() - $2 * interval '1 microsecond' + interval '1 second' + $3 * interval '20 milliseconds'
			WHERE id = $1`, id, retention.Microseconds(), i); err != nil {
			t.Fatal(err)
		}
	}
	purgedBy := func(who string) int {
		return f.count(fmt.Sprintf(`SELECT count(*) FROM purge_log WHERE who = '%s'`, who))
	}
	eventually(t, 20*time.Second, func() bool { return purgedBy("a") >= 20 },
		func() string { return fmt.Sprintf("the holder purged %d rows:\n%s", purgedBy("a"), aOut) })

	// Right after a check of the lock's session by the holder's watch: the
	// watch would not notice the loss for another 2 s.
	holder := f.lockHolder()
	checked := func() time.Time {
		var at time.Time
		if err := f.pool.QueryRow(ctx, `SELECT state_change FROM pg_stat_activity WHERE pid = $1`, holder).Scan(&at); err != nil {
			t.Fatal(err)
		}
		return at
	}
	last := checked()
	eventually(t, 5*time.Second, func() bool { return checked().After(last) },
		func() string { return "the holder's watch never checked the lock's session" })
	var terminated bool
	if err := f.pool.QueryRow(ctx, `SELECT pg_terminate_backend($1, 5000)`, holder).Scan(&terminated); err != nil || !terminated {
		t.Fatalf("terminate the lock's session %d: %v, %v", holder, terminated, err)
	}
	var gone time.Time // the session is gone, and the lock with it
	if err := f.pool.QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&gone); err != nil {
		t.Fatal(err)
	}

	eventually(t, 30*time.Second, func() bool { return f.count(`SELECT count(*) FROM forum_attachment`) == 0 },
		func() string {
			return fmt.Sprintf("%d rows left\nfirst service:\n%s\nsecond service:\n%s",
				f.count(`SELECT count(*) FROM forum_attachment`), aOut, bOut)
		})
	var byA, byB, afterLoss int
	var lastA, firstB time.Time
	if err := f.pool.QueryRow(ctx, `
		SELECT count(*) FILTER (WHERE who = 'a'), count(*) FILTER (WHERE who = 'b'),
		       count(*) FILTER (WHERE who = 'a' AND started > $1),
		       coalesce(max(at) FILTER (WHERE who = 'a'), '-infinity'), coalesce(min(at) FILTER (WHERE who = 'b'), 'infinity')
		FROM purge_log`, gone).Scan(&byA, &byB, &afterLoss, &lastA, &firstB); err != nil {
		t.Fatal(err)
	}
	t.Logf("the first service purged %d rows, the second %d; the last by the first %s before the session went, the first by the second %s after",
		byA, byB, gone.Sub(lastA), firstB.Sub(gone))
	if byA+byB != n || byB == 0 {
		t.Fatalf("purged %d by the first service, %d by the second; want %d in all, some by each", byA, byB, n)
	}
	if afterLoss > 0 {
		t.Errorf("the first service purged %d rows in statements started after its lock's session was gone", afterLoss)
	}
	if !lastA.Before(firstB) {
		t.Errorf("the first service purged a row at %s, after the second began at %s", lastA, firstB)
	}
	eventually(t, 10*time.Second, func() bool {
		return f.count(`SELECT count(*) FROM reconcile_forum_attachment_outbox`) == 0
	}, func() string { return "files left in the outbox" })
	for _, key := range keys {
		if !f.fileGone(key) {
			t.Errorf("file %s survived", key)
		}
	}

	// The first service goes back to waiting; neither says it failed.
	waitOutput(t, aOut, "another reconcile holds the advisory lock; waiting to take over")
	for name, out := range map[string]*syncBuffer{"first": aOut, "second": bOut} {
		if strings.Contains(out.String(), "[CLEANUP] Failed") {
			t.Errorf("the %s service logged a failure:\n%s", name, out)
		}
	}
}
