package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

// auditTablesReport is what `--rescan --dry-run --format json` prints with
// several tables.
type auditTablesReport struct {
	Tables []struct {
		Table  string `json:"table"`
		Totals struct {
			Due            int    `json:"would_delete"`
			Refused        int    `json:"refused"`
			ThisRun        int    `json:"this_run"`
			StorageProblem string `json:"storage_problem"`
		} `json:"totals"`
	} `json:"tables"`
	Totals struct {
		Due     int `json:"would_delete"`
		ThisRun int `json:"this_run"`
	} `json:"totals"`
}

func auditJSON(t *testing.T, wantCode int) auditTablesReport {
	t.Helper()
	code, out, stderr := reconcile("--rescan", "--dry-run", "--format", "json")
	if code != wantCode {
		t.Fatalf("audit: exit %d, want %d\n%s%s", code, wantCode, out, stderr)
	}
	var rep auditTablesReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("audit json: %v\n%s", err, out)
	}
	return rep
}

// A row of two key columns whose second key the storage refuses: the
// purge refuses the row (each key is checked), the audit must say so, not
// list it as would-delete.
func TestHostileAuditChecksEachKeyOfARowOfSeveralColumns(t *testing.T) {
	f := newForum(t)
	severalTables(t, f, true, "1h", "1h", "")
	f.add("forum/keep-probe.jpg", -1)
	id := f.blog("blog/ok.jpg", "/abs.jpg", 6) // the cover's key is absolute: refused by the purge
	f.migrate()

	rep := auditJSON(t, exitOK)
	var blog = -1
	for i, tb := range rep.Tables {
		if tb.Table == "public.blog_image" {
			blog = i
		}
	}
	if blog < 0 {
		t.Fatalf("no blog_image in the audit: %+v", rep)
	}
	audit := rep.Tables[blog].Totals

	code, out, stderr := reconcile("--rescan")
	purgeKept := f.rowExists("blog_image", fmt.Sprint(id))
	t.Logf("--rescan: exit %d, row kept %v\n%s", code, purgeKept, out)
	if purgeKept && (audit.Refused != 1 || audit.Due != 0) {
		t.Fatalf("the audit says blog_image would delete %d and refuse %d; --rescan refused the row (kept) and exit %d:\n%s\n%s",
			audit.Due, audit.Refused, code, out, stderr)
	}
}

// With safety.max_deletes, a table whose storage holds none of its files
// takes from the budget in the audit, but not in --rescan (it purges
// nothing): the audit's this_run of the tables after it is wrong.
func TestHostileAuditBudgetAfterATableWhoseStorageHoldsNoneOfItsFiles(t *testing.T) {
	f := newForum(t)
	severalTables(t, f, true, "1h", "", "1h")
	// avatar first: its rows name files that are not in the storage.
	t.Setenv("RECONCILE_TABLES", `[{"name": "avatar", "columns": {"key": "photo", "is_active": ""}}, {"name": "forum_attachment"}]`)
	for i := range 3 {
		f.exec(`INSERT INTO avatar (id, photo, deleted_at) VALUES (gen_random_uuid(), $1, now() - interval '3 hours')`, fmt.Sprintf("avatars/missing-%d.jpg", i))
	}
	for i := range 5 {
		f.add(fmt.Sprintf("forum/due-%d.jpg", i), 3)
	}
	t.Setenv("RECONCILE_SAFETY_MAX_DELETES", "5")
	f.migrate()

	rep := auditJSON(t, exitFailed) // the storage problem makes it exit 1
	thisRun := map[string]int{}
	for _, tb := range rep.Tables {
		thisRun[tb.Table] = tb.Totals.ThisRun
		t.Logf("audit %s: would_delete %d this_run %d problem %q", tb.Table, tb.Totals.Due, tb.Totals.ThisRun, tb.Totals.StorageProblem)
	}
	code, out, stderr := reconcile("--rescan")
	purgedForum := 5 - f.count(`SELECT count(*) FROM forum_attachment`)
	purgedAvatar := 3 - f.count(`SELECT count(*) FROM avatar`)
	t.Logf("--rescan: exit %d; purged forum %d, avatar %d\n%s", code, purgedForum, purgedAvatar, out)
	if thisRun["public.forum_attachment"] != purgedForum || thisRun["public.avatar"] != purgedAvatar || rep.Totals.ThisRun != purgedForum+purgedAvatar {
		t.Fatalf("the audit's this_run (avatar %d, forum %d, total %d) differs from what --rescan purged (avatar %d, forum %d)\n%s",
			thisRun["public.avatar"], thisRun["public.forum_attachment"], rep.Totals.ThisRun, purgedAvatar, purgedForum, stderr)
	}
}

// A publication that does not publish updates (or filters a table's rows)
// is refused by the service; `reconcile tables` must not call it ok.
func TestHostileTablesCallsOkAPublicationTheServiceRefuses(t *testing.T) {
	for _, tc := range []struct{ name, sql string }{
		{"publish insert only", `ALTER PUBLICATION reconcile_attachments SET (publish = 'insert')`},
		{"row filter", `ALTER PUBLICATION reconcile_attachments SET TABLE forum_attachment WHERE (is_active), blog_image, avatar`},
		{"column list", `ALTER PUBLICATION reconcile_attachments SET TABLE forum_attachment (id, image), blog_image, avatar`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newForum(t)
			threeTables(t, f)
			serviceEnv(t, f, "1h")
			t.Setenv("RECONCILE_TABLES", `[
				{name: forum_attachment},
				{name: blog_image, columns: {key: [file, cover], is_active: "", is_deleted: is_deleted}, retention: 7d},
				{name: avatar, columns: {key: photo, is_active: ""}, retention: 72h}]`)
			f.migrate()
			t.Setenv("RECONCILE_DATABASE_URL", f.url)
			f.exec(tc.sql)
			code, out, stderr := reconcile("tables")
			svc, sout, serr := reconcileFor(20 * time.Second) // the service, as the owner
			if code == exitOK && svc != exitOK {
				t.Fatalf("`reconcile tables` exit %d, every need ok:\n%s\nwhile the service refuses to start (exit %d):\n%s%s%s",
					code, out, svc, sout, serr, stderr)
			}
		})
	}
}

// Two reconcile deployments (two storages, so two services with their own
// slots and tables) on the default publication name: the migrate of one
// drops the other's table from the publication, its stream then sees
// none of that table's changes.
func TestHostileMigrateDropsATableAnotherDeploymentServes(t *testing.T) {
	f := newForum(t)
	severalTables(t, f, true, "1h", "", "")
	t.Setenv("RECONCILE_REPLICATION_SLOT", f.slot()+"_x")
	f.migrate() // deployment X: forum_attachment
	t.Setenv("RECONCILE_DATABASE_URL", f.url)
	before := f.published()

	t.Setenv("RECONCILE_TABLES", `[{"name": "avatar", "columns": {"key": "photo", "is_active": ""}}]`)
	t.Setenv("RECONCILE_REPLICATION_SLOT", f.slot()+"_y")
	if code, out, stderr := reconcile("migrate"); code != exitOK { // deployment Y: avatar
		t.Fatalf("migrate Y: exit %d\n%s%s", code, out, stderr)
	}
	after := f.published()
	if !slices.Contains(after, "forum_attachment") {
		t.Fatalf("deployment Y's migrate dropped deployment X's table from the shared publication: before %v, after %v", before, after)
	}
}

// The dry-run service must change nothing: with a configured table that
// the publication lacks (removed, then configured again before migrate),
// run by the owner, it alters the publication.
func TestHostileDryRunServiceAltersThePublication(t *testing.T) {
	f := newForum(t)
	serviceEnv(t, f, "1h")
	severalTables(t, f, true, "1h", "", "1h")
	f.migrate()
	t.Setenv("RECONCILE_DATABASE_URL", f.url)
	f.exec(`ALTER PUBLICATION reconcile_attachments DROP TABLE avatar`) // as migrate does once avatar left the configuration
	before := f.published()
	s := launchService(t, true)
	s.waitLog("run `reconcile migrate`", 1)
	after := f.published()
	_ = s.stop() // it failed: the publication lacks a table
	if !slices.Equal(before, after) {
		t.Fatalf("the dry run changed the publication: %v -> %v\n%s", before, after, s.logs)
	}
}

// A table moved from this deployment to another (same database, its own
// slot and index): while its outbox holds a file within its grace, this
// service drains it as retired, and so takes its lock with the others',
// all or none. The other deployment holds that lock for good: this one
// never purges its own tables.
func TestHostileRetiredTableServedElsewhereStopsTheService(t *testing.T) {
	f := newForum(t)
	serviceEnv(t, f, "1h")
	t.Setenv("RECONCILE_ORPHANS_GRACE", "1h")
	t.Setenv("RECONCILE_SWEEP_MAX_WAIT", "500ms")
	severalTables(t, f, true, "1s", "", "1h")
	f.migrate()
	indexX := t.TempDir() + "/x.db"
	t.Setenv("RECONCILE_INDEX_PATH", indexX)
	x := startService(t, false)
	gone := f.avatar("avatars/gone.jpg", -1)
	f.exec(`DELETE FROM avatar WHERE id = $1`, gone)
	eventually(t, 20*time.Second, func() bool { return f.count(`SELECT count(*) FROM reconcile_avatar_outbox`) == 1 },
		func() string { return "not queued:\n" + x.logs.String() })
	if err := x.stop(); err != nil {
		t.Fatal(err)
	}

	// Deployment Y now serves avatar.
	slotX := f.slot()
	t.Setenv("RECONCILE_TABLES", `[{"name": "avatar", "columns": {"key": "photo", "is_active": ""}, "retention": "1h"}]`)
	t.Setenv("RECONCILE_REPLICATION_SLOT", slotX+"_y")
	t.Setenv("RECONCILE_INDEX_PATH", t.TempDir()+"/y.db")
	y := startService(t, false)

	// Deployment X keeps forum_attachment.
	t.Setenv("RECONCILE_TABLES", `[{"name": "forum_attachment", "retention": "1s"}]`)
	t.Setenv("RECONCILE_REPLICATION_SLOT", slotX)
	t.Setenv("RECONCILE_INDEX_PATH", indexX)
	x = launchService(t, false)
	row := f.add("forum/a.jpg", -1)
	f.softDelete(row)
	deadline := time.Now().Add(20 * time.Second)
	for f.exists(row) && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if f.exists(row) {
		t.Fatalf("deployment X never purged its own due row in 20 s:\n--- X:\n%s\n--- Y:\n%s", x.logs, y.logs)
	}
}

// Removing a table from the configuration (to stop purging it) leaves its
// rows in the database; a file that one of its live rows shares with a
// due row of a configured table is removed by that purge.
func TestHostileRemovedTablesLiveRowLosesItsSharedFile(t *testing.T) {
	f := newForum(t)
	severalTables(t, f, true, "1h", "", "1h")
	f.add("shared/s.jpg", 3)
	f.avatar("shared/s.jpg", -1) // live
	f.migrate()
	severalTables(t, f, false, "1h", "", "") // avatar is no longer purged
	code, out, stderr := reconcile("--rescan")
	if code != exitOK {
		t.Fatalf("exit %d\n%s%s", code, out, stderr)
	}
	if f.fileGone("shared/s.jpg") {
		t.Fatalf("the file of a live avatar (its table removed from the configuration) was removed by the forum's purge:\n%s%s", out,
			strings.Join(strings.SplitAfter(stderr, "\n")[:min(10, strings.Count(stderr, "\n"))], ""))
	}
}

// reconcileFor runs the command for d at most.
func reconcileFor(d time.Duration, args ...string) (int, string, string) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var stdout, stderr bytes.Buffer
	code := run(ctx, args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// A table whose storage holds none of its files (a FileField of another
// storage, files removed by hand), with no due row and an empty outbox,
// has nothing to lose: it never fails a sweep (its probe waits for work),
// and the others go on.
func TestHostileServiceWithATableFailingForever(t *testing.T) {
	f := newForum(t)
	serviceEnv(t, f, "1h")
	t.Setenv("RECONCILE_SWEEP_MAX_WAIT", "500ms")
	severalTables(t, f, true, "1s", "", "1s")
	f.exec(`INSERT INTO avatar (id, photo, deleted_at) VALUES (gen_random_uuid(), 'avatars/missing.jpg', NULL)`) // live, nothing due
	f.migrate()
	s := startService(t, false)
	start := time.Now()
	purged := 0
	for time.Since(start) < 30*time.Second {
		select {
		case err := <-s.done:
			s.done <- err
			t.Fatalf("the service ended after %s (%d forum rows purged meanwhile): %v\n%s", time.Since(start).Round(time.Second), purged, err,
				lastLines(s.logs.String(), 8))
		case <-time.After(5 * time.Second):
		}
		row := f.add(fmt.Sprintf("forum/%d.jpg", purged), -1)
		f.softDelete(row)
		eventually(t, 20*time.Second, func() bool { return !f.exists(row) },
			func() string { return "a forum row was not purged while avatar fails:\n" + s.logs.String() })
		purged++
	}
	if n := s.logs.count("sweep stopped short"); n > 0 {
		t.Fatalf("%d sweeps failed for a table with nothing to do:\n%s", n, lastLines(s.logs.String(), 8))
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// partEntries lists one table's part of the service's index: id ->
// deleted_at.
func partEntries(t *testing.T, s *service, table string) map[string]time.Time {
	t.Helper()
	due, _, err := s.idx.Table(table).Due(nil, time.Now().Add(100*365*24*time.Hour), 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]time.Time{}
	for _, e := range due {
		out[e.ID] = e.DeletedAt
	}
	return out
}

// truthOf is what a table's part must hold: its soft-deleted rows.
func (f *forum) truthOf(sql string) map[string]time.Time {
	f.t.Helper()
	rows, err := f.pool.Query(context.Background(), sql)
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
	return out
}

// A TRUNCATE of one table, then a large transaction in another: the stream
// rescans every table, and each part of the index ends as its table.
func TestHostileStreamRescanOfSeveralTablesEndsRight(t *testing.T) {
	f := newForum(t)
	serviceEnv(t, f, "1h")
	severalTables(t, f, true, "24h", "24h", "24h")
	f.migrate()
	s := startService(t, false)
	for i := range 3 {
		f.softDelete(f.add(fmt.Sprintf("forum/%d.jpg", i), -1))
		f.blog(fmt.Sprintf("blog/%d.jpg", i), fmt.Sprintf("blog/%dc.jpg", i), 1)
		f.avatar(fmt.Sprintf("avatars/%d.jpg", i), 1)
	}
	truths := map[string]string{
		"public.forum_attachment": `SELECT id::text, deleted_at FROM forum_attachment WHERE is_active = false AND deleted_at IS NOT NULL`,
		"public.blog_image":       `SELECT id::text, deleted_at FROM blog_image WHERE is_deleted AND deleted_at IS NOT NULL`,
		"public.avatar":           `SELECT id::text, deleted_at FROM avatar WHERE deleted_at IS NOT NULL`,
	}
	converged := func() bool {
		for table, sql := range truths {
			if !sameEntries(partEntries(t, s, table), f.truthOf(sql)) {
				return false
			}
		}
		return true
	}
	report := func() string {
		var b strings.Builder
		for table, sql := range truths {
			fmt.Fprintf(&b, "%s: index %v, table %v\n", table, partEntries(t, s, table), f.truthOf(sql))
		}
		return b.String() + s.logs.String()
	}
	eventually(t, 20*time.Second, converged, report)
	f.exec(`TRUNCATE avatar`)
	f.softDelete(f.add("forum/after-truncate.jpg", -1))
	eventually(t, 20*time.Second, converged, report)
	// A large transaction in blog_image (more than the stream applies).
	f.exec(`INSERT INTO blog_image (file, is_deleted, deleted_at) SELECT 'blog/bulk-' || g || '.jpg', true, now() - interval '1 hour' FROM generate_series(1, 25000) g`)
	f.avatar("avatars/after-bulk.jpg", 1)
	eventually(t, 60*time.Second, converged, report)
	if n := s.logs.count("rescanning the table into the index"); n < 3 {
		t.Logf("%d rescans", n)
	}
}

// `reconcile tables` on objects that are there but unusable: an invalid
// key index (an interrupted CREATE INDEX CONCURRENTLY), an index under
// migrate's name on another column, a table dropped from the publication,
// a table whose replica identity is back to default.
func TestHostileTablesSeesUnusableObjects(t *testing.T) {
	f := newForum(t)
	threeTables(t, f)
	t.Setenv("RECONCILE_TABLES", `[
		{name: forum_attachment},
		{name: blog_image, columns: {key: [file, cover], is_active: "", is_deleted: is_deleted}, retention: 7d},
		{name: avatar, columns: {key: photo, is_active: ""}, retention: 72h}]`)
	f.migrate()
	t.Setenv("RECONCILE_DATABASE_URL", f.url)
	describe(t, exitOK)
	f.exec(`UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'reconcile_blog_image_key2_idx'::regclass`)
	f.exec(`DROP INDEX reconcile_avatar_key_idx; CREATE INDEX reconcile_avatar_key_idx ON avatar (original_filename)`)
	f.exec(`ALTER PUBLICATION reconcile_attachments DROP TABLE forum_attachment`)
	f.exec(`ALTER TABLE avatar REPLICA IDENTITY DEFAULT`)
	rep := describe(t, exitFailed)
	missing := map[string]bool{}
	for _, tb := range rep.Tables {
		for _, n := range tb.Needs {
			if !n.Present {
				missing[tb.Table+" "+n.What] = true
			}
		}
	}
	for _, want := range []string{
		"public.blog_image key index on cover", "public.avatar key index on photo",
		"public.forum_attachment publication", "public.avatar REPLICA IDENTITY FULL",
	} {
		if !missing[want] {
			t.Errorf("%s: called ok; missing: %v", want, missing)
		}
	}
	// Read-only: as a role with no rights on the tables it fails, exit 1,
	// and writes nothing.
	f.exec(`CREATE ROLE review_nobody_` + f.slot() + ` LOGIN`)
	t.Cleanup(func() { f.exec(`DROP ROLE review_nobody_` + f.slot()) })
	u := strings.Replace(f.url, "postgres@", "review_nobody_"+f.slot()+"@", 1)
	t.Setenv("RECONCILE_DATABASE_URL", u)
	code, out, stderr := reconcile("tables")
	t.Logf("as a role without rights: exit %d\n%s%s", code, out, lastLines(stderr, 3))
	if code == exitOK {
		t.Errorf("tables as a role without rights: exit 0")
	}
}

// The role of several tables can purge each table, and do no more.
func TestHostileRoleOfSeveralTables(t *testing.T) {
	f := newForum(t)
	severalTables(t, f, true, "1h", "1h", "1h")
	f.add("forum/a.jpg", 3)
	f.blog("blog/b.jpg", "blog/bc.jpg", 3)
	f.avatar("avatars/v.jpg", 3)
	f.migrate()
	for _, table := range []string{"forum_attachment", "blog_image", "avatar"} {
		var ok, more bool
		err := f.pool.QueryRow(context.Background(), `SELECT has_table_privilege($1, $2, 'SELECT, DELETE'), has_table_privilege($1, $2, 'INSERT, UPDATE, TRUNCATE, REFERENCES, TRIGGER')`,
			f.role, table).Scan(&ok, &more)
		if err != nil {
			t.Fatal(err)
		}
		if !ok || more {
			t.Errorf("%s: select+delete %v, more %v", table, ok, more)
		}
	}
	code, out, stderr := reconcile("--rescan")
	if code != exitOK || !strings.Contains(out, "All 3 tables:\n  - Successfully deleted: 3 attachments") {
		t.Fatalf("--rescan as the role: exit %d\n%s%s", code, out, stderr)
	}
}

// --rescan of two tables, one whose storage holds none of its files: the
// other is purged, the run exits 1, and the metrics file says the run
// failed and counts the other's rows.
func TestHostileRescanMetricsFileWithAFailingTable(t *testing.T) {
	f := newForum(t)
	severalTables(t, f, true, "1h", "", "1h")
	t.Setenv("RECONCILE_TABLES", `[{"name": "avatar", "columns": {"key": "photo", "is_active": ""}}, {"name": "forum_attachment"}]`)
	f.exec(`INSERT INTO avatar (id, photo, deleted_at) VALUES (gen_random_uuid(), 'avatars/missing.jpg', now() - interval '3 hours')`)
	for i := range 3 {
		f.add(fmt.Sprintf("forum/due-%d.jpg", i), 3)
	}
	f.migrate()
	path := t.TempDir() + "/reconcile.prom"
	code, out, stderr := reconcile("--rescan", "--metrics-file", path)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(string(data), "\n") {
		if strings.Contains(l, "purged") || strings.Contains(l, "success") || strings.Contains(l, "purge_errors") || strings.Contains(l, "rescans") {
			lines = append(lines, l)
		}
	}
	t.Logf("exit %d\n%s\n%s\n%s", code, out, strings.Join(lines, "\n"), lastLines(stderr, 2))
	if code != exitFailed || f.count(`SELECT count(*) FROM forum_attachment`) != 0 {
		t.Fatalf("exit %d, forum rows left %d", code, f.count(`SELECT count(*) FROM forum_attachment`))
	}
	if !strings.Contains(out, "public.avatar") {
		t.Fatalf("the summary (stdout, the cron job's mail) never names the table that failed; \"All 2 tables\" sums one:\n%s", out)
	}
}
