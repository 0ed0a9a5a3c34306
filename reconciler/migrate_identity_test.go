package reconciler_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/reconcile/reconcile/internal/testdb"
	"github.com/reconcile/reconcile/reconciler"
)

// Setting REPLICA IDENTITY FULL waits behind a long transaction a second at
// a time, so the forum's own queries are never queued for long behind it.
func TestMigrateDoesNotQueueTheForumBehindALongTransaction(t *testing.T) {
	ctx := context.Background()
	_, pool := testdb.NewDjango(t)
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `SELECT count(*) FROM forum_attachment`); err != nil { // holds ACCESS SHARE
		t.Fatal(err)
	}
	r, err := reconciler.New(ctx, pool, nil, nil, djangoTable, reconciler.Config{Retention: retention, BatchSize: 1, Concurrency: 1, RemoveConcurrency: 1}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	migrated := make(chan error, 1)
	go func() { migrated <- r.Migrate(ctx) }()
	// The forum reads on while migrate waits.
	for range 5 {
		time.Sleep(500 * time.Millisecond)
		qctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		_, err := pool.Exec(qctx, `SELECT count(*) FROM forum_attachment`)
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
	var identity string
	if err := pool.QueryRow(ctx, `SELECT relreplident::text FROM pg_class WHERE oid = 'forum_attachment'::regclass`).Scan(&identity); err != nil || !strings.EqualFold(identity, "f") {
		t.Fatalf("replica identity %q, %v", identity, err)
	}
}

// On a partitioned table each relation is set in a transaction of its own:
// one partition held by a long transaction never holds the others' locks
// while migrate waits for it.
func TestMigrateSetsEachPartitionOnItsOwn(t *testing.T) {
	ctx := context.Background()
	_, pool := testdb.New(t)
	if _, err := pool.Exec(ctx, testdb.PartitionedSchema); err != nil {
		t.Fatal(err)
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `SELECT count(*) FROM forum_attachment_p2b`); err != nil {
		t.Fatal(err)
	}
	r, err := reconciler.New(ctx, pool, nil, nil, djangoTable, reconciler.Config{Retention: retention, BatchSize: 1, Concurrency: 1, RemoveConcurrency: 1}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	migrated := make(chan error, 1)
	go func() { migrated <- r.Migrate(ctx) }()
	for range 6 {
		time.Sleep(500 * time.Millisecond)
		qctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		_, err := pool.Exec(qctx, `SELECT count(*) FROM forum_attachment_p0`)
		cancel()
		if err != nil {
			t.Fatalf("a forum query waited behind migrate: %v", err)
		}
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-migrated; err != nil {
		t.Fatal(err)
	}
	var notFull int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_class WHERE oid IN (SELECT relid FROM pg_partition_tree('forum_attachment')) AND relreplident <> 'f'`).Scan(&notFull); err != nil || notFull != 0 {
		t.Fatalf("%d relations without FULL (%v)", notFull, err)
	}
}
