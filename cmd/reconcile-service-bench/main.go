// Command reconcile-service-bench measures the service (reconcile without
// --rescan) against a throwaway PostgreSQL:
//
//   - apply: one transaction (or transactions of -tx-rows) soft-deletes -rows rows. Timed from the start of
//     the service, stopped while the transaction committed, until the slot's
//     confirmed LSN passes the commit (the index then holds every row); in the
//     same run pg_recvlogical receives the same changes from a slot of its own
//     into /dev/null (the floor). Also the service's peak Go heap (from
//     GODEBUG=gctrace=1) and the index's bytes per entry.
//
//   - latency: -rate soft-deletes a second for -duration, retention -retention;
//     p50 and p99 of (purge time - due time), the purge time taken from the
//     service's log line for each row.
//
// With -tables 3 the service serves three tables of the same shape
// (forum_attachment, forum_attachment_2, forum_attachment_3, configured by
// RECONCILE_TABLES), and the same changes are spread evenly over them:
// with -tx-rows, and in the latency benchmark, each transaction on one
// table, the tables in turn, as an app's tables change on their own;
// without, the one transaction covers every table. With -tables 1,3 both
// run in turn, -runs times, in the same invocation, and the medians of
// three tables are divided by those of one. One table is configured as
// before the tables: list existed, so an older binary (-reconcile) runs it
// too.
//
//	go run ./cmd/reconcile-service-bench -database-url URL -reconcile bin/reconcile
//
// It creates, and drops at the end, a database of its own. Progress goes to
// stderr, the figures to stdout.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

const benchDatabase = "reconcile_service_bench"

type options struct {
	databaseURL string
	reconcile   string
	pgBin       string
	rows        int
	txRows      int
	runs        int
	rate        int
	duration    time.Duration
	retention   time.Duration
	only        string
	keep        bool
	deletes     bool
	identity    string
	tables      []int // table counts to compare, each run in turn
}

func main() {
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, nil)))
	var o options
	fs := flag.NewFlagSet("reconcile-service-bench", flag.ContinueOnError)
	fs.StringVar(&o.databaseURL, "database-url", "", "superuser `URL` of a throwaway PostgreSQL (wal_level=logical)")
	fs.StringVar(&o.reconcile, "reconcile", "bin/reconcile", "`path` of the reconcile binary")
	fs.StringVar(&o.pgBin, "pg-bin", "/usr/lib/postgresql/15/bin", "`directory` of pg_recvlogical")
	fs.IntVar(&o.rows, "rows", 1_000_000, "rows the apply benchmark soft-deletes in one transaction")
	fs.IntVar(&o.txRows, "tx-rows", 0, "rows per transaction in the apply benchmark; 0: all in one (above 20000 the service covers a transaction by a rescan, below it applies each change)")
	fs.IntVar(&o.runs, "runs", 1, "runs of each benchmark, for each count of -tables in turn; the order of reconcile and pg_recvlogical alternates")
	fs.IntVar(&o.rate, "rate", 1000, "soft-deletes a second in the latency benchmark")
	fs.DurationVar(&o.duration, "duration", 20*time.Second, "how long the latency benchmark soft-deletes")
	fs.DurationVar(&o.retention, "retention", 3*time.Second, "retention in the latency benchmark")
	fs.StringVar(&o.only, "only", "apply,latency", "benchmarks to run, comma-separated: apply, latency")
	fs.BoolVar(&o.keep, "keep", false, "keep the temporary directory (logs, index files)")
	fs.BoolVar(&o.deletes, "deletes", false, "the apply benchmark deletes the rows outright instead of soft-deleting them")
	fs.StringVar(&o.identity, "identity", "", "set the table's replica identity after `reconcile migrate` (which sets full): default or full")
	tables := fs.String("tables", "1", "`counts` of tables the service serves, comma-separated (1,3: both in turn, and their ratio); the changes are spread over them")
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		os.Exit(2)
	}
	counts, err := parseCounts(*tables)
	if err != nil {
		fmt.Fprintf(os.Stderr, "reconcile-service-bench: -tables: %v\n", err)
		os.Exit(2)
	}
	o.tables = counts
	if o.identity != "" && o.identity != "default" && o.identity != "full" {
		fmt.Fprintln(os.Stderr, "reconcile-service-bench: -identity: want default or full")
		os.Exit(2)
	}
	if o.databaseURL == "" || o.rows < 1 || o.txRows < 0 || o.runs < 1 || o.rate < 1 || o.duration <= 0 || o.retention <= 0 {
		fmt.Fprintln(os.Stderr, "reconcile-service-bench: -database-url is required; -rows, -runs, -rate, -duration and -retention must be positive, -tx-rows not negative")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintf(os.Stderr, "reconcile-service-bench: %v\n", err)
		stop()
		os.Exit(1)
	}
}

// parseCounts reads -tables: distinct positive counts.
func parseCounts(text string) ([]int, error) {
	var counts []int
	for _, field := range strings.Split(text, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(field))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q is no positive count of tables", field)
		}
		if slices.Contains(counts, n) {
			return nil, fmt.Errorf("%d is given twice", n)
		}
		counts = append(counts, n)
	}
	return counts, nil
}

// bench is the benchmark database, its tables, its media root and the
// service's files.
type bench struct {
	o      options
	admin  string
	url    string
	pool   *pgxpool.Pool
	dir    string
	media  string
	tables []string // forum_attachment, then its copies: as many as the largest count
}

func run(ctx context.Context, o options) (err error) {
	abs, err := filepath.Abs(o.reconcile)
	if err != nil {
		return err
	}
	o.reconcile = abs
	if _, err := os.Stat(o.reconcile); err != nil {
		return fmt.Errorf("-reconcile: %w (build it: go build -o bin/reconcile ./cmd/reconcile)", err)
	}
	schema, err := os.ReadFile(filepath.Join(moduleRoot(), "internal/testdb/django_attachment.sql"))
	if err != nil {
		return err
	}
	b := &bench{o: o, admin: o.databaseURL, tables: []string{"forum_attachment"}}
	for i := 2; i <= slices.Max(o.tables); i++ {
		b.tables = append(b.tables, fmt.Sprintf("forum_attachment_%d", i))
	}
	if b.dir, err = os.MkdirTemp("", "reconcile-service-bench-"); err != nil {
		return err
	}
	b.media = filepath.Join(b.dir, "media")
	if err := os.Mkdir(b.media, 0o755); err != nil {
		return err
	}
	defer func() {
		if cerr := b.close(context.WithoutCancel(ctx)); cerr != nil && err == nil {
			err = cerr
		}
	}()
	if err := b.createDatabase(ctx, string(schema)); err != nil {
		return err
	}
	fmt.Printf("reconcile service benchmark, %s\n", time.Now().UTC().Format(time.RFC3339))
	for _, name := range strings.Split(o.only, ",") {
		switch strings.TrimSpace(name) {
		case "apply":
			if err := b.apply(ctx); err != nil {
				return fmt.Errorf("apply: %w", err)
			}
		case "latency":
			if err := b.latency(ctx); err != nil {
				return fmt.Errorf("latency: %w", err)
			}
		default:
			return fmt.Errorf("-only: unknown benchmark %q (apply, latency)", name)
		}
	}
	return nil
}

func (b *bench) createDatabase(ctx context.Context, schema string) error {
	conn, err := pgx.Connect(ctx, b.admin)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(ctx)
	if err := dropDatabase(ctx, conn); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+benchDatabase); err != nil {
		return fmt.Errorf("create database: %w", err)
	}
	cfg, err := pgxpool.ParseConfig(b.admin)
	if err != nil {
		return err
	}
	cfg.ConnConfig.Database = benchDatabase
	b.url = strings.Replace(b.admin, "/postgres?", "/"+benchDatabase+"?", 1)
	if !strings.Contains(b.url, benchDatabase) {
		return errors.New("-database-url must name the postgres database, as in postgres://user@host:port/postgres?sslmode=disable")
	}
	if b.pool, err = pgxpool.NewWithConfig(ctx, cfg); err != nil {
		return err
	}
	if _, err = b.pool.Exec(ctx, schema); err != nil {
		return err
	}
	for _, name := range b.tables[1:] {
		if _, err := b.pool.Exec(ctx, `CREATE TABLE `+name+` (LIKE forum_attachment INCLUDING ALL)`); err != nil {
			return err
		}
	}
	return nil
}

func dropDatabase(ctx context.Context, conn *pgx.Conn) error {
	_, _ = conn.Exec(ctx, `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = $1 AND active`, benchDatabase)
	time.Sleep(200 * time.Millisecond)
	if _, err := conn.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1`, benchDatabase); err != nil {
		return fmt.Errorf("drop the benchmark's slots: %w", err)
	}
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+benchDatabase+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("drop database: %w", err)
	}
	return nil
}

func (b *bench) close(ctx context.Context) error {
	if b.pool != nil {
		b.pool.Close()
	}
	if b.o.keep {
		fmt.Fprintf(os.Stderr, "kept %s and database %s\n", b.dir, benchDatabase)
		return nil
	}
	conn, err := pgx.Connect(ctx, b.admin)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	if err := dropDatabase(ctx, conn); err != nil {
		return err
	}
	return os.RemoveAll(b.dir)
}

func moduleRoot() string {
	dir, _ := os.Getwd()
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d
		}
		if filepath.Dir(d) == d {
			return dir
		}
	}
}
