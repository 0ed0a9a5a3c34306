package replication

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/reconcile/reconcile/internal/testdb"
)

func TestSlotTellsRetainedWALAndLag(t *testing.T) {
	url, pool := testdb.NewDjango(t)
	ctx := context.Background()
	name := "t_slot_" + strings.ReplaceAll(uuid.NewString()[:8], "-", "")

	s, err := Slot(ctx, pool, name)
	if err != nil || s.Exists || s.Active || s.MaxSlotWALKeepSize != -1 {
		t.Fatalf("missing slot: %+v, %v; want it absent, on a server without max_slot_wal_keep_size", s, err)
	}

	if _, err := pool.Exec(ctx, `CREATE PUBLICATION t_slot FOR TABLE forum_attachment`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, name); err != nil {
		t.Fatal(err)
	}
	// WAL written after the slot's position: held for the slot, and not
	// confirmed by any consumer.
	if _, err := pool.Exec(ctx, `INSERT INTO forum_attachment (id, image, original_filename, is_active)
		SELECT gen_random_uuid(), 'slot/' || i || '.jpg', 'x.jpg', true FROM generate_series(1, 1000) i`); err != nil {
		t.Fatal(err)
	}
	s, err = Slot(ctx, pool, name)
	if err != nil {
		t.Fatal(err)
	}
	if !s.Exists || s.Active || s.ActivePID != 0 || s.WALStatus != "reserved" || s.SafeWALSize != nil {
		t.Fatalf("idle slot: %+v", s)
	}
	if s.LagBytes < 50_000 || s.RetainedBytes < s.LagBytes {
		t.Fatalf("idle slot: retained %d, lag %d bytes; want the 1000 rows' WAL in both", s.RetainedBytes, s.LagBytes)
	}

	// A consumer makes it active, under its walsender's pid.
	rc, err := pgconn.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	rc.RuntimeParams["replication"] = "database"
	conn, err := pgconn.ConnectConfig(ctx, rc)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	err = pglogrepl.StartReplication(ctx, conn, name, 0, pglogrepl.StartReplicationOptions{PluginArgs: []string{"proto_version '1'", "publication_names 't_slot'"}})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if s, err = Slot(ctx, pool, name); err != nil {
			t.Fatal(err)
		}
		if s.Active {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the slot never became active: %+v", s)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if s.ActivePID != int(conn.PID()) {
		t.Fatalf("active pid %d; want the walsender's, %d", s.ActivePID, conn.PID())
	}
}
