package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
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

// file writes a file under the storage root, written before the rows that
// name it were deleted.
func (f *forum) file(key string) {
	f.t.Helper()
	path := filepath.Join(f.root, key)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		f.t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("img"), 0o644); err != nil {
		f.t.Fatal(err)
	}
	old := time.Now().Add(-30 * 24 * time.Hour)
	if err := os.Chtimes(path, old, old); err != nil {
		f.t.Fatal(err)
	}
}

func (f *forum) hasFile(key string) bool {
	_, err := os.Stat(filepath.Join(f.root, key))
	return err == nil
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
			f.file(k)
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
	f.file(photo)
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
		if got := f.hasFile(key); got != want {
			t.Errorf("file %s: present %v, want %v\n%s", key, got, want, stderr)
		}
	}
}
