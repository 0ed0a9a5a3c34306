package main

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// Beside the forum's attachments (is_active = false), two tables of the
// other shapes: blog_image marks deletion with is_deleted = true and has
// two files a row, avatar has deleted_at alone.
const otherTablesSQL = `
	CREATE TABLE blog_image (
		id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
		file varchar(100) NOT NULL DEFAULT '',
		cover varchar(100) NULL,
		original_filename varchar(255) NOT NULL DEFAULT '',
		is_deleted boolean NOT NULL DEFAULT false,
		deleted_at timestamptz NULL
	);
	CREATE TABLE avatar (
		id uuid PRIMARY KEY,
		photo varchar(100) NOT NULL,
		original_filename varchar(255) NOT NULL DEFAULT '',
		deleted_at timestamptz NULL
	);`

// tableEntry is one entry of tables: in RECONCILE_TABLES.
type tableEntry struct {
	Name      string         `json:"name"`
	Columns   map[string]any `json:"columns,omitempty"`
	Retention string         `json:"retention,omitempty"`
}

// severalTables makes the other two tables on f's database and configures
// the three with their retentions (forum's first, then blog's and
// avatar's); a retention "" leaves that table out.
func severalTables(t *testing.T, f *forum, create bool, forum, blog, avatar string) {
	t.Helper()
	if create {
		if _, err := f.pool.Exec(context.Background(), otherTablesSQL); err != nil {
			t.Fatal(err)
		}
	}
	var entries []tableEntry
	if forum != "" {
		entries = append(entries, tableEntry{Name: "forum_attachment", Retention: forum})
	}
	if blog != "" {
		entries = append(entries, tableEntry{Name: "blog_image", Retention: blog,
			Columns: map[string]any{"key": []string{"file", "cover"}, "is_active": "", "is_deleted": "is_deleted"}})
	}
	if avatar != "" {
		entries = append(entries, tableEntry{Name: "avatar", Retention: avatar,
			Columns: map[string]any{"key": "photo", "is_active": ""}})
	}
	b, err := json.Marshal(entries)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("RECONCILE_TABLES", string(b))
}

// blog inserts a blog image (deleted ageHours ago, or not when negative)
// with its two files; cover may be "".
func (f *forum) blog(file, cover string, ageHours float64) int64 {
	f.t.Helper()
	var id int64
	err := f.pool.QueryRow(context.Background(), `
		INSERT INTO blog_image (file, cover, is_deleted, deleted_at)
		VALUES ($1, nullif($2, ''), $3 >= 0, CASE WHEN $3 >= 0 THEN now() - $3 * interval '1 hour' END)
		RETURNING id`, file, cover, ageHours).Scan(&id)
	if err != nil {
		f.t.Fatal(err)
	}
	for _, k := range []string{file, cover} {
		if k != "" {
			f.writeOld(k)
		}
	}
	return id
}

// avatar inserts an avatar, deleted ageHours ago (not when negative).
func (f *forum) avatar(photo string, ageHours float64) string {
	f.t.Helper()
	id := uuid.NewString()
	_, err := f.pool.Exec(context.Background(), `
		INSERT INTO avatar (id, photo, deleted_at)
		VALUES ($1, $2, CASE WHEN $3 >= 0 THEN now() - $3 * interval '1 hour' END)`, id, photo, ageHours)
	if err != nil {
		f.t.Fatal(err)
	}
	f.writeOld(photo)
	return id
}

func (f *forum) rowExists(table, id string) bool {
	return f.count(fmt.Sprintf(`SELECT count(*) FROM %s WHERE id::text = '%s'`, table, id)) == 1
}

// Three tables of the three shapes in one --rescan: each is purged by its
// own retention, and a file two tables share stays while a row of either
// names it.
func TestRescanPurgesSeveralTablesEachByItsRetention(t *testing.T) {
	f := newForum(t)
	severalTables(t, f, true, "2h", "5h", "1h")

	// forum_attachment, 2 h.
	a1 := f.add("shared/s1.jpg", 3) // due; a live blog image names its file
	a2 := f.add("forum/a2.jpg", 3)  // due
	a3 := f.add("shared/s2.jpg", 0) // not due; a due avatar shares its file
	a4 := f.add("shared/s3.jpg", 3) // due; a due blog image shares its file
	// blog_image, 5 h, two files a row.
	b1 := f.blog("blog/b1.jpg", "shared/s1.jpg", -1) // live
	b2 := f.blog("blog/b2.jpg", "blog/b2c.jpg", 3)   // not due
	b3 := f.blog("blog/b3.jpg", "blog/b3c.jpg", 6)   // due, both files go
	b4 := f.blog("blog/b4.jpg", "", 6)               // due, one file
	b5 := f.blog("blog/b5.jpg", "shared/s3.jpg", 6)  // due, shares with a4
	// avatar, 1 h, deleted_at alone.
	v1 := f.avatar("avatars/v1.jpg", 2)  // due
	v2 := f.avatar("avatars/v2.jpg", -1) // live
	v3 := f.avatar("shared/s2.jpg", 2)   // due, shares with a3 (not due)

	if code, out, stderr := reconcile("migrate"); code != exitOK {
		t.Fatalf("migrate: exit %d\n%s%s", code, out, stderr)
	}
	code, out, stderr := reconcile("--rescan")
	if code != exitOK {
		t.Fatalf("exit %d\n%s\n%s", code, out, stderr)
	}
	for _, want := range []string{
		"Table public.forum_attachment:\n", "Table public.blog_image:\n", "Table public.avatar:\n",
		"All 3 tables:\n", "  - Successfully deleted: 8 attachments\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	rows := map[string]struct {
		table, id string
		kept      bool
	}{
		"a1": {"forum_attachment", a1, false}, "a2": {"forum_attachment", a2, false},
		"a3": {"forum_attachment", a3, true}, "a4": {"forum_attachment", a4, false},
		"b1": {"blog_image", fmt.Sprint(b1), true}, "b2": {"blog_image", fmt.Sprint(b2), true},
		"b3": {"blog_image", fmt.Sprint(b3), false}, "b4": {"blog_image", fmt.Sprint(b4), false},
		"b5": {"blog_image", fmt.Sprint(b5), false},
		"v1": {"avatar", v1, false}, "v2": {"avatar", v2, true}, "v3": {"avatar", v3, false},
	}
	for name, r := range rows {
		if got := f.rowExists(r.table, r.id); got != r.kept {
			t.Errorf("row %s (%s): kept %v, want %v", name, r.table, got, r.kept)
		}
	}
	files := map[string]bool{
		"shared/s1.jpg": true, // b1 is live
		"forum/a2.jpg":  false,
		"shared/s2.jpg": true, // a3 is not due
		"shared/s3.jpg": false,
		"blog/b1.jpg":   true, "blog/b2.jpg": true, "blog/b2c.jpg": true,
		"blog/b3.jpg": false, "blog/b3c.jpg": false, "blog/b4.jpg": false, "blog/b5.jpg": false,
		"avatars/v1.jpg": false, "avatars/v2.jpg": true,
	}
	for key, want := range files {
		if got := !f.fileGone(key); got != want {
			t.Errorf("file %s: present %v, want %v\n%s", key, got, want, stderr)
		}
	}
}

// Three tables under the service: each row is purged by its own table's
// retention, a file a live row of another table names stays, and goes
// once that row is deleted outright and its grace is over.
func TestServicePurgesSeveralTablesEachByItsRetention(t *testing.T) {
	f := newForum(t)
	serviceEnv(t, f, "1h")
	t.Setenv("RECONCILE_ORPHANS_GRACE", "1s")
	t.Setenv("RECONCILE_SWEEP_MAX_WAIT", "500ms") // the outbox is looked at when the timer wakes
	severalTables(t, f, true, "2s", "1h", "1s")
	f.migrate()
	s := startService(t, false)

	shared := f.add("shared/x.jpg", -1)
	live := f.blog("blog/live.jpg", "shared/x.jpg", -1)
	kept := f.blog("blog/kept.jpg", "", -1)
	photo := f.avatar("avatars/v.jpg", -1)
	f.softDelete(shared)
	f.exec(`UPDATE blog_image SET is_deleted = true, deleted_at = now() WHERE id = $1`, kept)
	f.exec(`UPDATE avatar SET deleted_at = now() WHERE id = $1`, photo)

	eventually(t, 20*time.Second, func() bool {
		return !f.rowExists("forum_attachment", shared) && !f.rowExists("avatar", photo) && f.fileGone("avatars/v.jpg")
	}, func() string { return "the due forum and avatar rows were not purged:\n" + s.logs.String() })
	if f.fileGone("shared/x.jpg") {
		t.Fatalf("a file a live blog image names was removed:\n%s", s.logs)
	}
	// Deleted outright: its files go after the grace, the shared one too.
	f.exec(`DELETE FROM blog_image WHERE id = $1`, live)
	eventually(t, 20*time.Second, func() bool { return f.fileGone("shared/x.jpg") && f.fileGone("blog/live.jpg") },
		func() string { return "the files of a blog image deleted outright stayed:\n" + s.logs.String() })
	// Its retention is an hour.
	if !f.rowExists("blog_image", fmt.Sprint(kept)) || f.fileGone("blog/kept.jpg") {
		t.Fatalf("a blog image within its retention was purged:\n%s", s.logs)
	}
	if n := s.logs.count("rescanning the table into the index"); n != 1 {
		t.Errorf("%d full rescans, want the first only:\n%s", n, s.logs)
	}
}

// A table added to the configuration is published and rescanned alone at
// the next start, the others are not rebuilt; one removed leaves the
// publication and the index, and its rows are purged no more.
func TestServiceAddsAndRemovesATable(t *testing.T) {
	f := newForum(t)
	serviceEnv(t, f, "1h")
	severalTables(t, f, true, "1s", "", "")
	f.migrate()
	s := startService(t, false)
	forumRow := f.add("forum/a.jpg", -1)
	f.softDelete(forumRow)
	eventually(t, 20*time.Second, func() bool { return !f.rowExists("forum_attachment", forumRow) },
		func() string { return "forum row not purged:\n" + s.logs.String() })
	if err := s.stop(); err != nil {
		t.Fatal(err)
	}

	// Deleted while avatar was not served.
	before := f.avatar("avatars/before.jpg", 2)
	severalTables(t, f, false, "1s", "", "1s")
	f.migrate()
	if got := f.published(); !slices.Equal(got, []string{"avatar", "forum_attachment"}) {
		t.Fatalf("after migrate the publication holds %v", got)
	}
	s = startService(t, false)
	eventually(t, 20*time.Second, func() bool { return !f.rowExists("avatar", before) && f.fileGone("avatars/before.jpg") },
		func() string { return "the added table's due row was not purged:\n" + s.logs.String() })
	if s.logs.count("rescanning a table new to the index, alone") != 1 || s.logs.count("rescanning the table into the index") != 0 {
		t.Fatalf("want avatar rescanned alone and nothing else rebuilt:\n%s", s.logs)
	}
	after := f.avatar("avatars/after.jpg", -1)
	f.exec(`UPDATE avatar SET deleted_at = now() WHERE id = $1`, after)
	eventually(t, 20*time.Second, func() bool { return !f.rowExists("avatar", after) },
		func() string { return "the added table's changes do not reach the purge:\n" + s.logs.String() })
	if err := s.stop(); err != nil {
		t.Fatal(err)
	}

	severalTables(t, f, false, "1s", "", "")
	s = startService(t, false)
	// The service's role does not own the publication: it says what to
	// run, which the owner does.
	s.waitLog("a table no longer configured stays in the publication", 1)
	if !strings.Contains(s.logs.String(), `reconcile_attachments\" DROP TABLE public.avatar`) {
		t.Fatalf("the warning does not say what to run:\n%s", s.logs)
	}
	f.exec(`ALTER PUBLICATION reconcile_attachments DROP TABLE public.avatar`)
	if got := f.published(); !slices.Equal(got, []string{"forum_attachment"}) {
		t.Fatalf("the publication holds %v", got)
	}
	left := f.avatar("avatars/left.jpg", -1)
	f.exec(`UPDATE avatar SET deleted_at = now() - interval '1 hour' WHERE id = $1`, left)
	forumRow = f.add("forum/b.jpg", -1)
	f.softDelete(forumRow)
	eventually(t, 20*time.Second, func() bool { return !f.rowExists("forum_attachment", forumRow) },
		func() string { return "forum row not purged:\n" + s.logs.String() })
	if !f.rowExists("avatar", left) || f.fileGone("avatars/left.jpg") {
		t.Fatalf("a table no longer configured was purged:\n%s", s.logs)
	}
	if s.logs.count("rescanning the table into the index") != 0 {
		t.Fatalf("removing a table rebuilt the index:\n%s", s.logs)
	}
}

func (f *forum) exec(sql string, args ...any) {
	f.t.Helper()
	if _, err := f.pool.Exec(context.Background(), sql, args...); err != nil {
		f.t.Fatal(err)
	}
}

// published lists the tables of the service's publication.
func (f *forum) published() []string {
	f.t.Helper()
	rows, err := f.pool.Query(context.Background(),
		`SELECT tablename::text FROM pg_publication_tables WHERE pubname = 'reconcile_attachments' ORDER BY 1`)
	if err != nil {
		f.t.Fatal(err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		f.t.Fatal(err)
	}
	return names
}

// A table that leaves the configuration while its outbox holds files to
// remove keeps its outbox: the service drains it, then forgets the table.
func TestServiceDrainsTheOutboxOfARemovedTable(t *testing.T) {
	f := newForum(t)
	serviceEnv(t, f, "1h")
	t.Setenv("RECONCILE_ORPHANS_GRACE", "4s")
	t.Setenv("RECONCILE_SWEEP_MAX_WAIT", "500ms")
	severalTables(t, f, true, "1h", "", "1h")
	f.migrate()
	s := startService(t, false)
	gone := f.avatar("avatars/gone.jpg", -1)
	f.exec(`DELETE FROM avatar WHERE id = $1`, gone)
	eventually(t, 20*time.Second, func() bool { return f.count(`SELECT count(*) FROM reconcile_avatar_outbox`) == 1 },
		func() string { return "the file of an avatar deleted outright was not queued:\n" + s.logs.String() })
	if err := s.stop(); err != nil {
		t.Fatal(err)
	}

	severalTables(t, f, false, "1h", "", "")
	s = startService(t, false)
	eventually(t, 20*time.Second, func() bool { return f.fileGone("avatars/gone.jpg") },
		func() string {
			return "the outbox of a table no longer configured was not drained:\n" + s.logs.String()
		})
	s.waitLog("drained the outbox of a table no longer configured", 1)
	if err := s.stop(); err != nil {
		t.Fatal(err)
	}
	s = startService(t, false)
	if s.logs.count("a table left the configuration") != 0 || s.logs.count("drained the outbox") != 0 {
		t.Fatalf("a drained table was drained again:\n%s", s.logs)
	}
}

// A table that leaves the configuration keeps its rows' files from the
// other tables' purges, for as long as the database has it.
func TestAFormerTablesRowsKeepTheirFiles(t *testing.T) {
	f := newForum(t)
	serviceEnv(t, f, "1h")
	severalTables(t, f, true, "1h", "", "1h")
	f.migrate()
	s := startService(t, false)
	f.avatar("shared/a.jpg", -1) // live
	if err := s.stop(); err != nil {
		t.Fatal(err)
	}
	severalTables(t, f, false, "1h", "", "")
	s = startService(t, false)
	s.waitLog("a table left the configuration", 1)
	if err := s.stop(); err != nil {
		t.Fatal(err)
	}
	due := f.add("shared/a.jpg", 3)
	if code, out, stderr := reconcile("--rescan"); code != exitOK {
		t.Fatalf("exit %d\n%s\n%s", code, out, stderr)
	}
	if f.exists(due) || f.fileGone("shared/a.jpg") {
		t.Fatalf("want the due forum row purged and the file a live avatar names kept")
	}
}

// The orphan scan covers every table's folders, and a file that a row of
// any table names is no orphan, in whichever table's folder it lies.
func TestOrphansOfSeveralTables(t *testing.T) {
	f := newForum(t)
	severalTables(t, f, true, "1h", "1h", "")
	t.Setenv("RECONCILE_TABLES", `[
		{"name": "forum_attachment", "prefixes": ["forum/"]},
		{"name": "blog_image", "prefixes": ["blog/"], "columns": {"key": ["file", "cover"], "is_active": "", "is_deleted": "is_deleted"}}]`)
	t.Setenv("RECONCILE_ORPHANS_GRACE", "1s")
	f.add("forum/a.jpg", -1)
	f.blog("blog/b.jpg", "forum/shared.jpg", -1)
	for _, key := range []string{"forum/orphan.jpg", "blog/orphan.jpg"} {
		f.writeOld(key)
	}
	f.migrate()
	time.Sleep(1500 * time.Millisecond) // past the grace, by the files' status change too
	code, out, stderr := reconcile("orphans")
	if code != exitOK {
		t.Fatalf("exit %d\n%s\n%s", code, out, stderr)
	}
	for key, want := range map[string]bool{
		"forum/a.jpg": true, "blog/b.jpg": true, "forum/shared.jpg": true,
		"forum/orphan.jpg": false, "blog/orphan.jpg": false,
	} {
		if got := !f.fileGone(key); got != want {
			t.Errorf("%s: present %v, want %v\n%s\n%s", key, got, want, out, stderr)
		}
	}
}
