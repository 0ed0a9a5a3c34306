package main

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/reconcile/reconcile/internal/testdb"
)

// Row 7: the publication dropped, or replaced by a new name as our own
// message advises, while the slot stays. The slot cannot decode its WAL
// without the publication, ever: the service drops it, makes a new one,
// rescans, and purges what fell due meanwhile.
func TestServiceRecoversFromADroppedPublication(t *testing.T) {
	f := newForum(t)
	serviceEnv(t, f, "3s")
	f.migrate()
	// Only the table's owner can create the publication again.
	t.Setenv("RECONCILE_DATABASE_URL", f.url)
	s := startService(t, false)
	ctx := context.Background()
	first := f.add("forum/attachments/before.jpg", -1)
	if _, err := f.pool.Exec(ctx, `DROP PUBLICATION reconcile_attachments`); err != nil {
		t.Fatal(err)
	}
	f.softDelete(first)
	s.waitLog("dropping and recreating it", 1)
	eventually(t, 20*time.Second, func() bool { return !f.exists(first) },
		func() string {
			return "the row soft-deleted after the publication was dropped was never purged:\n" + s.logs.String()
		})

	// A new publication name, set while the service is stopped.
	if err := s.stop(); err != nil {
		t.Fatal(err)
	}
	t.Setenv("RECONCILE_REPLICATION_PUBLICATION", "reconcile_renamed")
	second := f.add("forum/attachments/renamed.jpg", -1)
	f.softDelete(second)
	s = launchService(t, false)
	s.waitLog("dropping and recreating it", 1)
	eventually(t, 20*time.Second, func() bool { return !f.exists(second) },
		func() string {
			return "the row soft-deleted before the new publication was never purged:\n" + s.logs.String()
		})
	if n := s.logs.count("[CLEANUP] Failed: service stopped"); n != 0 {
		t.Fatalf("the service stopped:\n%s", s.logs)
	}
}

// Row 9: a partitioned attachment table, under the service: the changes of
// its partitions reach the index under the table's name.
func TestServicePurgesAPartitionedTable(t *testing.T) {
	f := newForum(t)
	ctx := context.Background()
	if _, err := f.pool.Exec(ctx, "DROP TABLE forum_attachment;"+testdb.PartitionedSchema); err != nil {
		t.Fatal(err)
	}
	serviceEnv(t, f, "2s")
	f.migrate()
	old := f.add("forum/attachments/old.jpg", 48) // due before the start: the first rescan finds it
	s := startService(t, false)
	var ids []string
	for i := range 6 {
		id := f.add(fmt.Sprintf("forum/attachments/p-%d.jpg", i), -1)
		f.softDelete(id)
		ids = append(ids, id)
	}
	kept := f.add("forum/attachments/active.jpg", -1)
	eventually(t, 20*time.Second, func() bool {
		for _, id := range append(ids, old) {
			if f.exists(id) {
				return false
			}
		}
		return true
	}, func() string { return "rows of the partitions were never purged:\n" + s.logs.String() })
	if !f.exists(kept) {
		t.Fatal("an active row was purged")
	}
	if n := f.count(`SELECT count(*) FROM pg_partition_tree('forum_attachment') t JOIN pg_index i ON i.indrelid = t.relid WHERE NOT i.indisvalid`); n != 0 {
		t.Fatalf("%d invalid indexes left by migrate", n)
	}
}

// Row 11 under the service: a row whose deletion fails with an error of
// its own (a trigger's SQLSTATE, a corrupt page) is reported and set
// aside; the rows after it are purged on time.
func TestServiceGoesPastARowItCannotDelete(t *testing.T) {
	f, s := serviceOn(t, "2s")
	bad := f.add("forum/attachments/bad.jpg", -1)
	if _, err := f.pool.Exec(context.Background(), fmt.Sprintf(`
		CREATE FUNCTION corrupt_page() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF OLD.id = '%s' THEN RAISE EXCEPTION 'invalid page in block 42' USING ERRCODE = 'XX001'; END IF;
			RETURN OLD;
		END $$;
		CREATE TRIGGER corrupt_page BEFORE DELETE ON forum_attachment FOR EACH ROW EXECUTE FUNCTION corrupt_page()`, bad)); err != nil {
		t.Fatal(err)
	}
	f.softDelete(bad)
	time.Sleep(100 * time.Millisecond)
	var later []string
	for i := range 3 {
		id := f.add(fmt.Sprintf("forum/attachments/later-%d.jpg", i), -1)
		f.softDelete(id)
		later = append(later, id)
	}
	eventually(t, 15*time.Second, func() bool {
		for _, id := range later {
			if f.exists(id) {
				return false
			}
		}
		return true
	}, func() string { return "rows after the failing one were never purged:\n" + s.logs.String() })
	if !f.exists(bad) || s.logs.count("[CLEANUP] Failed to delete attachment") == 0 {
		t.Fatalf("the failing row is gone, or was never reported:\n%s", s.logs)
	}
}

// An index emptied under the stream (set aside as corrupt when the timer
// met garbage pages) is noticed on a quiet table too, and rebuilt.
func TestServiceRescansAnIndexEmptiedUnderIt(t *testing.T) {
	f, s := serviceOn(t, "1h")
	id := f.add("forum/attachments/kept-in-the-index.jpg", 0)
	eventually(t, 5*time.Second, func() bool { _, ok := entries(t, s.idx)[id]; return ok },
		func() string { return "the soft-delete was never indexed" })
	if err := s.idx.Reset(); err != nil {
		t.Fatal(err)
	}
	s.waitLog("the index was emptied while streaming", 1)
	eventually(t, 10*time.Second, func() bool { _, ok := entries(t, s.idx)[id]; return ok },
		func() string { return "the index was not rebuilt:\n" + s.logs.String() })
}
