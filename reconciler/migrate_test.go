package reconciler_test

import (
	"context"
	"strings"
	"testing"

	"github.com/reconcile/reconcile/internal/testdb"
	"github.com/reconcile/reconcile/reconciler"
)

func indexDefs(t *testing.T, b *bundle) []string {
	t.Helper()
	rows, err := b.pool.Query(b.ctx, `SELECT indexdef FROM pg_indexes WHERE tablename = 'forum_attachment' ORDER BY indexname`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var defs []string
	for rows.Next() {
		var d string
		if err := rows.Scan(&d); err != nil {
			t.Fatal(err)
		}
		defs = append(defs, d)
	}
	return defs
}

func countPartial(defs []string) int {
	n := 0
	for _, d := range defs {
		if strings.Contains(d, "WHERE") {
			n++
		}
	}
	return n
}

// On a database Django migrated (its 0004 has the partial index), migrate
// adds the outbox and the key index, no second partial index, and is
// idempotent.
func TestMigrateOnDjangoDatabase(t *testing.T) {
	b := setup(t) // setup migrates once
	if err := b.r.Migrate(b.ctx); err != nil {
		t.Fatalf("second migrate: %v", err)
	}
	defs := indexDefs(t, b)
	if countPartial(defs) != 1 {
		t.Fatalf("partial indexes: %q, want only Django's", defs)
	}
	if !strings.Contains(strings.Join(defs, "\n"), "(image)") {
		t.Fatalf("no key index among %q", defs)
	}
	if len(defs) != 3 {
		t.Fatalf("indexes: %q, want pkey, Django's partial index and the key index", defs)
	}
	if b.count(`SELECT count(*) FROM reconcile_forum_attachment_outbox`) != 0 {
		t.Fatal("outbox not empty")
	}
}

// Without Django's index, migrate creates one and the due query uses it.
func TestMigrateCreatesPartialIndexWhenMissing(t *testing.T) {
	ctx := context.Background()
	_, pool := testdb.NewDjango(t)
	if _, err := pool.Exec(ctx, `DROP INDEX forum_attac_is_acti_8d0ac7_idx`); err != nil {
		t.Fatal(err)
	}
	// An invalid leftover of an interrupted concurrent build is replaced.
	if _, err := pool.Exec(ctx, `CREATE INDEX reconcile_forum_attachment_due_idx ON forum_attachment (is_active, deleted_at) WHERE NOT is_active;
		UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'reconcile_forum_attachment_due_idx'::regclass`); err != nil {
		t.Fatal(err)
	}
	b := newBundle(t, ctx, pool, t.TempDir(), nil)
	defs := indexDefs(t, b)
	if countPartial(defs) != 1 {
		t.Fatalf("partial indexes: %q, want exactly one", defs)
	}
	var valid bool
	if err := pool.QueryRow(ctx, `SELECT indisvalid FROM pg_index WHERE indexrelid = 'reconcile_forum_attachment_due_idx'::regclass`).Scan(&valid); err != nil || !valid {
		t.Fatalf("due index valid = %v, err %v", valid, err)
	}
}

// Configuration that does not match the table is refused before anything is
// touched, naming the key to fix.
func TestTableMismatchNamesTheKey(t *testing.T) {
	ctx := context.Background()
	_, pool := testdb.NewDjango(t)
	cfg := reconciler.Config{Retention: retention, BatchSize: 10, Concurrency: 1, RemoveConcurrency: 1}
	for _, tc := range []struct {
		change func(*reconciler.Table)
		want   string
	}{
		{func(tb *reconciler.Table) { tb.Name = "forum_attachments" }, `table.schema, table.name: no table "public"."forum_attachments"`},
		{func(tb *reconciler.Table) { tb.Key = "file" }, `table.columns.key: column "file" does not exist`},
		{func(tb *reconciler.Table) { tb.IsActive = "original_filename" }, `table.columns.is_active: column "original_filename" is character varying(255), want one of bool`},
		{func(tb *reconciler.Table) { tb.DeletedAt = "Deleted_At" }, `table.columns.deleted_at: column "Deleted_At" does not exist`},
	} {
		table := djangoTable
		tc.change(&table)
		_, err := reconciler.New(ctx, pool, nil, nil, table, cfg, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v) error = %v, want it to contain %q", table, err, tc.want)
		}
	}
}

// Only an index that serves the due query counts as equivalent: a written
// `= false` predicate does; an expression, another predicate or another
// access method does not.
func TestMigrateEquivalentIndexDetection(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		ddl     string
		creates bool
	}{
		{`CREATE INDEX theirs ON forum_attachment (is_active, deleted_at) WHERE is_active = false`, false},
		{`CREATE INDEX theirs ON forum_attachment (deleted_at) WHERE NOT is_active`, false},
		{`CREATE INDEX theirs ON forum_attachment (lower(image), is_active, deleted_at) WHERE NOT is_active`, true},
		{`CREATE INDEX theirs ON forum_attachment (is_active, deleted_at) WHERE is_active`, true},
		{`CREATE INDEX theirs ON forum_attachment USING brin (deleted_at) WHERE NOT is_active`, true},
		{`CREATE INDEX theirs ON forum_attachment (is_active) INCLUDE (deleted_at) WHERE NOT is_active`, true},
	} {
		_, pool := testdb.NewDjango(t)
		if _, err := pool.Exec(ctx, `DROP INDEX forum_attac_is_acti_8d0ac7_idx; `+tc.ddl); err != nil {
			t.Fatal(err)
		}
		b := newBundle(t, ctx, pool, t.TempDir(), nil)
		var ours bool
		if err := pool.QueryRow(ctx, `SELECT to_regclass('reconcile_forum_attachment_due_idx') IS NOT NULL`).Scan(&ours); err != nil {
			t.Fatal(err)
		}
		if ours != tc.creates {
			t.Errorf("after %q: our index created = %v, want %v (%q)", tc.ddl, ours, tc.creates, indexDefs(t, b))
		}
	}
}
