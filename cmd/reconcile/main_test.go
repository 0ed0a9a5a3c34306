package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"

	"github.com/reconcile/reconcile/internal/testdb"
)

func TestMain(m *testing.M) {
	// The kill test runs this very binary as reconcile, so that it can
	// SIGKILL a real process.
	if os.Getenv("RECONCILE_TEST_AS_MAIN") == "1" {
		os.Exit(runWithSignals(os.Args[1:]))
	}
	// Services run side by side, in this process and as processes: each
	// takes a free port, unless a test sets one.
	if err := os.Setenv("RECONCILE_HTTP_LISTEN", "127.0.0.1:0"); err != nil {
		panic(err)
	}
	goleak.VerifyTestMain(m)
}

// forum is a Django-shaped database with local media, configured through
// the environment as a user would.
type forum struct {
	t    *testing.T
	url  string // the superuser's, who owns the table
	pool *pgxpool.Pool
	root string
	role string // reconcile's own role, once migrate made it
}

func newForum(t *testing.T) *forum {
	t.Helper()
	url, pool := testdb.NewDjango(t)
	return forumOn(t, url, pool)
}

// newForumOn is newForum on a server of the test's own.
func newForumOn(t *testing.T, srv *testdb.Server) *forum {
	t.Helper()
	url, pool := srv.NewDjango(t)
	return forumOn(t, url, pool)
}

func forumOn(t *testing.T, url string, pool *pgxpool.Pool) *forum {
	t.Helper()
	f := &forum{t: t, url: url, pool: pool, root: t.TempDir()}
	t.Setenv("RECONCILE_CONFIG", "")
	t.Setenv("RECONCILE_DATABASE_URL", url)
	t.Setenv("RECONCILE_STORAGE_BACKEND", "local")
	t.Setenv("RECONCILE_STORAGE_LOCAL_ROOT", f.root)
	t.Setenv("RECONCILE_INDEX_PATH", filepath.Join(t.TempDir(), "index.db"))
	t.Setenv("RECONCILE_RETENTION", "1h")
	// Before the database goes: the role's grants are in it.
	t.Cleanup(func() {
		if f.role != "" {
			// Bounded: a test that failed may leave commits waiting for a
			// standby.
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			role := pgx.Identifier{f.role}.Sanitize()
			if _, err := pool.Exec(ctx, "DROP OWNED BY "+role+"; DROP ROLE "+role); err != nil {
				t.Errorf("drop role %s: %v", role, err)
			}
		}
	})
	return f
}

// add inserts a row soft-deleted ageHours ago (never deleted when negative)
// and writes its file.
func (f *forum) add(key string, ageHours int) string {
	f.t.Helper()
	id := uuid.NewString()
	_, err := f.pool.Exec(context.Background(), `
		INSERT INTO forum_attachment (id, image, original_filename, is_active, deleted_at)
		VALUES ($1, $2, 'orig.jpg', $3 < 0, CASE WHEN $3 >= 0 THEN now() - $3 * interval '1 hour' END)`, id, key, ageHours)
	if err != nil {
		f.t.Fatal(err)
	}
	path := filepath.Join(f.root, key)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		f.t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("img"), 0o644); err != nil {
		f.t.Fatal(err)
	}
	// Uploaded before it was soft-deleted, as files are: a file modified
	// about the time its removal is queued is a new upload, which stays.
	uploaded := time.Now().Add(-time.Duration(max(ageHours, 0)+1) * time.Hour)
	if err := os.Chtimes(path, uploaded, uploaded); err != nil {
		f.t.Fatal(err)
	}
	return id
}

func (f *forum) count(sql string) int {
	f.t.Helper()
	var n int
	if err := f.pool.QueryRow(context.Background(), sql).Scan(&n); err != nil {
		f.t.Fatal(err)
	}
	return n
}

func (f *forum) files() int {
	f.t.Helper()
	n := 0
	err := filepath.WalkDir(f.root, func(_ string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			n++
		}
		return err
	})
	if err != nil {
		f.t.Fatal(err)
	}
	return n
}

// reconcile runs the command in process and returns its exit status and
// output.
func reconcile(args ...string) (int, string, string) {
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func TestRescanPurgesAndPrintsTheCronSummary(t *testing.T) {
	f := newForum(t)
	for i := range 250 {
		f.add(fmt.Sprintf("forum/attachments/2025/10/04/due-%d.jpg", i), 48)
	}
	f.add("forum/attachments/recent.jpg", 0)
	f.add("forum/attachments/active.jpg", -1)

	if code, _, stderr := reconcile("--rescan"); code != exitUsage || !strings.Contains(stderr, "reconcile migrate") {
		t.Fatalf("before migrate: exit %d, stderr %q; want %d naming `reconcile migrate`", code, stderr, exitUsage)
	}
	f.migrate()
	code, out, stderr := reconcile("--rescan", "--batch-size", "100")
	if code != exitOK {
		t.Fatalf("exit %d\n%s\n%s", code, out, stderr)
	}
	for _, want := range []string{
		"Permanently deleting 250 attachments in batches of 100...\n",
		"  Deleted 250/250...\n",
		"Cleanup complete:\n",
		"  - Successfully deleted: 250 attachments\n",
		"  - Failed: 0 attachments\n",
		"  - Cutoff date: ",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if n := strings.Count(stderr, "[CLEANUP] Hard-deleted attachment"); n != 250 {
		t.Errorf("%d [CLEANUP] log lines, want 250", n)
	}
	if f.count(`SELECT count(*) FROM forum_attachment`) != 2 || f.files() != 2 {
		t.Errorf("left %d rows and %d files, want 2 and 2", f.count(`SELECT count(*) FROM forum_attachment`), f.files())
	}
}

func TestRescanExitsOneWhenARowFails(t *testing.T) {
	f := newForum(t)
	f.add("a/ok.jpg", 48)
	f.add("../outside.jpg", 48)
	f.migrate()
	code, out, stderr := reconcile("--rescan")
	if code != exitFailed || !strings.Contains(out, "  - Failed: 1 attachments") || !strings.Contains(out, "Successfully deleted: 1 attachments") {
		t.Fatalf("exit %d, output:\n%s", code, out)
	}
	if !strings.Contains(stderr, "[CLEANUP] Failed") {
		t.Errorf(`no "[CLEANUP] Failed" log line:\n%s`, stderr)
	}
}

// The audit changes nothing, works before migrate, and writes each format.
func TestDryRunChangesNothing(t *testing.T) {
	f := newForum(t)
	for i := range 40 {
		f.add(fmt.Sprintf("dry/%d.jpg", i), 48)
	}
	f.add("dry/recent.jpg", 0)
	rows, files := f.count(`SELECT count(*) FROM forum_attachment`), f.files()

	code, out, stderr := reconcile("--rescan", "--dry-run", "--days", "1")
	if code != exitOK || !strings.Contains(out, "Would delete: 40 attachments") || !strings.Contains(out, "Retention: 1 days") {
		t.Fatalf("exit %d\n%s\n%s", code, out, stderr)
	}
	for _, format := range []string{"json", "csv", "text"} {
		path := filepath.Join(t.TempDir(), "audit."+format)
		if code, _, stderr := reconcile("--rescan", "--dry-run", "--format", format, "--output", path); code != exitOK {
			t.Fatalf("--format %s: exit %d: %s", format, code, stderr)
		}
		data, err := os.ReadFile(path)
		if err != nil || !bytes.Contains(data, []byte("dry/7.jpg")) {
			t.Fatalf("--format %s wrote %q (%v)", format, data, err)
		}
	}
	if f.count(`SELECT count(*) FROM forum_attachment`) != rows || f.files() != files {
		t.Fatal("the dry run deleted something")
	}
	if f.count(`SELECT count(*) FROM pg_tables WHERE tablename = 'reconcile_forum_attachment_outbox'`) != 0 {
		t.Fatal("the dry run created the outbox")
	}
}

func TestUsageAndConfigurationErrorsExitTwo(t *testing.T) {
	f := newForum(t)
	f.add("x/due.jpg", 48)
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"bad slot name", map[string]string{"RECONCILE_REPLICATION_SLOT": "Reconcile-Slot"}, nil, "replication.slot: must be 1 to 63 lower-case"},
		{"report flags in service mode", nil, []string{"--dry-run", "--format", "json"}, "use them with --rescan --dry-run"},
		{"unknown flag", nil, []string{"--rescan", "--bogus"}, "unknown flag: --bogus"},
		{"format without dry run", nil, []string{"--rescan", "--format", "json"}, "use them with --rescan --dry-run"},
		{"bad format", nil, []string{"--rescan", "--dry-run", "--format", "xml"}, `report format "xml"`},
		{"bad batch size", nil, []string{"--rescan", "--batch-size", "0"}, "batch_size: must be between 1 and 10000"},
		{"bad retention", map[string]string{"RECONCILE_RETENTION": "-1h"}, []string{"--rescan"}, `retention: "-1h" is negative`},
		{"unknown backend", map[string]string{"RECONCILE_STORAGE_BACKEND": "ftp"}, []string{"--rescan"}, "storage.backend: must be local or s3"},
		{"missing column", map[string]string{"RECONCILE_TABLE_COLUMNS_KEY": "file"}, []string{"--rescan", "--dry-run"}, `table.columns.key: column "file" does not exist`},
		{"missing table", map[string]string{"RECONCILE_TABLE_NAME": "attachments"}, []string{"migrate"}, "table.schema, table.name: no table"},
		{"missing config file", nil, []string{"--rescan", "--config", "/nonexistent/reconcile.yaml"}, "read config file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			code, out, stderr := reconcile(tc.args...)
			if code != exitUsage || !strings.Contains(stderr, tc.want) {
				t.Fatalf("exit %d, stderr %q, stdout %q; want %d and %q", code, stderr, out, exitUsage, tc.want)
			}
		})
	}
	if f.count(`SELECT count(*) FROM forum_attachment`) != 1 {
		t.Fatal("a refused run deleted a row")
	}
}

// Passwords and keys never reach the output, whatever fails.
func TestSecretsStayOutOfOutput(t *testing.T) {
	f := newForum(t)
	t.Setenv("RECONCILE_DATABASE_URL", "postgres://forum:Sup3rSecretPw@127.0.0.1:1/forum?connect_timeout=2")
	code, out, stderr := reconcile("--rescan")
	if code == exitOK || strings.Contains(out+stderr, "Sup3rSecretPw") {
		t.Fatalf("exit %d, output shows the password or succeeded:\n%s%s", code, out, stderr)
	}
	t.Setenv("RECONCILE_DATABASE_URL", "postgres://forum:Sup3rSecretPw@127.0.0.1:notaport/forum")
	if code, out, stderr := reconcile("--rescan"); code != exitUsage || strings.Contains(out+stderr, "Sup3rSecretPw") {
		t.Fatalf("exit %d, output shows the password:\n%s%s", code, out, stderr)
	}
	t.Setenv("RECONCILE_DATABASE_URL", f.url)
	t.Setenv("RECONCILE_STORAGE_BACKEND", "s3")
	t.Setenv("RECONCILE_STORAGE_S3_ENDPOINT", "127.0.0.1:1")
	t.Setenv("RECONCILE_STORAGE_S3_BUCKET", "media")
	t.Setenv("RECONCILE_STORAGE_S3_ACCESS_KEY", "AKIAEXAMPLEACCESS")
	t.Setenv("RECONCILE_STORAGE_S3_SECRET_KEY", "wJalrXUtnFEMIEXAMPLESECRET")
	t.Setenv("RECONCILE_STORAGE_S3_USE_SSL", "false")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var so, se bytes.Buffer
	code = run(ctx, []string{"--rescan", "--dry-run"}, &so, &se)
	// A server out of reach is a failure, not bad configuration.
	if code != exitFailed || !strings.Contains(se.String(), "storage.s3") || strings.Contains(so.String()+se.String(), "EXAMPLESECRET") {
		t.Fatalf("exit %d, output shows the secret key:\n%s%s", code, so.String(), se.String())
	}
}
