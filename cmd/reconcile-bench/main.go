// Command reconcile-bench measures how fast `reconcile --rescan` purges a
// backlog of due attachments, against the cron job it replaces and against
// the floor of one DELETE followed by removing the files, and how much
// memory it needs as the backlog grows.
//
// It needs a throwaway PostgreSQL and a superuser URL to its `postgres`
// database; it creates (and at the end drops) a database of its own:
//
//	go run ./cmd/reconcile-bench -database-url URL -reconcile bin/reconcile
//
// With -s3 it times the S3 path instead: `reconcile --rescan` (and, with
// -baseline-reconcile, an older build of it, alternating run by run) and the
// cron job's per-row algorithm, with versitygw reached through a toxiproxy
// proxy that delays each direction by -latency (see s3.go):
//
//	go run ./cmd/reconcile-bench -s3 -database-url URL -reconcile bin/reconcile \
//	    -s3-endpoint HOST:PORT -toxiproxy http://HOST:PORT
//
// With -orphans it times the orphan scan instead, `reconcile orphans
// --dry-run`, against a floor of find (on S3, one listing), psql's \copy,
// sort and comm, on local disk or, with -s3, on the S3 server reached
// directly (see orphans.go):
//
//	go run ./cmd/reconcile-bench -orphans [-s3] -database-url URL -reconcile bin/reconcile
//
// Progress goes to stderr, the figures to stdout.
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
	"strconv"
	"strings"
	"syscall"
)

// benchDatabase is the database the benchmark creates, and drops again, in
// the server it is pointed at.
const benchDatabase = "reconcile_bench"

// algorithm names, as -only takes them.
const (
	algoCron      = "cron"
	algoReconcile = "reconcile"
	algoFloor     = "floor"
)

var allAlgorithms = []string{algoCron, algoReconcile, algoFloor}

type options struct {
	databaseURL string
	reconcile   string
	rows        int
	runs        int
	memSizes    []int
	skipMem     bool
	keep        bool
	schema      string
	only        []string

	s3      s3Options     // with -s3
	orphans orphanOptions // with -orphans
}

func main() {
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, nil)))

	opts, err := parseFlags(os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintf(os.Stderr, "reconcile-bench: %v\n", err)
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if err := run(ctx, opts); err != nil {
		// Plain text, not a log record: the error may carry a log's tail.
		fmt.Fprintf(os.Stderr, "reconcile-bench: %v\n", err)
		stop()
		os.Exit(1)
	}
}

func parseFlags(args []string) (options, error) {
	var (
		o        options
		memSizes string
		only     string
	)
	fs := flag.NewFlagSet("reconcile-bench", flag.ContinueOnError)
	fs.StringVar(&o.databaseURL, "database-url", "", "superuser `URL` of a throwaway PostgreSQL (database postgres); the benchmark creates and drops its own database "+benchDatabase)
	fs.StringVar(&o.reconcile, "reconcile", "", "`path` of the reconcile binary (needed for the reconcile runs and the memory runs; when set, 'reconcile migrate' also prepares the table for the other algorithms)")
	fs.IntVar(&o.rows, "rows", 100_000, "rows in the table; half soft-deleted over the last 90 days, so about a third due")
	fs.IntVar(&o.runs, "runs", 1, "runs of each algorithm, in alternating order; the median is reported (with -s3 the default is 3)")
	fs.StringVar(&memSizes, "mem-sizes", "10000,100000", "backlog `sizes` for the memory runs, comma-separated (every row due)")
	fs.BoolVar(&o.skipMem, "skip-mem", false, "skip the memory runs")
	fs.BoolVar(&o.keep, "keep", false, "keep the temporary directory (media root, logs, index files) and the benchmark database")
	fs.StringVar(&o.schema, "schema", "internal/testdb/django_attachment.sql", "SQL `file` that creates the table (relative paths are tried from the working directory, then from the module root)")
	fs.StringVar(&only, "only", strings.Join(allAlgorithms, ","), "`algorithms` to time, comma-separated: "+strings.Join(allAlgorithms, ", "))
	o.s3.register(fs)
	o.orphans.register(fs)
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if o.orphans.enabled {
		return o, o.finishOrphans(fs)
	}
	if err := o.orphans.refuseWithout(fs); err != nil {
		return o, err
	}

	if o.databaseURL == "" {
		return o, errors.New("-database-url is required (a superuser URL to the postgres database of a throwaway server)")
	}
	if o.s3.enabled {
		return o, o.finishS3(fs)
	}
	if err := o.s3.refuseWithout(fs); err != nil {
		return o, err
	}
	if o.rows < 1 {
		return o, fmt.Errorf("-rows must be at least 1, got %d", o.rows)
	}
	if o.runs < 1 {
		return o, fmt.Errorf("-runs must be at least 1, got %d", o.runs)
	}

	var err error
	if o.only, err = parseOnly(only); err != nil {
		return o, err
	}
	if !o.skipMem {
		if o.memSizes, err = parseSizes(memSizes); err != nil {
			return o, err
		}
	}

	needBinary := !o.skipMem || contains(o.only, algoReconcile)
	if o.reconcile == "" && needBinary {
		return o, errors.New("-reconcile is required to time reconcile and to measure its memory (or use -only cron,floor -skip-mem)")
	}
	if o.reconcile != "" {
		if o.reconcile, err = executable("-reconcile", o.reconcile); err != nil {
			return o, err
		}
	}
	return o, nil
}

// executable returns the absolute path of the reconcile binary a flag
// names, checking that it is an executable file.
func executable(flagName, path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("resolving %s %q: %w", flagName, path, err)
	}
	info, err := os.Stat(abs)
	if err != nil {
		return "", fmt.Errorf("%s: %w (build it first, e.g. go build -o bin/reconcile ./cmd/reconcile)", flagName, err)
	}
	if info.IsDir() || info.Mode().Perm()&0o111 == 0 {
		return "", fmt.Errorf("%s %s is not an executable file", flagName, abs)
	}
	return abs, nil
}

func parseOnly(s string) ([]string, error) {
	var out []string
	for _, name := range strings.Split(s, ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		if !contains(allAlgorithms, name) {
			return nil, fmt.Errorf("-only: unknown algorithm %q (want a comma-separated subset of %s)", name, strings.Join(allAlgorithms, ","))
		}
		if !contains(out, name) {
			out = append(out, name)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("-only: no algorithm given (want a comma-separated subset of %s)", strings.Join(allAlgorithms, ","))
	}
	// Keep the canonical order whatever order they were given in.
	var ordered []string
	for _, name := range allAlgorithms {
		if contains(out, name) {
			ordered = append(ordered, name)
		}
	}
	return ordered, nil
}

func parseSizes(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		n, err := strconv.Atoi(strings.ReplaceAll(f, "_", ""))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("-mem-sizes: %q is not a positive row count", f)
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil, errors.New("-mem-sizes: no size given (e.g. 10000,100000), or use -skip-mem")
	}
	return out, nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// findSchema resolves the schema path: as given, or, when relative and not
// found, relative to the module root (the nearest parent holding go.mod).
func findSchema(path string) (string, error) {
	if _, err := os.Stat(path); err == nil || filepath.IsAbs(path) {
		return path, err
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("finding schema %s: %w", path, err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			p := filepath.Join(dir, path)
			if _, err := os.Stat(p); err != nil {
				return "", fmt.Errorf("schema %s: not found in the working directory nor in the module root %s", path, dir)
			}
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("schema %s: not found in the working directory and no module root above it", path)
		}
		dir = parent
	}
}

func run(ctx context.Context, o options) (err error) {
	schemaPath, err := findSchema(o.schema)
	if err != nil {
		return err
	}
	schema, err := os.ReadFile(schemaPath)
	if err != nil {
		return fmt.Errorf("reading schema: %w", err)
	}
	if o.orphans.enabled {
		return runOrphans(ctx, o, string(schema))
	}
	if o.s3.enabled {
		return runS3(ctx, o, string(schema))
	}

	b, err := newBench(ctx, o, string(schema))
	if err != nil {
		return err
	}
	defer func() {
		// Clean up even after an interrupt: the run's context is done then.
		if cerr := b.close(context.WithoutCancel(ctx)); cerr != nil && err == nil {
			err = cerr
		}
	}()

	if o.reconcile == "" {
		slog.Warn("no -reconcile binary: the table gets no `reconcile migrate` indexes, so these figures are not comparable with a reconcile run")
	}

	results, err := b.timeAlgorithms(ctx)
	if err != nil {
		return err
	}
	b.printHeader(os.Stdout)
	printTimes(os.Stdout, results, o.runs)

	if !o.skipMem {
		mem, err := b.measureMemory(ctx)
		if err != nil {
			return err
		}
		printMemory(os.Stdout, mem)
	}
	return nil
}
