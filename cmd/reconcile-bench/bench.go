package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// bench holds what every run shares: the admin connection, the URL of the
// benchmark database, and the temporary directory.
type bench struct {
	opts    options
	schema  string
	admin   *pgx.Conn
	dbURL   string
	tmp     string
	media   string // the media root the files live under
	version string // Postgres server version

	// runEnv is the settings given to reconcile beyond the database and
	// index: RECONCILE_STORAGE_*, and the table's derived patterns when the
	// dataset has derived files.
	runEnv []string
}

func newBench(ctx context.Context, o options, schema string) (*bench, error) {
	dbURL, err := withDatabase(o.databaseURL, benchDatabase)
	if err != nil {
		return nil, err
	}
	admin, err := pgx.Connect(ctx, o.databaseURL)
	if err != nil {
		return nil, fmt.Errorf("connecting with -database-url: %w", err)
	}
	b := &bench{opts: o, schema: schema, admin: admin, dbURL: dbURL}

	if err := admin.QueryRow(ctx, "SHOW server_version").Scan(&b.version); err != nil {
		admin.Close(ctx)
		return nil, fmt.Errorf("reading server version: %w", err)
	}
	var super bool
	if err := admin.QueryRow(ctx, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user").Scan(&super); err != nil {
		admin.Close(ctx)
		return nil, fmt.Errorf("checking the role: %w", err)
	}
	if !super {
		admin.Close(ctx)
		return nil, errors.New("-database-url must connect as a superuser (the benchmark creates a database and runs CHECKPOINT)")
	}

	b.tmp, err = os.MkdirTemp("", "reconcile-bench-")
	if err != nil {
		admin.Close(ctx)
		return nil, fmt.Errorf("creating temporary directory: %w", err)
	}
	b.media = filepath.Join(b.tmp, "media")
	b.runEnv = []string{"RECONCILE_STORAGE_BACKEND=local", "RECONCILE_STORAGE_LOCAL_ROOT=" + b.media}
	slog.Info("benchmark ready", "postgres", b.version, "database", benchDatabase, "tmp", b.tmp)
	return b, nil
}

// close drops the benchmark database and removes the temporary directory,
// unless -keep.
func (b *bench) close(ctx context.Context) error {
	defer b.admin.Close(ctx)
	if b.opts.keep {
		slog.Info("kept", "tmp", b.tmp, "database", benchDatabase)
		return nil
	}
	var errs []error
	if err := b.dropDatabase(ctx); err != nil {
		errs = append(errs, err)
	}
	if err := removeTree(ctx, b.tmp); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// withDatabase returns the connection string raw pointing at database db
// instead. It takes URLs (postgres://...) and keyword/value strings.
func withDatabase(raw, db string) (string, error) {
	var out string
	if strings.HasPrefix(raw, "postgres://") || strings.HasPrefix(raw, "postgresql://") {
		u, err := url.Parse(raw)
		if err != nil {
			return "", fmt.Errorf("parsing -database-url: %w", err)
		}
		u.Path = "/" + db
		u.RawPath = ""
		if q := u.Query(); q.Has("dbname") {
			q.Set("dbname", db)
			u.RawQuery = q.Encode()
		}
		out = u.String()
	} else {
		out = raw + " dbname=" + db // a later keyword wins
	}
	cfg, err := pgx.ParseConfig(out)
	if err != nil {
		return "", fmt.Errorf("parsing -database-url: %w", err)
	}
	if cfg.Database != db {
		return "", fmt.Errorf("-database-url: could not point it at database %s (got %q)", db, cfg.Database)
	}
	return out, nil
}

func (b *bench) dropDatabase(ctx context.Context) error {
	// A logical replication slot in the database would make DROP DATABASE fail.
	if _, err := b.admin.Exec(ctx,
		`SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1`,
		benchDatabase); err != nil {
		return fmt.Errorf("dropping replication slots of %s: %w", benchDatabase, err)
	}
	if _, err := b.admin.Exec(ctx, "DROP DATABASE IF EXISTS "+benchDatabase+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("dropping database %s: %w", benchDatabase, err)
	}
	return nil
}

// seed gives a fresh database, table and media root holding ds, prepared by
// `reconcile migrate` when the binary is known, vacuumed, analyzed,
// checkpointed and synced to disk, so that what is timed next starts from the
// same state for every algorithm.
func (b *bench) seed(ctx context.Context, ds *dataset, logDir string) error {
	return b.seedWith(ctx, ds, logDir, b.opts.reconcile, func(ctx context.Context) error {
		if err := removeTree(ctx, b.media); err != nil {
			return fmt.Errorf("clearing the media root: %w", err)
		}
		return writeFiles(ctx, b.media, ds)
	})
}

// seedWith is seed with the files put in place by store, which runs while
// the rows are copied, and `reconcile migrate` run by the binary migrateBin
// (none when empty).
func (b *bench) seedWith(ctx context.Context, ds *dataset, logDir, migrateBin string, store func(context.Context) error) error {
	slog.Info("seeding", "rows", len(ds.rows), "due", ds.due)
	start := time.Now()
	if err := b.dropDatabase(ctx); err != nil {
		return err
	}
	if _, err := b.admin.Exec(ctx, "CREATE DATABASE "+benchDatabase); err != nil {
		return fmt.Errorf("creating database %s: %w", benchDatabase, err)
	}
	conn, err := pgx.Connect(ctx, b.dbURL)
	if err != nil {
		return fmt.Errorf("connecting to %s: %w", benchDatabase, err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, b.schema); err != nil {
		return fmt.Errorf("creating the table from %s: %w", b.opts.schema, err)
	}

	now := time.Now()
	filesDone := make(chan error, 1)
	var filesTook time.Duration
	go func() {
		err := store(ctx)
		filesTook = time.Since(now)
		filesDone <- err
	}()
	copyErr := copyRows(ctx, conn, ds, now)
	copyTook := time.Since(now)
	filesErr := <-filesDone
	if err := errors.Join(copyErr, filesErr); err != nil {
		return err
	}
	loaded := time.Now()

	if migrateBin != "" {
		if err := b.migrate(ctx, migrateBin, logDir); err != nil {
			return err
		}
	}
	for _, stmt := range []string{"VACUUM ANALYZE forum_attachment", "CHECKPOINT"} {
		if _, err := conn.Exec(ctx, stmt); err != nil {
			return fmt.Errorf("%s: %w", stmt, err)
		}
	}
	syscall.Sync()

	var due int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM forum_attachment WHERE "+duePredicate).Scan(&due); err != nil {
		return fmt.Errorf("counting due rows: %w", err)
	}
	if due != ds.due {
		return fmt.Errorf("seeded %d due rows but the database counts %d", ds.due, due)
	}
	slog.Info("seeded", "rows", len(ds.rows), "due", ds.due,
		"create_db", now.Sub(start).Round(time.Millisecond),
		"load", loaded.Sub(now).Round(time.Millisecond),
		"copy", copyTook.Round(time.Millisecond), "files", filesTook.Round(time.Millisecond),
		"prepare", time.Since(loaded).Round(time.Millisecond),
		"total", time.Since(start).Round(time.Millisecond))
	return nil
}

// copyRows loads ds into forum_attachment with one COPY; ages are taken
// back from now.
func copyRows(ctx context.Context, conn *pgx.Conn, ds *dataset, now time.Time) error {
	cols := []string{"id", "image", "original_filename", "is_active", "deleted_at", "uploaded_at"}
	n, err := conn.CopyFrom(ctx, pgx.Identifier{"forum_attachment"}, cols,
		pgx.CopyFromSlice(len(ds.rows), func(i int) ([]any, error) {
			r := &ds.rows[i]
			var deletedAt any // NULL for an active row
			if r.deleted {
				deletedAt = now.Add(-r.deletedAge)
			}
			return []any{r.id, r.key, r.name, !r.deleted, deletedAt, now.Add(-r.uploadedAge)}, nil
		}))
	if err != nil {
		return fmt.Errorf("copying rows: %w", err)
	}
	if int(n) != len(ds.rows) {
		return fmt.Errorf("copying rows: copied %d of %d", n, len(ds.rows))
	}
	return nil
}

// fileWorkers is how many files are written or removed at once when seeding:
// creating and unlinking files waits on the file system more than on the CPU.
var fileWorkers = max(16, 4*runtime.NumCPU())

// writeFiles writes every file of ds under root, a few at a time.
func writeFiles(ctx context.Context, root string, ds *dataset) error {
	files := ds.files()
	dirs := make(map[string]struct{})
	for _, f := range files {
		dirs[filepath.Dir(filepath.Join(root, filepath.FromSlash(f.key)))] = struct{}{}
	}
	for d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("creating media directory: %w", err)
		}
	}

	// Files carry their upload time, as on a forum's disk: reconcile keeps a
	// file modified about the time its removal is queued (a new upload).
	now := time.Now()
	return eachFile(ctx, files, func(f storedFile) error {
		p := filepath.Join(root, filepath.FromSlash(f.key))
		if err := os.WriteFile(p, ds.content[:f.size], 0o644); err != nil {
			return fmt.Errorf("writing media file: %w", err)
		}
		uploaded := now.Add(-f.uploadedAge)
		if err := os.Chtimes(p, uploaded, uploaded); err != nil {
			return fmt.Errorf("dating media file: %w", err)
		}
		return nil
	})
}

// eachFile calls store for every file, fileWorkers at a time; a worker
// stops at its first error, and the errors are joined.
func eachFile(ctx context.Context, files []storedFile, store func(f storedFile) error) error {
	next := make(chan int)
	errs := make(chan error, fileWorkers)
	for range fileWorkers {
		go func() {
			var err error
			for i := range next {
				if err != nil {
					continue // drain
				}
				err = store(files[i])
			}
			errs <- err
		}()
	}
	var ctxErr error
	for i := range files {
		if ctxErr = ctx.Err(); ctxErr != nil {
			break
		}
		next <- i
	}
	close(next)
	all := []error{ctxErr}
	for range fileWorkers {
		all = append(all, <-errs)
	}
	return errors.Join(all...)
}

// removeTree is os.RemoveAll, with the files removed a few at a time first:
// one after another, a tree of 100,000 files takes long to remove.
func removeTree(ctx context.Context, root string) error {
	var files []string
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			files = append(files, path)
		}
		return ctx.Err()
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("listing %s: %w", root, err)
	}
	next := make(chan string)
	var wg sync.WaitGroup
	for range fileWorkers {
		wg.Go(func() {
			for p := range next {
				_ = os.Remove(p) // what is left, RemoveAll reports
			}
		})
	}
	for _, p := range files {
		next <- p
	}
	close(next)
	wg.Wait()
	if err := os.RemoveAll(root); err != nil {
		return fmt.Errorf("removing %s: %w", root, err)
	}
	return nil
}
