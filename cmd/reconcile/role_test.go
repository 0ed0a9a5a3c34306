package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// The role that `reconcile migrate --print-role` prints is all reconcile
// needs, and no more: as that role --rescan purges, the service (a real
// process) streams and purges, and files go through the outbox.
func TestLeastPrivilegedRole(t *testing.T) {
	f := newForum(t)
	serviceEnv(t, f, "2s")
	// A name that needs quoting and holds the DO blocks' first tag.
	f.role = `Least "Privileged" $do$ ` + f.slot()
	due := "forum/attachments/due.jpg"
	f.add(due, 48)
	f.migrate()
	f.grantRole(f.url) // applied again: changes nothing

	var super, repl, login, stats, table, tableMore, outbox bool
	err := f.pool.QueryRow(context.Background(), `
		SELECT rolsuper, rolreplication, rolcanlogin, pg_has_role($1, 'pg_read_all_stats', 'USAGE'),
		       has_table_privilege($1, 'forum_attachment', 'SELECT, DELETE'),
		       has_table_privilege($1, 'forum_attachment', 'INSERT, UPDATE, TRUNCATE'),
		       has_table_privilege($1, 'reconcile_forum_attachment_outbox', 'SELECT, INSERT, UPDATE, DELETE')
		FROM pg_roles WHERE rolname = $1`, f.role).Scan(&super, &repl, &login, &stats, &table, &tableMore, &outbox)
	if err != nil {
		t.Fatal(err)
	}
	if super || !repl || !login || stats || !table || tableMore || !outbox {
		t.Fatalf("superuser %t, replication %t, login %t, pg_read_all_stats %t, table %t, more on the table %t, outbox %t",
			super, repl, login, stats, table, tableMore, outbox)
	}

	code, out, stderr := reconcile("--rescan")
	if code != exitOK || !strings.Contains(out, "Successfully deleted: 1 attachments") || !strings.Contains(out, "Files removed: 1") {
		t.Fatalf("--rescan as the role: exit %d\n%s%s", code, out, stderr)
	}

	cmd, logs := reconcileProcess(t)
	key := "forum/attachments/streamed.jpg"
	id := f.add(key, -1)
	f.softDelete(id)
	eventually(t, 15*time.Second, func() bool {
		_, err := os.Stat(filepath.Join(f.root, key))
		return !f.exists(id) && os.IsNotExist(err)
	}, func() string { return "the service, as the role, never purged the row and its file:\n" + logs.String() })
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit: %v\n%s", err, logs)
	}
	if n := f.count(`SELECT count(*) FROM reconcile_forum_attachment_outbox`); n != 0 || f.files() != 0 {
		t.Fatalf("%d keys left in the outbox, %d files left", n, f.files())
	}

	// The service's heartbeat needs no grant of its own.
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, os.Getenv("RECONCILE_DATABASE_URL"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `SELECT pg_logical_emit_message(false, 'reconcile', 'heartbeat')`); err != nil {
		t.Fatalf("pg_logical_emit_message as the role: %v", err)
	}
}

// The role cannot create the publication (only the table's owner can):
// when it is missing the service says to run migrate as the owner.
func TestServiceAsItsRoleNeedsThePublicationFromMigrate(t *testing.T) {
	f := newForum(t)
	serviceEnv(t, f, "1h")
	f.migrate()
	t.Setenv("RECONCILE_REPLICATION_PUBLICATION", "not_migrated")
	code, out, stderr := reconcile()
	if code != exitUsage || !strings.Contains(stderr, "run `reconcile migrate` as the table's owner") {
		t.Fatalf("exit %d; want %d naming the fix\n%s%s", code, exitUsage, out, stderr)
	}
	if n := f.count(`SELECT count(*) FROM pg_publication`); n != 1 {
		t.Fatalf("%d publications; want migrate's alone", n)
	}
}

// --print-role prints without connecting, and refuses a name PostgreSQL
// would not take.
func TestPrintRole(t *testing.T) {
	t.Setenv("RECONCILE_CONFIG", "")
	t.Setenv("RECONCILE_DATABASE_URL", "postgres://nobody@127.0.0.1:1/forum?connect_timeout=1")
	t.Setenv("RECONCILE_STORAGE_LOCAL_ROOT", t.TempDir())
	t.Setenv("RECONCILE_TABLE_SCHEMA", "Forum")
	code, out, stderr := reconcile("migrate", "--print-role", "reconcile")
	if code != exitOK {
		t.Fatalf("exit %d\n%s", code, stderr)
	}
	for _, want := range []string{
		`CREATE ROLE "reconcile" LOGIN REPLICATION`,
		`GRANT USAGE ON SCHEMA "Forum" TO "reconcile"`,
		`GRANT SELECT, DELETE ON "Forum"."forum_attachment" TO "reconcile"`,
		`GRANT SELECT, INSERT, UPDATE, DELETE ON "Forum"."reconcile_forum_attachment_outbox" TO "reconcile"`,
		`GRANT pg_read_all_stats TO "reconcile"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the role's SQL lacks %q:\n%s", want, out)
		}
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "PASSWORD") && !strings.HasPrefix(line, "--") {
			t.Errorf("the role's SQL sets a password: %s", line)
		}
	}
	for _, name := range []string{"", "a\x00b", "a\nb", strings.Repeat("r", 64)} {
		code, out, stderr := reconcile("migrate", "--print-role", name)
		if code != exitUsage || out != "" || !strings.Contains(stderr, "--print-role: the role name") {
			t.Errorf("--print-role %q: exit %d, stdout %q, stderr %q; want %d", name, code, out, stderr, exitUsage)
		}
	}
}

// The role's SQL takes an existing role only if it has REPLICATION (the
// file applied before): given to the forum's own role by mistake, it would
// let the web application create slots and hold WAL.
func TestRoleSQLRefusesAnExistingRoleWithoutReplication(t *testing.T) {
	f := newForum(t)
	f.role = "forum_app_" + f.slot() // the forum drops it at the end
	ctx := context.Background()
	if _, err := f.pool.Exec(ctx, `CREATE ROLE `+f.role+` LOGIN NOREPLICATION`); err != nil {
		t.Fatal(err)
	}
	code, sql, stderr := reconcile("migrate", "--print-role", f.role)
	if code != exitOK {
		t.Fatalf("exit %d\n%s", code, stderr)
	}
	_, err := f.pool.Exec(ctx, sql)
	if err == nil || !strings.Contains(err.Error(), "exists without REPLICATION") {
		t.Fatalf("applying the role's SQL to an existing role without REPLICATION: %v", err)
	}
	var replication bool
	if err := f.pool.QueryRow(ctx, `SELECT rolreplication FROM pg_roles WHERE rolname = $1`, f.role).Scan(&replication); err != nil || replication {
		t.Errorf("the role has REPLICATION %v (%v); want it left as it was", replication, err)
	}
}
