package testdb

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Server is a PostgreSQL server of one test's own, started by
// scripts/pg.sh, which the test may restart without disturbing the others.
type Server struct {
	URL    string
	dir    string
	script string
}

// StartServer starts a server for t and stops it when t ends.
func StartServer(t testing.TB) *Server {
	t.Helper()
	s := &Server{script: filepath.Join(repoRoot(t), "scripts", "pg.sh")}
	out, err := s.bash("pg_start >&2 && echo \"$PG_URL $PG_DIR\"")
	if err != nil {
		t.Fatalf("start a PostgreSQL server of the test's own: %v\n%s", err, out)
	}
	fields := strings.Fields(string(out))
	if len(fields) < 2 {
		t.Fatalf("scripts/pg.sh printed %q", out)
	}
	s.URL, s.dir = fields[len(fields)-2], fields[len(fields)-1]
	t.Cleanup(func() {
		if out, err := s.bash("pg_stop"); err != nil {
			t.Errorf("stop the test's PostgreSQL: %v\n%s", err, out)
		}
	})
	return s
}

// NewDjango creates a database with the Django attachment table on s.
func (s *Server) NewDjango(t testing.TB) (string, *pgxpool.Pool) {
	t.Helper()
	return django(t, s.URL)
}

// Restart restarts the server, mode fast or immediate (a crash).
func (s *Server) Restart(t testing.TB, mode string) {
	t.Helper()
	if out, err := s.bash("pg_restart " + mode); err != nil {
		t.Fatalf("restart PostgreSQL (%s): %v\n%s", mode, err, out)
	}
}

// Halt stops the server until Resume.
func (s *Server) Halt(t testing.TB) {
	t.Helper()
	if out, err := s.bash("pg_halt"); err != nil {
		t.Fatalf("stop PostgreSQL: %v\n%s", err, out)
	}
}

// Resume starts the server again after Halt, on the same port.
func (s *Server) Resume(t testing.TB) {
	t.Helper()
	if out, err := s.bash("pg_resume"); err != nil {
		t.Fatalf("start PostgreSQL again: %v\n%s", err, out)
	}
}

func (s *Server) bash(script string) ([]byte, error) {
	cmd := exec.Command("bash", "-c", "source \"$PG_SH\" && "+script)
	cmd.Env = append(os.Environ(), "PG_SH="+s.script, "PG_DIR="+s.dir, "PG_FIXED_PORT=")
	return cmd.CombinedOutput()
}

// repoRoot is the directory holding go.mod, above the test's package.
func repoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's directory")
		}
		dir = parent
	}
}
