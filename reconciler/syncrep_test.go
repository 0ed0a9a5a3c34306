package reconciler_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/reconcile/reconcile/internal/testdb"
	"github.com/reconcile/reconcile/reconciler"
)

// Row 10: under synchronous replication a commit reaches the WAL, and the
// stream, long before other sessions see it: until the standby answers. A
// rescan the stream relies on must wait for it, or it misses the row until
// the next rescan. A role without pg_read_all_stats cannot see other
// sessions' wait events, so it cannot tell such a commit: the rescan is
// refused with the GRANT to run; once granted, it waits for the commit.
func TestRescanWaitsForCommitsHeldByASynchronousStandby(t *testing.T) {
	ctx := context.Background()
	srv := testdb.StartServer(t) // synchronous_standby_names is the server's: not on the shared one
	url, admin := srv.NewDjango(t)
	if _, err := admin.Exec(ctx, `
		CREATE ROLE reconciler LOGIN;
		GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO reconciler;
		GRANT CREATE ON SCHEMA public TO reconciler`); err != nil {
		t.Fatal(err)
	}
	setStandbys := func(names string) {
		t.Helper()
		if _, err := admin.Exec(ctx, `ALTER SYSTEM SET synchronous_standby_names = `+names); err != nil {
			t.Fatal(err)
		}
		if _, err := admin.Exec(ctx, `SELECT pg_reload_conf()`); err != nil {
			t.Fatal(err)
		}
	}
	// Before the pools close: a commit still waiting would hold them.
	t.Cleanup(func() {
		_, _ = admin.Exec(context.Background(), `ALTER SYSTEM RESET synchronous_standby_names`)
		_, _ = admin.Exec(context.Background(), `SELECT pg_reload_conf()`)
	})
	if _, err := admin.Exec(ctx, `ALTER TABLE forum_attachment OWNER TO reconciler`); err != nil {
		t.Fatal(err)
	}
	b := setupOn(t, poolOn(t, url, func(c *pgxpool.Config) { c.ConnConfig.User = "reconciler" }))
	id := uuid.NewString()
	b.seed(row{id: id, key: "sync/leaf.jpg", active: true})

	setStandbys("'a_standby_that_never_answers'")
	// The soft-delete commits in the WAL, then waits for the standby.
	committed := make(chan error, 1)
	go func() {
		_, err := admin.Exec(ctx, `UPDATE forum_attachment SET is_active = false, deleted_at = now() - interval '1 day' WHERE id = $1`, id)
		committed <- err
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var waiting int
		if err := admin.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'`).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the commit never waited for the standby")
		}
		time.Sleep(10 * time.Millisecond)
	}
	var sees int
	if err := b.pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'`).Scan(&sees); err != nil || sees != 0 {
		t.Fatalf("reconcile's role sees %d sessions waiting for SyncRep (%v); the test needs a role that cannot", sees, err)
	}

	cutoff, err := b.r.Cutoff(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = b.r.RescanForStream(ctx, cutoff)
	if !errors.Is(err, reconciler.ErrSetup) || !strings.Contains(err.Error(), `GRANT pg_read_all_stats TO "reconciler"`) {
		t.Fatalf("rescan by a role that cannot see the wait: %v; want ErrSetup with the GRANT to run", err)
	}
	// A commit that does not wait for the standby itself.
	if _, err := admin.Exec(ctx, `SET LOCAL synchronous_commit = local; GRANT pg_read_all_stats TO reconciler`); err != nil {
		t.Fatal(err)
	}
	rescanned := make(chan int, 1)
	go func() {
		due, err := b.r.RescanForStream(ctx, cutoff)
		if err != nil {
			t.Error(err)
		}
		rescanned <- due
	}()
	select {
	case due := <-rescanned:
		t.Fatalf("the rescan ended (%d due) while a commit it must see waited for the standby", due)
	case <-time.After(3 * time.Second):
	}
	setStandbys("''")
	if err := <-committed; err != nil {
		t.Fatal(err)
	}
	if due := <-rescanned; due != 1 {
		t.Fatalf("the rescan found %d due rows, want the one whose commit it waited for", due)
	}
}
