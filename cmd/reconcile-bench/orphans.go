package main

import (
	"bufio"
	"context"
	"encoding/csv"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
)

// The orphan scan's benchmark (-orphans): a table of N rows whose files
// lie in about a thousand day folders under forum/attachments/, beside N/100
// files that no row names, all older than the grace. It times
// `reconcile orphans --dry-run` against a floor made of standard tools, on
// the same files, alternating run by run: the listing sorted in byte order
// (find on local disk; one ListObjectsV2 listing of everything on S3,
// which is in that order already), the table's keys copied out by psql's
// \copy and sorted, and comm -23 of the two. A dry run leaves the files in
// place, so one seeding serves every run of a size. Both results are
// checked against the orphans the dataset holds.

// orphanFloorScript is the floor after the listing: the listing is in
// ./listed; the orphans it finds are left in ./orphans.
const orphanFloorScript = `
"$PSQL" -X -q -v ON_ERROR_STOP=1 "$DATABASE_URL" -c '\copy (SELECT image FROM forum_attachment) TO keys'
LC_ALL=C sort -o keys keys
LC_ALL=C comm -23 listed keys >orphans
`

// orphanLocalListing is the floor's listing of local files.
const orphanLocalListing = `(cd "$ROOT" && find forum/attachments -type f) | LC_ALL=C sort >listed`

// orphanFlags are the flags that mean something with -orphans.
var orphanFlags = []string{"orphans", "orphan-rows", "psql", "s3", "s3-endpoint", "s3-access-log",
	"database-url", "reconcile", "runs", "keep", "schema"}

// orphanOptions are the flags of the orphan scan's benchmark.
type orphanOptions struct {
	enabled bool
	sizes   string
	rows    []int // from sizes
	psql    string
}

func (o *orphanOptions) register(fs *flag.FlagSet) {
	fs.BoolVar(&o.enabled, "orphans", false, "time `reconcile orphans --dry-run` instead, against a floor of find (on S3: one listing), psql's \\copy, sort and comm; local disk, or S3 with -s3 (reached directly, no proxy); -runs defaults to 3")
	fs.StringVar(&o.sizes, "orphan-rows", "", "-orphans: table `sizes`, comma-separated; each gets 1% more files that no row names (default 100000,1000000; with -s3 20000,100000)")
	fs.StringVar(&o.psql, "psql", "psql", "-orphans: the `psql` the floor runs")
}

// finishOrphans checks the flags of the orphan scan's benchmark.
func (o *options) finishOrphans(fs *flag.FlagSet) error {
	var err error
	set := make(map[string]bool)
	fs.Visit(func(f *flag.Flag) {
		set[f.Name] = true
		if err == nil && !slices.Contains(orphanFlags, f.Name) {
			err = fmt.Errorf("-%s means nothing with -orphans", f.Name)
		}
	})
	if err != nil {
		return err
	}
	if !set["runs"] {
		o.runs = 3
	}
	if o.runs < 1 {
		return fmt.Errorf("-runs must be at least 1, got %d", o.runs)
	}
	sizes := o.orphans.sizes
	switch {
	case sizes != "":
	case o.s3.enabled:
		sizes = "20000,100000"
	default:
		sizes = "100000,1000000"
	}
	if o.orphans.rows, err = parseSizes(sizes); err != nil {
		return fmt.Errorf("-orphan-rows: %w", err)
	}
	slices.Sort(o.orphans.rows)
	if o.s3.enabled {
		if err := o.s3.server(); err != nil {
			return err
		}
	}
	if o.reconcile == "" {
		return errors.New("-reconcile is required with -orphans")
	}
	o.reconcile, err = executable("-reconcile", o.reconcile)
	return err
}

// refuseWithout fails when a flag of the orphan scan's benchmark is given
// without -orphans.
func (o *orphanOptions) refuseWithout(fs *flag.FlagSet) error {
	var err error
	fs.Visit(func(f *flag.Flag) {
		if err == nil && (f.Name == "orphan-rows" || f.Name == "psql") {
			err = fmt.Errorf("-%s needs -orphans", f.Name)
		}
	})
	return err
}

// orphanStore is where the dataset's files live: local disk or a bucket.
type orphanStore interface {
	// seed gives a fresh database and storage holding ds.
	seed(ctx context.Context, ds *dataset, dir string) error
	// floorListing does the floor's listing into dir/listed, returning the
	// script that does it, or doing it itself when it returns "".
	floorListing(ctx context.Context, dir string) (string, error)
	describe() string
	// requestsSince counts the requests since mark (none: nil).
	mark() (int64, error)
	requestsSince(mark int64) (map[string]int, error)
}

// localOrphans keeps the files on local disk, under the media root.
type localOrphans struct{ *bench }

func (l localOrphans) seed(ctx context.Context, ds *dataset, dir string) error {
	if err := l.bench.seed(ctx, ds, dir); err != nil {
		return err
	}
	// A file's age counts from its status change too, which writing it
	// just now set whatever its modification time: the grace is cut to let
	// the files count as old, as on S3.
	if !slices.Contains(l.runEnv, orphanGrace) {
		l.runEnv = append(l.runEnv, orphanGrace)
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(1100 * time.Millisecond):
		return nil
	}
}

// orphanGrace is the grace the orphan runs take: their files are as old
// as the dataset.
const orphanGrace = "RECONCILE_ORPHANS_GRACE=1s"

func (l localOrphans) floorListing(context.Context, string) (string, error) {
	return orphanLocalListing, nil
}

func (l localOrphans) describe() string {
	return fmt.Sprintf("local disk, %s, files dated 1 to %d days back, orphans.grace 1s", l.media, orphanFolders)
}

func (l localOrphans) mark() (int64, error) { return 0, nil }

func (l localOrphans) requestsSince(int64) (map[string]int, error) { return nil, nil }

// s3Orphans keeps the files in a bucket, reached directly.
type s3Orphans struct{ *s3Bench }

func (s s3Orphans) seed(ctx context.Context, ds *dataset, dir string) error {
	if err := s.s3Bench.seed(ctx, ds, dir, s.opts.reconcile); err != nil {
		return err
	}
	// An object's time is when it was stored: the grace is cut to let the
	// settled objects count as old.
	s.runEnv = append(s.runEnv, orphanGrace)
	return s.settle(ctx)
}

// floorListing lists the bucket under the table's folder, one
// ListObjectsV2 page after another as reconcile does, into dir/listed.
func (s s3Orphans) floorListing(ctx context.Context, dir string) (string, error) {
	f, err := os.Create(filepath.Join(dir, "listed"))
	if err != nil {
		return "", fmt.Errorf("creating the floor's listing: %w", err)
	}
	defer f.Close()
	w := bufio.NewWriter(f)
	fetchOwner := false
	for obj := range s.direct.ListObjectsIter(ctx, s.bucket, minio.ListObjectsOptions{
		Prefix: s3Prefix + "forum/attachments/", Recursive: true, FetchOwner: &fetchOwner,
	}) {
		if obj.Err != nil {
			return "", fmt.Errorf("floor: listing bucket %s: %w", s.bucket, obj.Err)
		}
		w.WriteString(obj.Key[len(s3Prefix):])
		w.WriteByte('\n')
	}
	if err := w.Flush(); err != nil {
		return "", fmt.Errorf("writing the floor's listing: %w", err)
	}
	return "", f.Close()
}

func (s s3Orphans) describe() string {
	return fmt.Sprintf("S3, versitygw at %s reached directly (no proxy, no added latency), objects %s old or more, orphans.grace 1s",
		s.opts.s3.endpoint, settle)
}

func (s s3Orphans) mark() (int64, error) { return s.logSize() }

// orphanRun is one timed run.
type orphanRun struct {
	elapsed  time.Duration
	mem      memPeaks
	requests map[string]int
}

// orphanResult is the runs of one size.
type orphanResult struct {
	rows, files, orphans int
	reconcile, floor     []orphanRun
}

func runOrphans(ctx context.Context, o options, schema string) (err error) {
	b, err := newBench(ctx, o, schema)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := b.close(context.WithoutCancel(ctx)); cerr != nil && err == nil {
			err = cerr
		}
	}()
	var st orphanStore = localOrphans{b}
	if o.s3.enabled {
		s, err := dialS3(ctx, b)
		if err != nil {
			return err
		}
		defer func() {
			if cerr := s.close(context.WithoutCancel(ctx)); cerr != nil && err == nil {
				err = cerr
			}
		}()
		st = s3Orphans{s}
	}
	var results []orphanResult
	for _, n := range o.orphans.rows {
		res, err := timeOrphans(ctx, b, st, n)
		if err != nil {
			return err
		}
		results = append(results, res)
	}
	printOrphans(os.Stdout, b, st, results)
	return nil
}

// timeOrphans seeds n rows and their files, then times the floor and
// reconcile -runs times each, alternating, checking every result.
func timeOrphans(ctx context.Context, b *bench, st orphanStore, n int) (orphanResult, error) {
	ds := orphanDataset(n)
	files := len(ds.files())
	res := orphanResult{rows: n, files: files, orphans: len(ds.orphans)}
	want := make([]string, 0, len(ds.orphans))
	for _, o := range ds.orphans {
		want = append(want, o.key)
	}
	slices.Sort(want)

	dir := filepath.Join(b.tmp, fmt.Sprintf("orphans-%d", n))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return res, fmt.Errorf("creating run directory: %w", err)
	}
	if err := st.seed(ctx, ds, dir); err != nil {
		return res, fmt.Errorf("seeding %d rows: %w", n, err)
	}
	algos := []string{algoFloor, algoReconcile}
	for run := range b.opts.runs {
		order := slices.Clone(algos)
		if run%2 == 1 {
			slices.Reverse(order)
		}
		for _, name := range order {
			runDir := filepath.Join(dir, fmt.Sprintf("run%d-%s", run+1, name))
			if err := os.MkdirAll(runDir, 0o755); err != nil {
				return res, fmt.Errorf("creating run directory: %w", err)
			}
			mark, err := st.mark()
			if err != nil {
				return res, err
			}
			slog.Info("timing", "algorithm", name, "run", run+1, "files", files)
			var r orphanRun
			switch name {
			case algoFloor:
				r.elapsed, err = orphanFloor(ctx, b, st, runDir, files, want)
			case algoReconcile:
				r, err = orphanReconcile(ctx, b, runDir, files, want)
			}
			if err != nil {
				return res, fmt.Errorf("orphan scan of %d files, %s, run %d: %w", files, name, run+1, err)
			}
			if r.requests, err = st.requestsSince(mark); err != nil {
				return res, err
			}
			slog.Info("timed", "algorithm", name, "run", run+1, "seconds", r.elapsed.Seconds(),
				"files_per_s", int(float64(files)/r.elapsed.Seconds()), "rss_anon", r.mem.rssAnon, "vm_hwm", r.mem.vmHWM)
			if name == algoFloor {
				res.floor = append(res.floor, r)
			} else {
				res.reconcile = append(res.reconcile, r)
			}
		}
	}
	return res, nil
}

// orphanFloor times the floor: the listing, then orphanFloorScript, as one
// sequence. It checks what comm found and how many files were listed.
func orphanFloor(ctx context.Context, b *bench, st orphanStore, dir string, files int, want []string) (time.Duration, error) {
	start := time.Now()
	script, err := st.floorListing(ctx, dir)
	if err != nil {
		return 0, err
	}
	cmd := exec.CommandContext(ctx, "bash", "-c", "set -euo pipefail\n"+script+orphanFloorScript)
	cmd.Env = append(os.Environ(), "ROOT="+b.media, "DATABASE_URL="+b.dbURL, "PSQL="+b.opts.orphans.psql)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	elapsed := time.Since(start)
	if err != nil {
		return 0, fmt.Errorf("floor: %w: %s", err, strings.TrimSpace(string(out)))
	}
	listed, err := readLines(filepath.Join(dir, "listed"))
	if err != nil {
		return 0, err
	}
	if len(listed) != files {
		return 0, fmt.Errorf("floor: listed %d files, the dataset has %d", len(listed), files)
	}
	found, err := readLines(filepath.Join(dir, "orphans"))
	if err != nil {
		return 0, err
	}
	if err := sameKeys("comm", found, want); err != nil {
		return 0, err
	}
	return elapsed, nil
}

// orphanReconcile times `reconcile orphans --dry-run --format csv`, with its
// memory, and checks the orphans in its report and the files it listed.
func orphanReconcile(ctx context.Context, b *bench, dir string, files int, want []string) (orphanRun, error) {
	var r orphanRun
	report := filepath.Join(dir, "orphans.csv")
	p, err := b.runReconcile(ctx, b.opts.reconcile, dir, "orphans", &memSampler{},
		"orphans", "--dry-run", "--format", "csv", "--output", report)
	if err != nil {
		return r, err
	}
	r.elapsed, r.mem = p.elapsed, p.mem

	f, err := os.Open(report)
	if err != nil {
		return r, fmt.Errorf("reading the report: %w", err)
	}
	defer f.Close()
	records, err := csv.NewReader(f).ReadAll()
	if err != nil {
		return r, fmt.Errorf("reading the report: %w", err)
	}
	if len(records) == 0 || records[0][0] != "action" || records[0][1] != "storage_key" {
		return r, fmt.Errorf("the report %s has no csv header (action, storage_key, ...)", report)
	}
	var found []string
	for _, rec := range records[1:] {
		if rec[0] != "would remove" {
			return r, fmt.Errorf("the report says %q of %s, want \"would remove\"", rec[0], rec[1])
		}
		found = append(found, rec[1])
	}
	if err := sameKeys("reconcile", found, want); err != nil {
		return r, err
	}

	// The totals go to stderr, among the log lines.
	lines, err := readLines(filepath.Join(dir, "orphans.stderr.log"))
	if err != nil {
		return r, err
	}
	listed, orphans := -1, -1
	for _, line := range lines {
		if strings.HasPrefix(line, "orphans: ") {
			if _, err := fmt.Sscanf(line, "orphans: %d files listed, %d orphans", &listed, &orphans); err != nil {
				return r, fmt.Errorf("reading the totals %q: %w", line, err)
			}
		}
	}
	if listed != files || orphans != len(want) {
		return r, fmt.Errorf("reconcile's totals: %d files listed and %d orphans, want %d and %d", listed, orphans, files, len(want))
	}
	return r, nil
}

// sameKeys checks that who found exactly the keys of want (sorted).
func sameKeys(who string, found, want []string) error {
	found = slices.Clone(found)
	slices.Sort(found)
	if slices.Equal(found, want) {
		return nil
	}
	const examples = 3
	var extra, missing []string
	i, j := 0, 0
	for i < len(found) || j < len(want) {
		switch {
		case j == len(want) || i < len(found) && found[i] < want[j]:
			extra = append(extra, found[i])
			i++
		case i == len(found) || want[j] < found[i]:
			missing = append(missing, want[j])
			j++
		default:
			i++
			j++
		}
	}
	return fmt.Errorf("%s found %d orphans, the dataset has %d: %d not orphans (e.g. %s), %d orphans missed (e.g. %s)",
		who, len(found), len(want), len(extra), strings.Join(extra[:min(examples, len(extra))], ", "),
		len(missing), strings.Join(missing[:min(examples, len(missing))], ", "))
}

// readLines reads a file's lines.
func readLines(path string) ([]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", filepath.Base(path), err)
	}
	s := strings.TrimSuffix(string(data), "\n")
	if s == "" {
		return nil, nil
	}
	return strings.Split(s, "\n"), nil
}
