package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// threeTables adds to the forum a table of each soft-delete shape, its
// rows and their files, and configures all three through RECONCILE_TABLES:
//
//	forum_attachment  is_active = false   1 due, 1 soft-deleted not due, 1 active
//	blog_image        is_deleted = true   2 due, 1 not due, 1 without deleted_at, 1 active; two key columns
//	avatar            deleted_at alone    1 due, 1 not due, 1 active
func threeTables(t *testing.T, f *forum) {
	t.Helper()
	f.add("forum/due.jpg", 48)
	f.add("forum/recent.jpg", 0)
	f.add("forum/active.jpg", -1)
	_, err := f.pool.Exec(context.Background(), `
		CREATE TABLE blog_image (
			id bigint PRIMARY KEY, file text, cover text, original_filename text NOT NULL DEFAULT '',
			is_deleted boolean NOT NULL DEFAULT false, deleted_at timestamptz);
		INSERT INTO blog_image (id, file, cover, is_deleted, deleted_at) VALUES
			(1, 'blog/1.jpg', 'blog/1-cover.jpg', true, now() - interval '10 days'),
			(2, 'blog/2.jpg', NULL, true, now() - interval '8 days'),
			(3, 'blog/3.jpg', '', true, now() - interval '1 day'),
			(4, 'blog/4.jpg', NULL, true, NULL),
			(5, 'blog/5.jpg', 'blog/5-cover.jpg', false, NULL);
		CREATE TABLE avatar (
			id integer PRIMARY KEY, photo text NOT NULL, original_filename text NOT NULL DEFAULT '', deleted_at timestamptz);
		INSERT INTO avatar (id, photo, deleted_at) VALUES
			(1, 'avatar/1.png', now() - interval '5 days'),
			(2, 'avatar/2.png', now() - interval '1 day'),
			(3, 'avatar/3.png', NULL);`)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"blog/1.jpg", "blog/1-cover.jpg", "blog/2.jpg", "blog/3.jpg", "blog/4.jpg", "blog/5.jpg", "blog/5-cover.jpg",
		"avatar/1.png", "avatar/2.png", "avatar/3.png"} {
		path := filepath.Join(f.root, key)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte("img"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("RECONCILE_TABLES", `[
		{name: forum_attachment},
		{name: blog_image, columns: {key: [file, cover], is_active: "", is_deleted: is_deleted}, retention: 7d, derived: ["{dir}/thumbs/{stem}.webp"]},
		{name: avatar, columns: {key: photo, is_active: ""}, retention: 72h}]`)
}

// tablesReport is what `reconcile tables --format json` prints.
type tablesReport struct {
	Tables []struct {
		Table      string   `json:"table"`
		Config     string   `json:"config"`
		SoftDelete string   `json:"soft_delete"`
		KeyColumns []string `json:"key_columns"`
		Retention  string   `json:"retention"`
		Derived    []string `json:"derived"`
		Rows       int64    `json:"rows_estimate"`
		Soft       int      `json:"soft_deleted_rows"`
		Due        int      `json:"due_rows"`
		Ready      bool     `json:"ready"`
		Needs      []struct {
			What    string `json:"what"`
			Name    string `json:"name"`
			Present bool   `json:"present"`
			Detail  string `json:"detail"`
		} `json:"needs"`
	} `json:"tables"`
	Ready bool `json:"ready"`
}

func describe(t *testing.T, wantCode int) tablesReport {
	t.Helper()
	code, out, stderr := reconcile("tables", "--format", "json")
	if code != wantCode {
		t.Fatalf("tables: exit %d, want %d\n%s%s", code, wantCode, out, stderr)
	}
	var rep tablesReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("tables --format json: %v\n%s", err, out)
	}
	return rep
}

// `reconcile tables` shows each table's shape, keys, retention and rows,
// and what the purge needs of it: missing before migrate (exit 1), there
// after (exit 0), Django's own due index standing for reconcile's.
func TestTablesShowsWhatThePurgeNeeds(t *testing.T) {
	f := newForum(t)
	threeTables(t, f)

	type want struct {
		table, config, shape, keys, retention string
		soft, due                             int
		needs                                 []string
	}
	wants := []want{
		{"public.forum_attachment", "tables[0]", "is_active = false", "image", "1h0m0s", 2, 1,
			[]string{"outbox", "due index", "key index on image", "REPLICA IDENTITY FULL", "publication"}},
		{"public.blog_image", "tables[1]", "is_deleted = true", "file,cover", "168h0m0s", 4, 2,
			[]string{"outbox", "due index", "key index on file", "key index on cover",
				"derived index of {dir}/thumbs/{stem}.webp on file", "derived index of {dir}/thumbs/{stem}.webp on cover",
				"REPLICA IDENTITY FULL", "publication"}},
		{"public.avatar", "tables[2]", "deleted_at IS NOT NULL", "photo", "72h0m0s", 2, 1,
			[]string{"outbox", "due index", "key index on photo", "REPLICA IDENTITY FULL", "publication"}},
	}
	check := func(rep tablesReport, migrated bool) {
		t.Helper()
		if len(rep.Tables) != len(wants) || rep.Ready != migrated {
			t.Fatalf("%d tables, ready %t; want %d, %t", len(rep.Tables), rep.Ready, len(wants), migrated)
		}
		for i, w := range wants {
			d := rep.Tables[i]
			if d.Table != w.table || d.Config != w.config || d.SoftDelete != w.shape || strings.Join(d.KeyColumns, ",") != w.keys ||
				d.Retention != w.retention || d.Soft != w.soft || d.Due != w.due || d.Ready != migrated {
				t.Errorf("table %d = %+v; want %+v, ready %t", i, d, w, migrated)
			}
			if len(d.Needs) != len(w.needs) {
				t.Errorf("%s needs %+v; want %q", d.Table, d.Needs, w.needs)
				continue
			}
			for j, what := range w.needs {
				c := d.Needs[j]
				// Django's index of migration 0004 serves the forum's due
				// rows: reconcile never makes its own.
				django := c.What == "due index" && d.Table == "public.forum_attachment"
				if c.What != what || c.Present != (migrated || django) {
					t.Errorf("%s: need %d = %+v; want %q present %t", d.Table, j, c, what, migrated || django)
				}
				if django && !strings.Contains(c.Detail, "forum_attac_is_acti_8d0ac7_idx") {
					t.Errorf("%s: the due index does not name Django's: %+v", d.Table, c)
				}
			}
		}
	}

	check(describe(t, exitFailed), false)
	code, out, stderr := reconcile("tables")
	if code != exitFailed || !strings.Contains(out, "MISSING  outbox public.reconcile_blog_image_outbox") ||
		!strings.Contains(out, "soft-deleted:  is_deleted = true (since deleted_at)") ||
		!strings.Contains(out, "2 soft-deleted, 1 due now") || !strings.Contains(stderr, "run `reconcile migrate`") {
		t.Errorf("tables before migrate: exit %d\n%s%s", code, out, stderr)
	}

	// Migrated, and run as reconcile's role from --print-role: the role
	// reads every table.
	f.migrate()
	check(describe(t, exitOK), true)
	if _, err := f.pool.Exec(context.Background(), `ANALYZE forum_attachment, blog_image, avatar`); err != nil {
		t.Fatal(err)
	}
	for i, rows := range []int64{3, 5, 3} {
		if got := describe(t, exitOK).Tables[i].Rows; got != rows {
			t.Errorf("table %d: about %d rows; want %d once analyzed", i, got, rows)
		}
	}
	if code, out, stderr := reconcile("tables"); code != exitOK || strings.Contains(out, "MISSING") {
		t.Errorf("tables after migrate: exit %d\n%s%s", code, out, stderr)
	}

	// A table that is not there is bad configuration.
	t.Setenv("RECONCILE_TABLES", `[{name: forum_attachment}, {name: nowhere}]`)
	if code, out, stderr := reconcile("tables"); code != exitUsage || !strings.Contains(stderr, "no table") {
		t.Errorf("a missing table: exit %d\n%s%s; want %d", code, out, stderr, exitUsage)
	}
}

// The role that --print-role prints for several tables has the grants on
// each table and its outbox.
func TestPrintRoleGrantsEveryTable(t *testing.T) {
	f := newForum(t)
	threeTables(t, f)
	f.migrate()
	for _, table := range []string{"forum_attachment", "blog_image", "avatar"} {
		var onTable, more, onOutbox bool
		err := f.pool.QueryRow(context.Background(), `
			SELECT has_table_privilege($1, $2, 'SELECT, DELETE'), has_table_privilege($1, $2, 'INSERT, UPDATE, TRUNCATE'),
			       has_table_privilege($1, 'reconcile_' || $2 || '_outbox', 'SELECT, INSERT, UPDATE, DELETE')`,
			f.role, table).Scan(&onTable, &more, &onOutbox)
		if err != nil {
			t.Fatal(err)
		}
		if !onTable || more || !onOutbox {
			t.Errorf("%s: the role has SELECT, DELETE %t, more %t, on the outbox %t", table, onTable, more, onOutbox)
		}
	}
	code, sql, _ := reconcile("migrate", "--print-role", "reconcile")
	if code != exitOK || strings.Count(sql, "CREATE ROLE") != 1 || strings.Count(sql, "GRANT USAGE ON SCHEMA") != 1 {
		t.Errorf("--print-role: exit %d; want the role and the schema once:\n%s", code, sql)
	}
}

// auditReport is what `reconcile --rescan --dry-run --format json` prints
// for several tables.
type auditReport struct {
	DryRun bool `json:"dry_run"`
	Tables []struct {
		Table        string            `json:"table"`
		Due          []json.RawMessage `json:"due"`
		Inconsistent []json.RawMessage `json:"inconsistent"`
		Totals       struct {
			Due     int    `json:"would_delete"`
			ThisRun int    `json:"this_run"`
			Problem string `json:"storage_problem"`
		} `json:"totals"`
	} `json:"tables"`
	Totals struct {
		Tables       int `json:"tables"`
		Due          int `json:"would_delete"`
		Inconsistent int `json:"inconsistent"`
		ThisRun      int `json:"this_run"`
		Problems     int `json:"storage_problems"`
	} `json:"totals"`
}

// The audit of several tables reports each on its own, then the totals;
// the run's deletion budget goes to the tables in order; a table whose
// storage holds none of its files is reported with the others, and the
// audit exits 1.
func TestAuditOfSeveralTables(t *testing.T) {
	f := newForum(t)
	threeTables(t, f)
	rows := f.count(`SELECT (SELECT count(*) FROM forum_attachment) + (SELECT count(*) FROM blog_image) + (SELECT count(*) FROM avatar)`)

	code, out, stderr := reconcile("--rescan", "--dry-run", "--format", "json", "--max-deletes", "2")
	if code != exitOK {
		t.Fatalf("exit %d\n%s%s", code, out, stderr)
	}
	var rep auditReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	type counts struct {
		table                      string
		due, inconsistent, thisRun int
	}
	want := []counts{{"public.forum_attachment", 1, 0, 1}, {"public.blog_image", 2, 1, 1}, {"public.avatar", 1, 0, 0}}
	if !rep.DryRun || len(rep.Tables) != len(want) {
		t.Fatalf("report:\n%s", out)
	}
	for i, w := range want {
		got := rep.Tables[i]
		if c := (counts{got.Table, got.Totals.Due, len(got.Inconsistent), got.Totals.ThisRun}); c != w || len(got.Due) != w.due {
			t.Errorf("table %d: %+v with %d due rows; want %+v", i, c, len(got.Due), w)
		}
	}
	if s := rep.Totals; s.Tables != 3 || s.Due != 4 || s.Inconsistent != 1 || s.ThisRun != 2 || s.Problems != 0 {
		t.Errorf("totals %+v", s)
	}

	code, out, stderr = reconcile("--rescan", "--dry-run")
	for _, line := range []string{
		"Table public.forum_attachment (retention 1h0m0s):\n",
		"\nTable public.blog_image (retention 7 days):\n",
		"Inconsistent rows (is_deleted = true but no deleted_at, or an infinite one; never purged):\n",
		"\nAll 3 tables:\n  - Would delete: 4 attachments\n",
	} {
		if code != exitOK || !strings.Contains(out, line) {
			t.Errorf("text report: exit %d, lacks %q\n%s%s", code, line, out, stderr)
		}
	}

	code, out, stderr = reconcile("--rescan", "--dry-run", "--format", "csv")
	if code != exitOK || !strings.HasPrefix(out, "table,status,id,") || !strings.Contains(out, "public.blog_image,due,1,\"blog/1.jpg, blog/1-cover.jpg\"") ||
		!strings.Contains(stderr, "Dry run complete, all 3 tables: would delete 4") {
		t.Errorf("csv report: exit %d\n%s%s", code, out, stderr)
	}

	// The avatars' volume is away: reported, after the others, and the
	// audit fails as a purge would.
	if err := os.RemoveAll(filepath.Join(f.root, "avatar")); err != nil {
		t.Fatal(err)
	}
	code, out, stderr = reconcile("--rescan", "--dry-run", "--format", "json")
	rep = auditReport{}
	if err := json.Unmarshal([]byte(out), &rep); err != nil || code != exitFailed || !strings.Contains(stderr, "audit public.avatar: storage") {
		t.Fatalf("exit %d (%v)\n%s%s", code, err, out, stderr)
	}
	if len(rep.Tables) != 3 || rep.Tables[2].Totals.Problem == "" || rep.Tables[0].Totals.Problem != "" || rep.Totals.Problems != 1 {
		t.Errorf("report of a storage without the avatars:\n%s", out)
	}

	if n := f.count(`SELECT (SELECT count(*) FROM forum_attachment) + (SELECT count(*) FROM blog_image) + (SELECT count(*) FROM avatar)`); n != rows {
		t.Fatalf("the audit deleted rows: %d left of %d", n, rows)
	}
}
