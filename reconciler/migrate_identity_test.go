package reconciler_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/reconcile/reconcile/internal/testdb"
	"github.com/reconcile/reconcile/reconciler"
)

// migrateBehind runs Migrate while a long transaction reads held, and
// queries probe meanwhile: the forum's own queries must never wait long
// behind migrate. Once the transaction ends, migrate must finish and leave
// every relation of the table with REPLICA IDENTITY FULL.
func migrateBehind(t *testing.T, pool *pgxpool.Pool, held, probe string) {
	t.Helper()
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `SELECT count(*) FROM `+held); err != nil { // holds ACCESS SHARE
		t.Fatal(err)
	}
	r, err := reconciler.New(ctx, pool, nil, nil, djangoTable, reconciler.Config{Retention: retention, BatchSize: 1, Concurrency: 1, RemoveConcurrency: 1}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	migrated := make(chan error, 1)
	go func() { migrated <- r.Migrate(ctx) }()
	for range 5 {
		time.Sleep(500 * time.Millisecond)
		qctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		_, err := pool.Exec(qctx, `SELECT count(*) FROM `+probe)
		cancel()
		if err != nil {
			t.Fatalf("a forum query waited behind migrate: %v", err)
		}
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-migrated; err != nil {
		t.Fatalf("migrate, once the transaction ended: %v", err)
	}
	var notFull int
	err = pool.QueryRow(ctx, `
		SELECT count(*) FROM pg_class
		WHERE (oid = 'forum_attachment'::regclass OR oid IN (SELECT relid FROM pg_partition_tree('forum_attachment')))
		  AND relreplident <> 'f'`).Scan(&notFull)
	if err != nil || notFull != 0 {
		t.Fatalf("%d relations without REPLICA IDENTITY FULL (%v)", notFull, err)
	}
}

// Setting REPLICA IDENTITY FULL waits behind a long transaction a second at
// a time, so the forum's own queries are never queued for long behind it.
func TestMigrateDoesNotQueueTheForumBehindALongTransaction(t *testing.T) {
	_, pool := testdb.NewDjango(t)
	migrateBehind(t, pool, "forum_attachment", "forum_attachment")
}

// On a partitioned table each relation is set in a transaction of its own:
// one partition held by a long transaction never holds the others' locks
// while migrate waits for it.
func TestMigrateSetsEachPartitionOnItsOwn(t *testing.T) {
	_, pool := testdb.New(t)
	if _, err := pool.Exec(context.Background(), testdb.PartitionedSchema); err != nil {
		t.Fatal(err)
	}
	migrateBehind(t, pool, "forum_attachment_p2b", "forum_attachment_p0")
}
