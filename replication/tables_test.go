package replication

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/reconcile/reconcile/index"
	"github.com/reconcile/reconcile/internal/testdb"
)

// Beside Django's forum_attachment, a table of each other shape: one of
// two key columns flagged by is_deleted, one that deleted_at alone marks,
// and one that is not configured at first.
const tablesSchema = `
	CREATE TABLE blog_photo (
		id bigint PRIMARY KEY, title text, image text, thumb text,
		is_deleted boolean NOT NULL DEFAULT false, deleted_at timestamptz);
	ALTER TABLE blog_photo REPLICA IDENTITY FULL;
	CREATE TABLE docs_file (id uuid PRIMARY KEY, path text NOT NULL, deleted_at timestamptz);
	CREATE TABLE media_clip (id int PRIMARY KEY, file text NOT NULL, deleted_at timestamptz);`

var (
	e2eForum = Table{Schema: "public", Name: "forum_attachment", ID: "id", Keys: []string{"image"}, IsActive: "is_active", DeletedAt: "deleted_at"}
	e2eBlog  = Table{Schema: "public", Name: "blog_photo", ID: "id", Keys: []string{"image", "thumb"}, IsDeleted: "is_deleted", DeletedAt: "deleted_at"}
	e2eDocs  = Table{Schema: "public", Name: "docs_file", ID: "id", Keys: []string{"path"}, DeletedAt: "deleted_at"}
	e2eClip  = Table{Schema: "public", Name: "media_clip", ID: "id", Keys: []string{"file"}, DeletedAt: "deleted_at"}
)

// tablesFixture runs streams over the tables into one index, and records
// what reaches it.
type tablesFixture struct {
	t    *testing.T
	url  string
	pool *pgxpool.Pool
	slot string
	idx  *recordingIndex
	mu   sync.Mutex
	gone []DeletedRow
}

func newTablesFixture(t *testing.T) *tablesFixture {
	url, pool := testdb.NewDjango(t)
	if _, err := pool.Exec(context.Background(), tablesSchema); err != nil {
		t.Fatal(err)
	}
	x, err := index.Open(filepath.Join(t.TempDir(), "index.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := x.Check(); err != nil {
			t.Error(err)
		}
		_ = x.Close()
	})
	return &tablesFixture{t: t, url: url, pool: pool, idx: &recordingIndex{Index: x},
		slot: "t_tables_" + strings.ReplaceAll(uuid.NewString()[:8], "-", "")}
}

// start runs a stream of tables until the returned function stops it.
func (f *tablesFixture) start(tables ...Table) (stop func()) {
	f.t.Helper()
	s := New(Config{
		URL: f.url, Slot: f.slot, Publication: "reconcile_tables", Tables: tables,
		StatusInterval: 50 * time.Millisecond, Watchdog: 5 * time.Second, MaxBackoff: 100 * time.Millisecond,
		Deleted: func(_ context.Context, rows []DeletedRow) error {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.gone = append(f.gone, rows...)
			return nil
		},
	}, f.idx, func(context.Context) error { return f.idx.Reset() }, slog.New(slog.NewTextHandler(f.t.Output(), nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	stop = func() {
		cancel()
		if err := <-done; err != nil {
			f.t.Errorf("stream: %v", err)
		}
	}
	f.eventually(func() bool {
		info, err := Slot(context.Background(), f.pool, f.slot)
		return err == nil && info.Active
	}, "the stream never started")
	return stop
}

func (f *tablesFixture) exec(sql string, args ...any) {
	f.t.Helper()
	if _, err := f.pool.Exec(context.Background(), sql, args...); err != nil {
		f.t.Fatal(err)
	}
}

func (f *tablesFixture) eventually(ok func() bool, failure string) {
	f.t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !ok(); {
		if time.Now().After(deadline) {
			f.t.Fatal(failure)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// seen waits until the index was given a change of table for id, and
// returns the last such change.
func (f *tablesFixture) seen(table Table, id string) index.Change {
	f.t.Helper()
	var got index.Change
	f.eventually(func() bool {
		for _, c := range f.idx.changes() {
			if c.Table == table.IndexName() && c.Entry.ID == id {
				got = c
			}
		}
		return got.Op != 0
	}, fmt.Sprintf("no change of %s %s reached the index: %+v", table.IndexName(), id, f.idx.changes()))
	return got
}

func (f *tablesFixture) published() []string {
	f.t.Helper()
	rows, err := f.pool.Query(context.Background(), `SELECT tablename FROM pg_publication_tables WHERE pubname = 'reconcile_tables' ORDER BY 1`)
	if err != nil {
		f.t.Fatal(err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		f.t.Fatal(err)
	}
	return names
}

// Three tables of the three shapes, streamed into one index: each change
// reaches it under its table's name; a table added to the configuration
// joins the publication and its changes flow; one removed leaves it.
func TestStreamTailsSeveralTables(t *testing.T) {
	f := newTablesFixture(t)
	stop := f.start(e2eForum, e2eBlog, e2eDocs)
	if got := f.published(); !slices.Equal(got, []string{"blog_photo", "docs_file", "forum_attachment"}) {
		t.Fatalf("the publication holds %v", got)
	}

	forumID, docsID, restoredID := uuid.NewString(), uuid.NewString(), uuid.NewString()
	f.exec(`INSERT INTO forum_attachment (id, image, is_active, deleted_at) VALUES ($1, 'forum/a.jpg', false, '2026-01-02 03:04:05+00')`, forumID)
	f.exec(`INSERT INTO blog_photo (id, image, thumb, is_deleted, deleted_at) VALUES
		(1, 'blog/p.jpg', 'blog/p_t.jpg', true, '2026-01-02 03:04:05+00'),
		(2, 'blog/q.jpg', NULL, false, NULL),
		(3, 'blog/r.jpg', 'blog/r_t.jpg', false, NULL)`)
	f.exec(`DELETE FROM blog_photo WHERE id = 3`)
	f.exec(`INSERT INTO docs_file (id, path, deleted_at) VALUES ($1, 'docs/x.pdf', '2026-01-02 03:04:05+00'), ($2, 'docs/y.pdf', now())`, docsID, restoredID)
	f.exec(`UPDATE docs_file SET deleted_at = NULL WHERE id = $1`, restoredID)
	f.exec(`INSERT INTO media_clip (id, file, deleted_at) VALUES (1, 'clips/early.mp4', now())`)

	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, want := range []index.Change{
		{Op: index.Upsert, Table: "public.forum_attachment", Entry: index.Entry{ID: forumID, Key: "forum/a.jpg", DeletedAt: at}},
		{Op: index.Upsert, Table: "public.blog_photo", Entry: index.Entry{ID: "1", Key: "blog/p.jpg" + index.KeySeparator + "blog/p_t.jpg", DeletedAt: at}},
		{Op: index.Remove, Table: "public.blog_photo", Entry: index.Entry{ID: "2"}},
		{Op: index.Remove, Table: "public.blog_photo", Entry: index.Entry{ID: "3"}},
		{Op: index.Upsert, Table: "public.docs_file", Entry: index.Entry{ID: docsID, Key: "docs/x.pdf", DeletedAt: at}},
		{Op: index.Remove, Table: "public.docs_file", Entry: index.Entry{ID: restoredID}},
	} {
		tables := map[string]Table{"public.forum_attachment": e2eForum, "public.blog_photo": e2eBlog, "public.docs_file": e2eDocs}
		if got := f.seen(tables[want.Table], want.Entry.ID); !sameChange(got, want) {
			t.Errorf("last change of %s %s: %+v; want %+v", want.Table, want.Entry.ID, got, want)
		}
	}
	f.mu.Lock()
	gone := slices.Clone(f.gone)
	f.mu.Unlock()
	if len(gone) != 2 || gone[0].Table != "public.blog_photo" || gone[0].ID != "3" || gone[0].Key != "blog/r.jpg" || gone[1].Key != "blog/r_t.jpg" {
		t.Errorf("rows deleted outright: %+v; want blog_photo 3, once per file", gone)
	}
	for _, c := range f.idx.changes() {
		if c.Table == "public.media_clip" {
			t.Errorf("a table not configured reached the index: %+v", c)
		}
	}
	stop()

	// Added: the publication gets it at the next start.
	stop = f.start(e2eForum, e2eBlog, e2eDocs, e2eClip)
	if got := f.published(); !slices.Equal(got, []string{"blog_photo", "docs_file", "forum_attachment", "media_clip"}) {
		t.Fatalf("after adding media_clip, the publication holds %v", got)
	}
	f.exec(`INSERT INTO media_clip (id, file, deleted_at) VALUES (2, 'clips/later.mp4', '2026-01-02 03:04:05+00')`)
	if got, want := f.seen(e2eClip, "2"), (index.Change{Op: index.Upsert, Table: "public.media_clip", Entry: index.Entry{ID: "2", Key: "clips/later.mp4", DeletedAt: at}}); !sameChange(got, want) {
		t.Errorf("media_clip: %+v; want %+v", got, want)
	}
	stop()

	// Removed: the service unpublishes a table it served, and its changes
	// stay out.
	if err := Unpublish(context.Background(), f.pool, "reconcile_tables", []string{"public.docs_file"}, slog.New(slog.NewTextHandler(t.Output(), nil))); err != nil {
		t.Fatal(err)
	}
	stop = f.start(e2eForum, e2eBlog, e2eClip)
	defer stop()
	if got := f.published(); !slices.Equal(got, []string{"blog_photo", "forum_attachment", "media_clip"}) {
		t.Fatalf("after removing docs_file, the publication holds %v", got)
	}
	before := len(f.idx.changes())
	f.exec(`UPDATE docs_file SET deleted_at = now() WHERE id = $1`, restoredID)
	f.exec(`INSERT INTO media_clip (id, file, deleted_at) VALUES (3, 'clips/last.mp4', now())`)
	f.seen(e2eClip, "3")
	for _, c := range f.idx.changes()[before:] {
		if c.Table == "public.docs_file" {
			t.Errorf("a table no longer configured reached the index: %+v", c)
		}
	}
}

// Altering the publication takes the tables' owner: a role of fewer rights
// is told to run migrate, and the publication is left as it was.
func TestEnsurePublicationLeavesAlteringToTheOwner(t *testing.T) {
	f := newTablesFixture(t)
	f.exec(`CREATE PUBLICATION reconcile_tables FOR TABLE forum_attachment, media_clip WITH (publish_via_partition_root = true)`)
	role := "t_role_" + strings.ReplaceAll(uuid.NewString()[:8], "-", "")
	f.exec(`CREATE ROLE ` + role + ` LOGIN`)
	t.Cleanup(func() {
		_, _ = f.pool.Exec(context.Background(), `DROP ROLE `+role)
	})
	u, err := url.Parse(f.url)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.User(role)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, u.String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	log := slog.New(slog.NewTextHandler(t.Output(), nil))
	err = EnsurePublication(ctx, conn, Config{Publication: "reconcile_tables", Tables: []Table{e2eForum, e2eBlog, e2eClip}}, log)
	if !errors.Is(err, ErrSetup) || !strings.Contains(err.Error(), "run `reconcile migrate` as the table") {
		t.Fatalf("adding: %v; want an ErrSetup saying to run migrate as the owner", err)
	}
	// A table the publication holds beyond the configured ones is left.
	if err := EnsurePublication(ctx, conn, Config{Publication: "reconcile_tables", Tables: []Table{e2eForum}}, log); err != nil {
		t.Fatalf("fewer tables: %v; want the publication left as it is", err)
	}
	if err := Unpublish(ctx, conn, "reconcile_tables", []string{"public.media_clip"}, log); err == nil || !strings.Contains(err.Error(), `ALTER PUBLICATION "reconcile_tables" DROP TABLE public.media_clip`) {
		t.Fatalf("unpublishing: %v; want an error saying what the owner runs", err)
	}
	if got := f.published(); !slices.Equal(got, []string{"forum_attachment", "media_clip"}) {
		t.Fatalf("the publication holds %v; want it untouched", got)
	}
	// The owner can, and a publication that hides a column of one table is
	// refused before anything is altered.
	f.exec(`ALTER PUBLICATION reconcile_tables SET TABLE forum_attachment, media_clip (id, file)`)
	err = EnsurePublication(ctx, f.pool, Config{Publication: "reconcile_tables", Tables: []Table{e2eForum, e2eBlog, e2eClip}}, log)
	if !errors.Is(err, ErrSetup) || !strings.Contains(err.Error(), "media_clip") {
		t.Fatalf("%v; want media_clip's column list refused", err)
	}
	if got := f.published(); !slices.Equal(got, []string{"forum_attachment", "media_clip"}) {
		t.Fatalf("the publication holds %v; want it untouched", got)
	}
	f.exec(`ALTER PUBLICATION reconcile_tables SET TABLE forum_attachment, media_clip`)
	if err := EnsurePublication(ctx, f.pool, Config{Publication: "reconcile_tables", Tables: []Table{e2eBlog, e2eClip}}, log); err != nil {
		t.Fatal(err)
	}
	if err := Unpublish(ctx, f.pool, "reconcile_tables", []string{"public.forum_attachment"}, log); err != nil {
		t.Fatal(err)
	}
	if got := f.published(); !slices.Equal(got, []string{"blog_photo", "media_clip"}) {
		t.Fatalf("the publication holds %v; want the tables configured", got)
	}
}
