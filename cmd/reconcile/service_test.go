package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"

	"github.com/reconcile/reconcile/index"
	"github.com/reconcile/reconcile/internal/config"
	"github.com/reconcile/reconcile/internal/metrics"
	"github.com/reconcile/reconcile/internal/storage"
	"github.com/reconcile/reconcile/internal/testdb"
)

// syncBuffer is a log sink that the test reads while the service writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (s *syncBuffer) count(substr string) int { return strings.Count(s.String(), substr) }

// service is the service running in the test's process, on the forum that
// the environment names; the test reads its index as it runs.
type service struct {
	t      *testing.T
	idx    *index.Index
	logs   *syncBuffer
	cancel context.CancelFunc
	done   chan error
	closed bool
}

// serviceEnv makes the service quick to observe: frequent status reports.
// Slot names are the server's, not the database's: each test has its own.
func serviceEnv(t *testing.T, f *forum, retention string) {
	t.Setenv("RECONCILE_REPLICATION_SLOT", f.slot())
	t.Setenv("RECONCILE_RETENTION", retention)
	t.Setenv("RECONCILE_REPLICATION_STATUS_INTERVAL", "200ms")
	t.Setenv("RECONCILE_REPLICATION_WATCHDOG", "5s")
	t.Setenv("RECONCILE_REPLICATION_MAX_BACKOFF", "1s")
	t.Setenv("RECONCILE_REPLICATION_HEARTBEAT", "1s")
}

// serviceOn starts the service, with the given retention, on a migrated
// forum of the test's own.
func serviceOn(t *testing.T, retention string) (*forum, *service) {
	t.Helper()
	f := newForum(t)
	serviceEnv(t, f, retention)
	f.migrate()
	return f, startService(t, false)
}

// startService starts the service and waits until it streams.
func startService(t *testing.T, dryRun bool) *service {
	t.Helper()
	s := launchService(t, dryRun)
	s.waitLog("streaming changes", 1)
	return s
}

func launchService(t *testing.T, dryRun bool) *service {
	t.Helper()
	cfg, err := config.Load("", nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	use := forPurge
	if dryRun {
		use = forAudit
	}
	pool, err := openDB(ctx, cfg, use)
	if err != nil {
		t.Fatal(err)
	}
	m := metrics.New("test")
	st, err := openStore(ctx, cfg, storage.WithObserver(m.StorageRequest))
	if err != nil {
		t.Fatal(err)
	}
	idx, err := index.Open(cfg.Index.Path)
	if err != nil {
		t.Fatal(err)
	}
	s := &service{t: t, idx: idx, logs: &syncBuffer{}, cancel: cancel, done: make(chan error, 1)}
	log := slog.New(slog.NewTextHandler(s.logs, nil))
	go func() {
		err := runService(ctx, cfg, m, pool, st, idx, dryRun, log)
		if err != nil {
			log.Error("service ended", "error", err)
		}
		s.done <- err
		pool.Close()
		_ = st.Close()
	}()
	t.Cleanup(func() {
		if !s.closed {
			_ = s.stop()
		}
	})
	return s
}

func (s *service) stop() error {
	s.closed = true
	s.cancel()
	err := <-s.done
	if cerr := s.idx.Close(); cerr != nil {
		s.t.Errorf("close index: %v", cerr)
	}
	return err
}

func (s *service) waitLog(substr string, n int) {
	s.t.Helper()
	eventually(s.t, 30*time.Second, func() bool { return s.logs.count(substr) >= n },
		func() string { return fmt.Sprintf("log line %q (%d times) never came:\n%s", substr, n, s.logs) })
}

// entries lists the index: id -> deleted_at.
func entries(t *testing.T, idx *index.Index) map[string]time.Time {
	t.Helper()
	due, _, err := idx.Due(nil, time.Now().Add(100*365*24*time.Hour), 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]time.Time, len(due))
	for _, e := range due {
		out[e.ID] = e.DeletedAt
	}
	return out
}

// truth is what the index must hold: every soft-deleted row.
func (f *forum) truth() map[string]time.Time {
	f.t.Helper()
	rows, err := f.pool.Query(context.Background(),
		`SELECT id::text, deleted_at FROM forum_attachment WHERE is_active = false AND deleted_at IS NOT NULL`)
	if err != nil {
		f.t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]time.Time{}
	for rows.Next() {
		var id string
		var at time.Time
		if err := rows.Scan(&id, &at); err != nil {
			f.t.Fatal(err)
		}
		out[id] = at.UTC()
	}
	if err := rows.Err(); err != nil {
		f.t.Fatal(err)
	}
	return out
}

func sameEntries(a, b map[string]time.Time) bool {
	if len(a) != len(b) {
		return false
	}
	for id, at := range a {
		if other, ok := b[id]; !ok || !other.Equal(at) {
			return false
		}
	}
	return true
}

func eventually(t *testing.T, timeout time.Duration, cond func() bool, msg func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal(msg())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// softDelete soft-deletes a row now and returns its deleted_at.
func (f *forum) softDelete(id string) time.Time {
	f.t.Helper()
	var at time.Time
	err := f.pool.QueryRow(context.Background(),
		`UPDATE forum_attachment SET is_active = false, deleted_at = now() WHERE id = $1 RETURNING deleted_at`, id).Scan(&at)
	if err != nil {
		f.t.Fatal(err)
	}
	return at.UTC()
}

func (f *forum) exists(id string) bool {
	return f.count(fmt.Sprintf(`SELECT count(*) FROM forum_attachment WHERE id = '%s'`, id)) == 1
}

// migrate runs `reconcile migrate` as the superuser, who owns the table,
// then makes the test's role from `reconcile migrate --print-role` and
// points reconcile at it: what follows runs with the rights a deployment
// grants, not a superuser's.
func (f *forum) migrate() {
	f.t.Helper()
	f.t.Setenv("RECONCILE_DATABASE_URL", f.url)
	if code, out, stderr := reconcile("migrate"); code != exitOK {
		f.t.Fatalf("migrate: exit %d\n%s%s", code, out, stderr)
	}
	if f.role == "" {
		f.role = "reconcile_" + f.slot()
	}
	f.grantRole(f.url)
	u, err := url.Parse(f.url)
	if err != nil {
		f.t.Fatal(err)
	}
	u.User = url.User(f.role)
	f.t.Setenv("RECONCILE_DATABASE_URL", u.String())
}

// grantRole applies the SQL that `reconcile migrate --print-role` prints
// for the test's role, connected as adminURL.
func (f *forum) grantRole(adminURL string) {
	f.t.Helper()
	code, sql, stderr := reconcile("migrate", "--print-role", f.role)
	if code != exitOK {
		f.t.Fatalf("migrate --print-role: exit %d\n%s", code, stderr)
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		f.t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql); err != nil {
		f.t.Fatalf("apply the role's SQL: %v\n%s", err, sql)
	}
}

func TestServicePurgesEachRowWhenDue(t *testing.T) {
	f, s := serviceOn(t, "3s")

	for round := range 3 {
		key := fmt.Sprintf("forum/attachments/round-%d.jpg", round)
		id := f.add(key, -1)
		due := f.softDelete(id).Add(3 * time.Second)
		eventually(t, 15*time.Second, func() bool { return !f.exists(id) },
			func() string { return fmt.Sprintf("row %s never purged:\n%s", id, s.logs) })
		if late := time.Since(due); late > 2*time.Second {
			t.Errorf("round %d: purged %s after its due time; want within 2s", round, late)
		}
		// The file goes once the row's deletion has committed.
		eventually(t, 5*time.Second, func() bool {
			_, err := os.Stat(filepath.Join(f.root, key))
			return os.IsNotExist(err)
		}, func() string { return fmt.Sprintf("round %d: file still there", round) })
	}
	if n := s.logs.count("rescanning the table"); n != 1 {
		t.Errorf("%d rescans; want only the first, for the new slot:\n%s", n, s.logs)
	}
}

func TestServiceFollowsRestoreAndRedeletion(t *testing.T) {
	f, s := serviceOn(t, "4s")

	restored := f.add("forum/attachments/restored.jpg", -1)
	redeleted := f.add("forum/attachments/redeleted.jpg", -1)
	first := f.softDelete(restored)
	f.softDelete(redeleted)
	eventually(t, 10*time.Second, func() bool { return len(entries(t, s.idx)) == 2 },
		func() string { return fmt.Sprintf("soft-deletes never indexed: %v", entries(t, s.idx)) })

	time.Sleep(2 * time.Second)
	if _, err := f.pool.Exec(context.Background(),
		`UPDATE forum_attachment SET is_active = true, deleted_at = NULL WHERE id = $1`, restored); err != nil {
		t.Fatal(err)
	}
	again := f.softDelete(redeleted)
	eventually(t, 5*time.Second, func() bool {
		e := entries(t, s.idx)
		_, has := e[restored]
		return !has && e[redeleted].Equal(again)
	}, func() string {
		return fmt.Sprintf("index %v; want no %s and %s at %s", entries(t, s.idx), restored, redeleted, again)
	})

	// Past the first due time: both rows stay.
	time.Sleep(time.Until(first.Add(4*time.Second + time.Second)))
	if !f.exists(restored) || !f.exists(redeleted) {
		t.Fatalf("restored row kept: %v, re-deleted row kept: %v; want both kept\n%s", f.exists(restored), f.exists(redeleted), s.logs)
	}
	eventually(t, 10*time.Second, func() bool { return !f.exists(redeleted) },
		func() string { return fmt.Sprintf("re-deleted row never purged:\n%s", s.logs) })
	if early := time.Until(again.Add(4 * time.Second)); early > 0 {
		t.Fatalf("re-deleted row purged %s before its new due time", early)
	}
	if !f.exists(restored) {
		t.Fatal("the restored row was purged")
	}
	if _, err := os.Stat(filepath.Join(f.root, "forum/attachments/restored.jpg")); err != nil {
		t.Fatalf("the restored row's file: %v", err)
	}
}

func TestServiceRescansAfterTruncateAndLostSlot(t *testing.T) {
	f, s := serviceOn(t, "1h")
	ctx := context.Background()

	for i := range 5 {
		f.add(fmt.Sprintf("forum/attachments/old-%d.jpg", i), 0)
	}
	eventually(t, 10*time.Second, func() bool { return len(entries(t, s.idx)) == 5 },
		func() string { return "inserts never indexed" })
	if _, err := f.pool.Exec(ctx, `TRUNCATE forum_attachment`); err != nil {
		t.Fatal(err)
	}
	f.add("forum/attachments/after-truncate.jpg", 0)
	s.waitLog("the table was truncated", 1)
	eventually(t, 10*time.Second, func() bool { return sameEntries(entries(t, s.idx), f.truth()) },
		func() string { return fmt.Sprintf("after TRUNCATE: index %v, table %v", entries(t, s.idx), f.truth()) })

	// The slot dropped under the service: it is taken from the walsender
	// first, then dropped before the service dials again.
	eventually(t, 20*time.Second, func() bool {
		_, _ = f.pool.Exec(ctx, `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active`, f.slot())
		_, err := f.pool.Exec(ctx, `SELECT pg_drop_replication_slot($1)`, f.slot())
		return err == nil
	}, func() string { return "could not drop the slot" })
	f.add("forum/attachments/while-no-slot.jpg", 0)
	s.waitLog("the replication slot was created", 2)
	f.add("forum/attachments/after-new-slot.jpg", 0)
	eventually(t, 10*time.Second, func() bool { return sameEntries(entries(t, s.idx), f.truth()) },
		func() string {
			return fmt.Sprintf("after the slot was dropped: index %v, table %v", entries(t, s.idx), f.truth())
		})
	if n := s.logs.count("rescanning the table"); n != 3 {
		t.Errorf("%d rescans; want 3 (new slot, TRUNCATE, dropped slot):\n%s", n, s.logs)
	}
}

func TestServiceAcknowledgesWhileItsTableIsIdle(t *testing.T) {
	f := newForum(t)
	serviceEnv(t, f, "1h")
	f.migrate()
	startService(t, false)
	ctx := context.Background()
	if _, err := f.pool.Exec(ctx, `CREATE TABLE other (n int)`); err != nil {
		t.Fatal(err)
	}
	for range 50 {
		if _, err := f.pool.Exec(ctx, `INSERT INTO other SELECT generate_series(1, 1000)`); err != nil {
			t.Fatal(err)
		}
	}
	var written pglogrepl.LSN
	if err := f.pool.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&written); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, func() bool { return confirmedFlush(t, f) >= written },
		func() string {
			return fmt.Sprintf("confirmed_flush_lsn stays at %s, behind %s", confirmedFlush(t, f), written)
		})
}

// slot is the test's replication slot: named after its database.
func (f *forum) slot() string {
	return f.pool.Config().ConnConfig.Database
}

func confirmedFlush(t *testing.T, f *forum) pglogrepl.LSN {
	t.Helper()
	var lsn pglogrepl.LSN
	err := f.pool.QueryRow(context.Background(),
		`SELECT coalesce(confirmed_flush_lsn, '0/0')::text FROM pg_replication_slots WHERE slot_name = $1`, f.slot()).Scan(&lsn)
	if err != nil {
		t.Fatal(err)
	}
	return lsn
}

func TestServiceDryRunLogsAndKeepsEverything(t *testing.T) {
	f := newForum(t)
	serviceEnv(t, f, "2s")
	f.migrate()
	s := startService(t, true)

	id := f.add("forum/attachments/audited.jpg", -1)
	f.softDelete(id)
	s.waitLog("[CLEANUP] Dry run: would delete attachment", 1)
	if !strings.Contains(s.logs.String(), id) {
		t.Fatalf("the dry run did not name %s:\n%s", id, s.logs)
	}
	time.Sleep(time.Second)
	if !f.exists(id) || f.files() != 1 {
		t.Fatalf("the dry run purged: row kept %v, %d files", f.exists(id), f.files())
	}
	if _, ok := entries(t, s.idx)[id]; !ok {
		t.Fatal("the dry run's index lost the row")
	}
	if n := s.logs.count("would delete"); n != 1 {
		t.Fatalf("logged %d times; want once, at its due time:\n%s", n, s.logs)
	}
	if err := s.stop(); err != nil {
		t.Fatal(err)
	}
	// Its slot was temporary, and the service's was never made.
	eventually(t, 5*time.Second, func() bool {
		return f.count(`SELECT count(*) FROM pg_replication_slots WHERE database = current_database()`) == 0
	}, func() string { return "the dry run left a replication slot behind" })
}

func TestServiceRefusesARoleWithoutReplication(t *testing.T) {
	f := newForum(t)
	serviceEnv(t, f, "1h")
	f.migrate()
	// The role's every grant, but not REPLICATION.
	if _, err := f.pool.Exec(context.Background(), "ALTER ROLE "+pgx.Identifier{f.role}.Sanitize()+" NOREPLICATION"); err != nil {
		t.Fatal(err)
	}
	code, out, stderr := reconcile()
	if code != exitUsage || !strings.Contains(stderr, "lacks the REPLICATION attribute") || !strings.Contains(stderr, "ALTER ROLE") {
		t.Fatalf("exit %d; want %d naming the fix\n%s%s", code, exitUsage, out, stderr)
	}
}

// reconcileProcess runs the service as a real process, for signals.
func reconcileProcess(t *testing.T, args ...string) (*exec.Cmd, *syncBuffer) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.Env = append(os.Environ(), "RECONCILE_TEST_AS_MAIN=1")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	eventually(t, 30*time.Second, func() bool { return strings.Contains(out.String(), "streaming changes") },
		func() string { return "the service never streamed:\n" + out.String() })
	return cmd, out
}

// Rule 5 and 6: killed while changes stream, the service restarts from its
// checkpoint (no rescan) and ends with the index equal to the table; the
// server never held a position the index had not committed.
func TestServiceKilledWhileStreamingCatchesUp(t *testing.T) {
	f := newForum(t)
	serviceEnv(t, f, "1h")
	f.migrate()
	ctx := context.Background()
	indexPath := os.Getenv("RECONCILE_INDEX_PATH")

	cmd, out := reconcileProcess(t)
	stopWrites := make(chan struct{})
	writes := make(chan error, 1)
	go func() { writes <- churn(f, stopWrites) }()
	time.Sleep(1500 * time.Millisecond)
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	time.Sleep(500 * time.Millisecond) // changes go on while it is down
	close(stopWrites)
	if err := <-writes; err != nil {
		t.Fatal(err)
	}

	eventually(t, 10*time.Second, func() bool {
		return f.count(`SELECT count(*) FROM pg_replication_slots WHERE active`) == 0
	}, func() string { return "the killed service's slot stays active" })
	idx, err := index.Open(indexPath)
	if err != nil {
		t.Fatal(err)
	}
	st, err := idx.State()
	if err != nil {
		t.Fatal(err)
	}
	killedAt := len(entries(t, idx))
	if err := idx.Close(); err != nil {
		t.Fatal(err)
	}
	if flushed := confirmedFlush(t, f); uint64(flushed) > st.Checkpoint {
		t.Fatalf("the slot confirmed %s, ahead of the index checkpoint %s", flushed, pglogrepl.LSN(st.Checkpoint))
	}
	t.Logf("killed with %d entries indexed at %s:\n%s", killedAt, pglogrepl.LSN(st.Checkpoint), out)

	var end pglogrepl.LSN
	if err := f.pool.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&end); err != nil {
		t.Fatal(err)
	}
	cmd, out = reconcileProcess(t)
	eventually(t, 20*time.Second, func() bool { return confirmedFlush(t, f) >= end },
		func() string { return "the restarted service never caught up:\n" + out.String() })
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("stop: %v\n%s", err, out)
	}
	if strings.Contains(out.String(), "rescanning the table") {
		t.Fatalf("the restart rescanned; it should have continued from its checkpoint:\n%s", out)
	}
	idx, err = index.Open(indexPath)
	if err != nil {
		t.Fatal(err)
	}
	defer idx.Close()
	if err := idx.Check(); err != nil {
		t.Fatal(err)
	}
	got, want := entries(t, idx), f.truth()
	if !sameEntries(got, want) {
		t.Fatalf("index holds %d entries, the table %d soft-deleted rows; they differ:\n%s", len(got), len(want), diff(got, want))
	}
	t.Logf("index equals the table: %d soft-deleted rows", len(want))
}

// churn soft-deletes, restores, re-deletes and deletes rows until stop.
func churn(f *forum, stop <-chan struct{}) error {
	ctx := context.Background()
	for i := 0; ; i++ {
		select {
		case <-stop:
			return nil
		default:
		}
		_, err := f.pool.Exec(ctx, `
			WITH ins AS (
				INSERT INTO forum_attachment (id, image, original_filename, is_active, deleted_at)
				SELECT gen_random_uuid(), 'forum/churn/' || $1::int || '-' || g || '.jpg', 'c.jpg', g % 3 = 0, CASE WHEN g % 3 <> 0 THEN now() END
				FROM generate_series(1, 20) g
			)
			UPDATE forum_attachment SET is_active = NOT is_active,
			       deleted_at = CASE WHEN is_active THEN now() END
			WHERE id IN (SELECT id FROM forum_attachment ORDER BY random() LIMIT 5)`, i)
		if err != nil {
			return err
		}
		if _, err := f.pool.Exec(ctx, `
			DELETE FROM forum_attachment WHERE id IN (SELECT id FROM forum_attachment ORDER BY random() LIMIT 2)`); err != nil {
			return err
		}
		if _, err := f.pool.Exec(ctx, `
			UPDATE forum_attachment SET deleted_at = now()
			WHERE id IN (SELECT id FROM forum_attachment WHERE is_active = false ORDER BY random() LIMIT 2)`); err != nil {
			return err
		}
	}
}

func diff(got, want map[string]time.Time) string {
	var lines []string
	for id, at := range got {
		if w, ok := want[id]; !ok || !w.Equal(at) {
			lines = append(lines, fmt.Sprintf("  index has %s at %s, table %s", id, at, w))
		}
	}
	for id, at := range want {
		if _, ok := got[id]; !ok {
			lines = append(lines, fmt.Sprintf("  index lacks %s at %s", id, at))
		}
	}
	sort.Strings(lines)
	if len(lines) > 20 {
		lines = append(lines[:20], "  ...")
	}
	return strings.Join(lines, "\n")
}

// SIGTERM stops the service within a few seconds, reporting its last
// committed position and leaving a sound index.
func TestServiceStopsCleanlyOnSIGTERM(t *testing.T) {
	f := newForum(t)
	serviceEnv(t, f, "1h")
	t.Setenv("RECONCILE_REPLICATION_STATUS_INTERVAL", "10s") // the final report is the one that counts
	t.Setenv("RECONCILE_REPLICATION_WATCHDOG", "30s")
	f.migrate()
	cmd, out := reconcileProcess(t)
	for i := range 20 {
		f.add(fmt.Sprintf("forum/attachments/term-%d.jpg", i), 0)
	}
	time.Sleep(300 * time.Millisecond)
	sent := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit: %v\n%s", err, out)
	}
	// A hang detector, not a speed claim.
	if took := time.Since(sent); took > 10*time.Second {
		t.Fatalf("took %s to stop", took)
	}
	idx, err := index.Open(os.Getenv("RECONCILE_INDEX_PATH"))
	if err != nil {
		t.Fatal(err)
	}
	defer idx.Close()
	if err := idx.Check(); err != nil {
		t.Fatal(err)
	}
	st, err := idx.State()
	if err != nil {
		t.Fatal(err)
	}
	if flushed := confirmedFlush(t, f); uint64(flushed) != st.Checkpoint || flushed == 0 {
		t.Fatalf("slot confirmed %s, index checkpoint %s; want the same\n%s", flushed, pglogrepl.LSN(st.Checkpoint), out)
	}
	if got := len(entries(t, idx)); got != 20 {
		t.Fatalf("index holds %d entries; want 20", got)
	}
}

// A restart of PostgreSQL, fast or immediate, cuts every connection: the
// service dials again and continues from its checkpoint, without a rescan.
func TestServiceSurvivesPostgresRestarts(t *testing.T) {
	srv := testdb.StartServer(t)
	f := newForumOn(t, srv)
	serviceEnv(t, f, "2s")
	f.migrate()
	s := startService(t, false)

	for _, mode := range []string{"fast", "immediate"} {
		before := f.add("forum/attachments/before-"+mode+".jpg", -1)
		f.softDelete(before)
		eventually(t, 10*time.Second, func() bool { return !f.exists(before) },
			func() string { return fmt.Sprintf("%s: row never purged before the restart:\n%s", mode, s.logs) })
		srv.Restart(t, mode)
		f.pool.Reset()
		after := f.add("forum/attachments/after-"+mode+".jpg", -1)
		f.softDelete(after)
		eventually(t, 40*time.Second, func() bool { return !f.exists(after) },
			func() string { return fmt.Sprintf("%s: row never purged after the restart:\n%s", mode, s.logs) })
	}
	if n := s.logs.count("rescanning the table"); n != 1 {
		t.Errorf("%d rescans; want only the first, for the new slot:\n%s", n, s.logs)
	}
	eventually(t, 5*time.Second, func() bool { return f.files() == 0 },
		func() string { return fmt.Sprintf("%d files left", f.files()) })
}

// A storage key long enough to live in TOAST storage is not sent again by
// an update that leaves it unchanged: the index keeps the one it had, or
// the purge reads it from the database.
func TestServiceHandlesUnchangedToastedKeys(t *testing.T) {
	f := newForum(t)
	serviceEnv(t, f, "2s")
	ctx := context.Background()
	if _, err := f.pool.Exec(ctx, `ALTER TABLE forum_attachment ALTER COLUMN image TYPE text`); err != nil {
		t.Fatal(err)
	}
	f.migrate()
	s := startService(t, false)

	// About 2.3 kB that do not compress: stored out of line, and still
	// short enough for the key index.
	longKey := func(name string) string {
		parts := []string{"forum"}
		for range 12 {
			parts = append(parts, uuid.NewString()+uuid.NewString()+uuid.NewString()+uuid.NewString()+uuid.NewString())
		}
		return strings.Join(append(parts, name), "/")
	}
	unknown := longKey("unknown.jpg") // soft-deleted by an update: the index never saw the key
	known := longKey("known.jpg")     // inserted soft-deleted, then re-deleted: the key stays
	unknownID := f.add(unknown, -1)
	knownID := f.add(known, 0)
	var toast string
	if err := f.pool.QueryRow(ctx, `SELECT reltoastrelid::regclass::text FROM pg_class WHERE relname = 'forum_attachment'`).Scan(&toast); err != nil {
		t.Fatal(err)
	}
	if n := f.count(`SELECT count(DISTINCT chunk_id) FROM ` + toast); n != 2 {
		t.Fatalf("%d keys stored out of line; want 2, or the test proves nothing", n)
	}
	f.softDelete(unknownID)
	f.softDelete(knownID)
	eventually(t, 5*time.Second, func() bool { return len(entries(t, s.idx)) == 2 },
		func() string { return "soft-deletes never indexed" })
	due, _, err := s.idx.Due(nil, time.Now().Add(time.Hour), 10)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range due {
		want := map[string]string{unknownID: "", knownID: known}[e.ID]
		if e.Key != want {
			t.Errorf("index key of %s is %.40q...; want %.40q", e.ID, e.Key, want)
		}
	}
	eventually(t, 10*time.Second, func() bool { return !f.exists(unknownID) && !f.exists(knownID) },
		func() string { return "rows never purged:\n" + s.logs.String() })
	// The files go after the rows' deletion has committed.
	eventually(t, 5*time.Second, func() bool { return f.files() == 0 },
		func() string { return fmt.Sprintf("%d files left; want both removed\n%s", f.files(), s.logs) })
}

// A publication that also carries another table: only the configured
// table's changes reach the index.
func TestServiceIndexesOnlyItsTable(t *testing.T) {
	f := newForum(t)
	serviceEnv(t, f, "1h")
	ctx := context.Background()
	_, err := f.pool.Exec(ctx, `
		CREATE TABLE other_attachment (LIKE forum_attachment INCLUDING ALL);
		CREATE PUBLICATION shared FOR TABLE forum_attachment, other_attachment`)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("RECONCILE_REPLICATION_PUBLICATION", "shared")
	f.migrate()
	s := startService(t, false)
	if _, err := f.pool.Exec(ctx, `
		INSERT INTO other_attachment (id, image, is_active, deleted_at)
		SELECT gen_random_uuid(), 'other/' || g, false, now() FROM generate_series(1, 50) g`); err != nil {
		t.Fatal(err)
	}
	id := f.add("forum/attachments/ours.jpg", 0)
	eventually(t, 5*time.Second, func() bool { return len(entries(t, s.idx)) > 0 },
		func() string { return "our row never indexed" })
	time.Sleep(300 * time.Millisecond)
	if got := entries(t, s.idx); len(got) != 1 || got[id].IsZero() {
		t.Fatalf("index holds %d entries; want only %s", len(got), id)
	}
}

// A transaction too large to apply change by change is covered by a rescan
// that starts while it is still being received; the stream goes on after.
func TestServiceRescansForALargeTransaction(t *testing.T) {
	f, s := bulkService(t)
	if _, err := f.pool.Exec(context.Background(), `
		UPDATE forum_attachment SET is_active = false, deleted_at = now() - (random() * interval '1 day')
		WHERE image LIKE 'forum/bulk/%'`); err != nil {
		t.Fatal(err)
	}
	s.waitLog("a transaction changes more than", 1)
	after := f.add("forum/attachments/after-bulk.jpg", 0)
	eventually(t, 30*time.Second, func() bool {
		e := entries(t, s.idx)
		_, ok := e[after]
		return ok && sameEntries(e, f.truth())
	}, func() string {
		return fmt.Sprintf("index holds %d entries, the table %d", len(entries(t, s.idx)), len(f.truth()))
	})
	st, err := s.idx.State()
	if err != nil {
		t.Fatal(err)
	}
	if flushed := confirmedFlush(t, f); uint64(flushed) > st.Checkpoint {
		t.Fatalf("slot confirmed %s, ahead of the checkpoint %s", flushed, pglogrepl.LSN(st.Checkpoint))
	}
}

// bulkService starts the service on a forum of 25,000 active rows under
// forum/bulk/: more than a transaction the stream applies row by row.
func bulkService(t *testing.T) (*forum, *service) {
	t.Helper()
	f := newForum(t)
	serviceEnv(t, f, "1h")
	f.migrate()
	if _, err := f.pool.Exec(context.Background(), `
		INSERT INTO forum_attachment (id, image, is_active)
		SELECT gen_random_uuid(), 'forum/bulk/' || g || '.jpg', true FROM generate_series(1, 25000) g`); err != nil {
		t.Fatal(err)
	}
	return f, startService(t, false)
}

// A slot another process reads is reported, with the fix, and tried again.
func TestServiceWaitsForASlotInUse(t *testing.T) {
	f, s := serviceOn(t, "1h")
	if err := s.stop(); err != nil {
		t.Fatal(err)
	}
	// Another consumer takes the slot.
	ctx := context.Background()
	other, err := pgconn.Connect(ctx, f.url+"&replication=database")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(ctx)
	if err := pglogrepl.StartReplication(ctx, other, f.slot(), 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names 'reconcile_attachments'"},
	}); err != nil {
		t.Fatal(err)
	}
	s = launchService(t, false)
	s.waitLog("is in use by process", 2)
	if !strings.Contains(s.logs.String(), "set replication.slot to another name") {
		t.Fatalf("the error does not say the fix:\n%s", s.logs)
	}
	if err := s.stop(); err != nil {
		t.Fatal(err)
	}
}

// A publication that leaves out rows or columns would hide changes.
func TestServiceRefusesAFilteredPublication(t *testing.T) {
	f := newForum(t)
	serviceEnv(t, f, "1h")
	if _, err := f.pool.Exec(context.Background(), `
		CREATE PUBLICATION filtered FOR TABLE forum_attachment WHERE (is_active);
		CREATE PUBLICATION columns FOR TABLE forum_attachment (id, image, is_active);
		CREATE PUBLICATION enough FOR TABLE forum_attachment (id, image, is_active, deleted_at)`); err != nil {
		t.Fatal(err)
	}
	f.migrate()
	for _, pub := range []string{"filtered", "columns"} {
		t.Setenv("RECONCILE_REPLICATION_PUBLICATION", pub)
		code, out, stderr := reconcile()
		if code != exitUsage || !strings.Contains(stderr, "does not publish every change and column") {
			t.Fatalf("%s: exit %d; want %d\n%s%s", pub, code, exitUsage, out, stderr)
		}
	}
	// A column list with reconcile's columns is enough.
	t.Setenv("RECONCILE_REPLICATION_PUBLICATION", "enough")
	s := startService(t, false)
	id := f.add("forum/attachments/listed.jpg", 0)
	eventually(t, 5*time.Second, func() bool { _, ok := entries(t, s.idx)[id]; return ok },
		func() string { return "nothing indexed through a column list:\n" + s.logs.String() })
}

// Checks at start on a server of the test's own: a slot whose WAL is gone
// is dropped, created again and followed by a rescan; a server that would
// make reconcile a synchronous standby, or without wal_level = logical, is
// refused, saying what to change.
func TestServiceStartChecksOnItsOwnServer(t *testing.T) {
	srv := testdb.StartServer(t)
	f := newForumOn(t, srv)
	serviceEnv(t, f, "1h")
	f.migrate()
	ctx := context.Background()
	if _, err := f.pool.Exec(ctx, `ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'`); err != nil {
		t.Fatal(err)
	}
	if _, err := f.pool.Exec(ctx, `SELECT pg_reload_conf()`); err != nil {
		t.Fatal(err)
	}
	s := startService(t, false)
	if err := s.stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.pool.Exec(ctx, `CREATE TABLE filler (b text)`); err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, func() bool {
		_, err := f.pool.Exec(ctx, `
			INSERT INTO filler SELECT repeat(md5(g::text), 32) FROM generate_series(1, 2000) g;
			SELECT pg_switch_wal();
			CHECKPOINT`)
		if err != nil {
			t.Fatal(err)
		}
		return f.count(fmt.Sprintf(`SELECT count(*) FROM pg_replication_slots WHERE slot_name = '%s' AND wal_status = 'lost'`, f.slot())) == 1
	}, func() string { return "the slot never lost its WAL" })

	id := f.add("forum/attachments/while-lost.jpg", 0)
	s = startService(t, false)
	if !strings.Contains(s.logs.String(), "lost WAL it needed") || !strings.Contains(s.logs.String(), "had lost WAL and was recreated") {
		t.Fatalf("no warning and rescan for the lost slot:\n%s", s.logs)
	}
	if _, ok := entries(t, s.idx)[id]; !ok {
		t.Fatal("the rescan after the lost slot did not index the row")
	}
	if err := s.stop(); err != nil {
		t.Fatal(err)
	}

	// As the role's SQL tells where synchronous_standby_names is set: the
	// check that the role sees commits wait would come first.
	if _, err := f.pool.Exec(ctx, "GRANT pg_read_all_stats TO "+pgx.Identifier{f.role}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	if _, err := f.pool.Exec(ctx, `ALTER SYSTEM SET synchronous_standby_names = '*'`); err != nil {
		t.Fatal(err)
	}
	if _, err := f.pool.Exec(ctx, `SELECT pg_reload_conf()`); err != nil {
		t.Fatal(err)
	}
	code, out, stderr := reconcile()
	if code != exitUsage || !strings.Contains(stderr, "every commit would wait for reconcile") {
		t.Fatalf("synchronous_standby_names '*': exit %d; want %d\n%s%s", code, exitUsage, out, stderr)
	}
	if _, err := f.pool.Exec(ctx, `ALTER SYSTEM RESET synchronous_standby_names`); err != nil {
		t.Fatal(err)
	}

	// wal_level = replica: the slot must go first, or the server refuses
	// to start.
	if _, err := f.pool.Exec(ctx, `SELECT pg_drop_replication_slot($1)`, f.slot()); err != nil {
		t.Fatal(err)
	}
	if _, err := f.pool.Exec(ctx, `ALTER SYSTEM SET wal_level = replica`); err != nil {
		t.Fatal(err)
	}
	srv.Restart(t, "fast")
	f.pool.Reset()
	code, out, stderr = reconcile()
	if code != exitUsage || !strings.Contains(stderr, `wal_level is "replica"`) || !strings.Contains(stderr, "wal_level = logical") {
		t.Fatalf("exit %d; want %d naming the fix\n%s%s", code, exitUsage, out, stderr)
	}
}

// A storage outage: the rows are purged, their keys wait in the outbox and
// are retried with backoff, and the stream goes on meanwhile.
func TestServiceRetriesRemovalsAfterAStorageOutage(t *testing.T) {
	f := newForum(t)
	serviceEnv(t, f, "1s")
	t.Setenv("RECONCILE_SWEEP_MAX_WAIT", "1s")
	backend, bucket, down := flakyS3(t)
	f.migrate()
	s := startService(t, false)

	down.Store(true)
	key := "forum/attachments/outage.jpg"
	meta := map[string]string{"Last-Modified": time.Now().UTC().Format(http.TimeFormat)}
	if _, err := backend.PutObject(bucket, key, meta, strings.NewReader("img"), 3, nil); err != nil {
		t.Fatal(err)
	}
	id := f.add(key, -1)
	f.softDelete(id)
	outbox := `SELECT count(*) FROM reconcile_forum_attachment_outbox WHERE attempts > 0`
	eventually(t, 15*time.Second, func() bool { return !f.exists(id) && f.count(outbox) == 1 },
		func() string { return "the row was not purged with its key left in the outbox:\n" + s.logs.String() })

	// The stream goes on meanwhile.
	later := f.add("forum/attachments/later.jpg", 0)
	eventually(t, 5*time.Second, func() bool { _, ok := entries(t, s.idx)[later]; return ok },
		func() string { return "the stream stopped during the outage" })

	down.Store(false)
	eventually(t, 30*time.Second, func() bool {
		return f.count(`SELECT count(*) FROM reconcile_forum_attachment_outbox`) == 0
	}, func() string { return "the removal was never retried:\n" + s.logs.String() })
	if _, err := backend.HeadObject(bucket, key); err == nil {
		t.Fatal("the object is still there")
	}
}

// A connection that goes silent (its walsender stopped) is taken for dead
// after the watchdog's deadline and dialled again.
func TestServiceWatchdogRedialsASilentConnection(t *testing.T) {
	f := newForum(t)
	serviceEnv(t, f, "1h")
	t.Setenv("RECONCILE_REPLICATION_WATCHDOG", "1s")
	f.migrate()
	s := startService(t, false)
	var pid int
	err := f.pool.QueryRow(context.Background(),
		`SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1`, f.slot()).Scan(&pid)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			_ = syscall.Kill(pid, syscall.SIGCONT)
		}
	}
	t.Cleanup(resume)
	s.waitLog("taking the connection for dead", 1)
	resume()
	s.waitLog("streaming changes", 2)
	id := f.add("forum/attachments/after-silence.jpg", 0)
	eventually(t, 10*time.Second, func() bool { _, ok := entries(t, s.idx)[id]; return ok },
		func() string { return "nothing indexed after the new connection:\n" + s.logs.String() })
	// A lost connection is no reason to replace the slot.
	if n := s.logs.count("dropping and recreating"); n != 0 {
		t.Fatalf("the slot was dropped after a silent connection:\n%s", s.logs)
	}
}

// The periodic rescan counts from the last one, across restarts.
func TestServiceRescansWhenThePeriodicRescanIsDue(t *testing.T) {
	_, s := serviceOn(t, "1h")
	if err := s.stop(); err != nil {
		t.Fatal(err)
	}
	idx, err := index.Open(os.Getenv("RECONCILE_INDEX_PATH"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := idx.State()
	if err != nil {
		t.Fatal(err)
	}
	// The last rescan was a day and an hour ago.
	if err := idx.Rescanned(st.Origin, st.Checkpoint, time.Now().Add(-25*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := idx.Close(); err != nil {
		t.Fatal(err)
	}
	s = startService(t, false)
	if !strings.Contains(s.logs.String(), `reason="periodic rescan"`) {
		t.Fatalf("no periodic rescan:\n%s", s.logs)
	}
}

// Under synchronous replication a commit is in the stream before other
// sessions see it. A rescan the stream relies on waits for it, or the
// index would lose a change the slot has already acknowledged.
func TestServiceRescanWaitsForCommitsHeldBySynchronousReplication(t *testing.T) {
	srv := testdb.StartServer(t)
	f := newForumOn(t, srv)
	serviceEnv(t, f, "1h")
	f.migrate()
	ctx := context.Background()
	s := startService(t, false)

	// A standby that never answers: commits wait for it, visible to no one.
	setSync := func(names string) {
		t.Helper()
		if _, err := f.pool.Exec(ctx, fmt.Sprintf(`ALTER SYSTEM SET synchronous_standby_names = '%s'`, names)); err != nil {
			t.Fatal(err)
		}
		if _, err := f.pool.Exec(ctx, `SELECT pg_reload_conf()`); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second) // the checkpointer tells the backends
	}
	setSync("nosuch")
	t.Cleanup(func() { setSync("") })
	// The role's SQL, applied again now that commits wait for a standby,
	// grants pg_read_all_stats: the rescan must see them wait. Its own
	// commit waits for no standby.
	f.grantRole(f.url + "&synchronous_commit=local")
	var stats bool
	if err := f.pool.QueryRow(ctx, `SELECT pg_has_role($1, 'pg_read_all_stats', 'USAGE')`, f.role).Scan(&stats); err != nil || !stats {
		t.Fatalf("the role is not in pg_read_all_stats (%v)", err)
	}
	held := make(chan error, 1)
	go func() {
		_, err := f.pool.Exec(ctx, `
			INSERT INTO forum_attachment (id, image, is_active, deleted_at)
			VALUES ('6f1c2c52-7c35-4d1e-9a2b-3c9d0e0f1a2b', 'forum/attachments/held.jpg', false, now())`)
		held <- err
	}()
	const id = "6f1c2c52-7c35-4d1e-9a2b-3c9d0e0f1a2b"
	eventually(t, 10*time.Second, func() bool { _, ok := entries(t, s.idx)[id]; return ok },
		func() string { return "the held commit never reached the index" })
	if f.exists(id) {
		t.Fatal("the held commit is visible: the test proves nothing")
	}
	time.Sleep(time.Second) // the slot acknowledges it
	if err := s.stop(); err != nil {
		t.Fatal(err)
	}

	// A new index: the next start rescans, while the commit is still held.
	if err := os.Remove(os.Getenv("RECONCILE_INDEX_PATH")); err != nil {
		t.Fatal(err)
	}
	s = launchService(t, false)
	time.Sleep(2 * time.Second)
	if strings.Contains(s.logs.String(), "streaming changes") {
		t.Fatalf("the rescan did not wait for the held commit:\n%s", s.logs)
	}
	setSync("")
	if err := <-held; err != nil {
		t.Fatal(err)
	}
	s.waitLog("streaming changes", 1)
	if _, ok := entries(t, s.idx)[id]; !ok {
		t.Fatalf("the rescan lost the held commit:\n%s", s.logs)
	}
}

// Rule 6: an index behind its slot (restored from a copy, say) lacks
// changes the slot will not send again: the next start rescans.
func TestServiceRescansAStaleIndex(t *testing.T) {
	f, s := serviceOn(t, "1h")
	path := os.Getenv("RECONCILE_INDEX_PATH")
	if err := s.stop(); err != nil {
		t.Fatal(err)
	}
	old, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s = startService(t, false)
	id := f.add("forum/attachments/after-the-copy.jpg", 0)
	eventually(t, 10*time.Second, func() bool {
		st, err := s.idx.State()
		return err == nil && confirmedFlush(t, f) == pglogrepl.LSN(st.Checkpoint) && !entries(t, s.idx)[id].IsZero()
	}, func() string { return "the change was never indexed and acknowledged" })
	if err := s.stop(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, old, 0o600); err != nil {
		t.Fatal(err)
	}
	s = startService(t, false)
	if !strings.Contains(s.logs.String(), "is behind the slot") {
		t.Fatalf("no rescan for the stale index:\n%s", s.logs)
	}
	if got, want := entries(t, s.idx), f.truth(); !sameEntries(got, want) {
		t.Fatalf("index %v, table %v", got, want)
	}
}

// flakyS3 points the configuration at an S3 server in the test's process,
// whose DeleteObjects fails while down is set.
func flakyS3(t *testing.T) (backend *s3mem.Backend, bucket string, down *atomic.Bool) {
	t.Helper()
	bucket = "media"
	// Uploaded an hour ago: an object modified about the time its
	// removal is queued is a new upload, which stays.
	backend = s3mem.New(s3mem.WithTimeSource(gofakes3.FixedTimeSource(time.Now().Add(-time.Hour))))
	if err := backend.CreateBucket(bucket); err != nil {
		t.Fatal(err)
	}
	down = &atomic.Bool{}
	s3 := gofakes3.New(backend).Server()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if down.Load() && r.Method == http.MethodPost && r.URL.Query().Has("delete") {
			http.Error(w, "storage is down", http.StatusServiceUnavailable)
			return
		}
		s3.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	t.Setenv("RECONCILE_STORAGE_BACKEND", "s3")
	t.Setenv("RECONCILE_STORAGE_S3_ENDPOINT", strings.TrimPrefix(srv.URL, "http://"))
	t.Setenv("RECONCILE_STORAGE_S3_BUCKET", bucket)
	t.Setenv("RECONCILE_STORAGE_S3_USE_SSL", "false")
	t.Setenv("RECONCILE_STORAGE_S3_ACCESS_KEY", "test")
	t.Setenv("RECONCILE_STORAGE_S3_SECRET_KEY", "testsecret")
	t.Setenv("RECONCILE_STORAGE_S3_REGION", "us-east-1")
	return backend, bucket, down
}
