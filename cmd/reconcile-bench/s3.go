package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// The S3 benchmark (-s3): the objects live in a bucket of an S3 server
// (versitygw), and reconcile and the cron algorithm reach it through a
// toxiproxy proxy that delays each direction by -latency, as a network
// would. Seeding and checking go to the server directly.

const (
	// s3Prefix is the prefix the objects are stored under, as
	// django-storages' location; reconcile gets it as its storage prefix.
	s3Prefix = "media/"
	s3Region = "us-east-1"

	// settle is how long the objects are left to age after seeding before
	// anything is timed: the next version of reconcile refuses to remove an
	// object whose LastModified (S3 keeps whole seconds) is not older than
	// the moment its removal was queued.
	settle = 2 * time.Second
)

// S3 benchmark algorithms.
const (
	s3Reconcile = "reconcile"
	s3Derived   = "derived" // reconcile, the rows having imagekit files
	s3Baseline  = "baseline"
	s3Cron      = "cron"
)

// s3Options are the flags of the S3 benchmark.
type s3Options struct {
	enabled   bool
	endpoint  string // the S3 server, host:port
	accessKey string // from TEST_S3_ACCESS_KEY
	secretKey string // from TEST_S3_SECRET_KEY
	toxiproxy string // toxiproxy's API
	accessLog string // the server's access log, to count requests; optional
	latency   time.Duration
	due       int
	cronDue   int
	baseline  string // an older reconcile binary; optional
	derived   bool   // also time reconcile with imagekit files for every row
}

// s3OnlyFlags mean something only with -s3; localOnlyFlags nothing with it.
var (
	s3OnlyFlags    = []string{"s3-endpoint", "toxiproxy", "s3-access-log", "latency", "due", "cron-due", "baseline-reconcile", "derived"}
	localOnlyFlags = []string{"rows", "mem-sizes", "skip-mem", "only"}
)

func (s *s3Options) register(fs *flag.FlagSet) {
	fs.BoolVar(&s.enabled, "s3", false, "time the S3 path instead: reconcile --rescan (and -baseline-reconcile) and the cron job's per-row algorithm, on an S3 server reached through a toxiproxy proxy adding -latency each way (the flags marked -s3 are its own; -runs defaults to 3)")
	fs.StringVar(&s.endpoint, "s3-endpoint", os.Getenv("TEST_S3_ENDPOINT"), "-s3: `host:port` of the S3 server (plain HTTP; default $TEST_S3_ENDPOINT); its keys are read from TEST_S3_ACCESS_KEY and TEST_S3_SECRET_KEY, as scripts/s3.sh exports them")
	fs.StringVar(&s.toxiproxy, "toxiproxy", os.Getenv("TOXIPROXY_URL"), "-s3: `URL` of toxiproxy's API (default $TOXIPROXY_URL, as scripts/toxiproxy.sh exports it)")
	fs.StringVar(&s.accessLog, "s3-access-log", os.Getenv("S3_ACCESS_LOG_FILE"), "-s3: versitygw's access log `file`, to count the S3 requests of each run (default $S3_ACCESS_LOG_FILE; none: not counted)")
	fs.DurationVar(&s.latency, "latency", 10*time.Millisecond, "-s3: latency added to each direction, client to server and back (whole milliseconds)")
	fs.IntVar(&s.due, "due", 1000, "-s3: due rows for reconcile, each with its object; as many rows that are not due (half active, half deleted within the retention) keep theirs")
	fs.IntVar(&s.cronDue, "cron-due", 200, "-s3: due rows for the cron algorithm, which is slow (0: skip it)")
	fs.StringVar(&s.baseline, "baseline-reconcile", "", "-s3: `path` of another reconcile binary (an older build), timed on the same data, alternating with -reconcile run by run")
	fs.BoolVar(&s.derived, "derived", false, "-s3: also time reconcile --rescan on the same rows each having three imagekit files (CACHE/images/<key without ext>/<32 hex>.jpg), configured with table.derived: [imagekit], and print its rows/s against the rows without")
}

// finishS3 checks the flags of the S3 benchmark.
func (o *options) finishS3(fs *flag.FlagSet) error {
	set := make(map[string]bool)
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	for _, name := range localOnlyFlags {
		if set[name] {
			return fmt.Errorf("-%s is for the local benchmark; with -s3 the sizes are -due and -cron-due", name)
		}
	}
	if !set["runs"] {
		o.runs = 3
	}
	if o.runs < 1 {
		return fmt.Errorf("-runs must be at least 1, got %d", o.runs)
	}
	s := &o.s3
	if s.due < 1 {
		return fmt.Errorf("-due must be at least 1, got %d", s.due)
	}
	if s.cronDue < 0 {
		return fmt.Errorf("-cron-due must be 0 (skip) or more, got %d", s.cronDue)
	}
	if s.latency < 0 || s.latency%time.Millisecond != 0 {
		return fmt.Errorf("-latency must be whole milliseconds, 0 or more (toxiproxy's unit), got %s", s.latency)
	}
	if err := s.server(); err != nil {
		return err
	}
	if s.toxiproxy == "" {
		return errors.New("-toxiproxy (or TOXIPROXY_URL) is required with -s3")
	}
	if o.reconcile == "" {
		return errors.New("-reconcile is required with -s3")
	}
	var err error
	if o.reconcile, err = executable("-reconcile", o.reconcile); err != nil {
		return err
	}
	if s.baseline != "" {
		if s.baseline, err = executable("-baseline-reconcile", s.baseline); err != nil {
			return err
		}
	}
	return nil
}

// server checks the S3 server's address and reads its keys.
func (s *s3Options) server() error {
	if s.endpoint == "" {
		return errors.New("-s3-endpoint (or TEST_S3_ENDPOINT) is required with -s3")
	}
	s.accessKey, s.secretKey = os.Getenv("TEST_S3_ACCESS_KEY"), os.Getenv("TEST_S3_SECRET_KEY")
	if s.accessKey == "" || s.secretKey == "" {
		return errors.New("-s3 reads the S3 keys from TEST_S3_ACCESS_KEY and TEST_S3_SECRET_KEY; set both")
	}
	return nil
}

// refuseWithout fails when a flag of the S3 benchmark is given without -s3.
func (s *s3Options) refuseWithout(fs *flag.FlagSet) error {
	var err error
	fs.Visit(func(f *flag.Flag) {
		if err == nil && slices.Contains(s3OnlyFlags, f.Name) {
			err = fmt.Errorf("-%s needs -s3", f.Name)
		}
	})
	return err
}

// s3Dataset returns 2n rows: n due, with as many not due, half of them
// active and half soft-deleted within the retention.
func s3Dataset(n int) *dataset {
	return generate(2*n, func(i int, rng *rand.Rand) (bool, time.Duration) {
		switch i % 4 {
		case 0, 2:
			return true, retention + day + time.Duration(rng.Int64N(int64(59*day)))
		case 1:
			return false, 0
		}
		return true, time.Duration(rng.Int64N(int64(retention - day)))
	})
}

// s3Result is the timings of one algorithm over all runs, with the S3
// requests each run made when they are counted.
type s3Result struct {
	result
	requests []map[string]int
}

type s3Bench struct {
	*bench
	direct    *minio.Client // to the server, not through the proxy
	toxi      *toxiproxy    // nil: no proxy, reconcile reaches the server directly
	proxyName string
	proxyAddr string        // where reconcile reaches the server, host:port: the proxy, or the server itself
	rtt       time.Duration // one request's round trip through the proxy
	bucket    string        // the current seeding's bucket
	buckets   int           // buckets made so far
	storedAt  time.Time     // when the last object of the current seeding was stored
}

func runS3(ctx context.Context, o options, schema string) (err error) {
	b, err := newBench(ctx, o, schema)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := b.close(context.WithoutCancel(ctx)); cerr != nil && err == nil {
			err = cerr
		}
	}()
	s, err := newS3Bench(ctx, b)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := s.close(context.WithoutCancel(ctx)); cerr != nil && err == nil {
			err = cerr
		}
	}()
	results, err := s.timeRuns(ctx)
	if err != nil {
		return err
	}
	s.printReport(os.Stdout, results)
	return nil
}

func s3Client(endpoint string, o s3Options) (*minio.Client, error) {
	c, err := minio.New(endpoint, &minio.Options{
		Creds:  credentials.NewStaticV4(o.accessKey, o.secretKey, ""),
		Region: s3Region, // no location lookup: one request per call
	})
	if err != nil {
		return nil, fmt.Errorf("S3 client for %s: %w", endpoint, err)
	}
	return c, nil
}

// dialS3 reaches the S3 server, which reconcile then reaches directly.
func dialS3(ctx context.Context, b *bench) (*s3Bench, error) {
	o := b.opts.s3
	direct, err := s3Client(o.endpoint, o)
	if err != nil {
		return nil, err
	}
	if _, err := direct.ListBuckets(ctx); err != nil {
		return nil, fmt.Errorf("reaching the S3 server at %s: %w", o.endpoint, err)
	}
	return &s3Bench{bench: b, direct: direct, proxyAddr: o.endpoint}, nil
}

// newS3Bench reaches the S3 server and puts a proxy with the latency in
// front of it.
func newS3Bench(ctx context.Context, b *bench) (*s3Bench, error) {
	o := b.opts.s3
	s, err := dialS3(ctx, b)
	if err != nil {
		return nil, err
	}
	s.toxi, s.proxyName = newToxiproxy(o.toxiproxy), fmt.Sprintf("reconcile-bench-%d", os.Getpid())
	if s.proxyAddr, err = s.toxi.createProxy(ctx, s.proxyName, o.endpoint); err != nil {
		return nil, err
	}
	if err := s.setUp(ctx); err != nil {
		return nil, errors.Join(err, s.toxi.deleteProxy(context.WithoutCancel(ctx), s.proxyName))
	}
	slog.Info("proxy ready", "listen", s.proxyAddr, "upstream", o.endpoint,
		"latency_each_way", o.latency, "round_trip", s.rtt.Round(10*time.Microsecond))
	return s, nil
}

// setUp adds the latency to both directions of the proxy and measures a
// request's round trip through it.
func (s *s3Bench) setUp(ctx context.Context) error {
	if lat := s.opts.s3.latency; lat > 0 {
		for _, stream := range []string{"upstream", "downstream"} {
			if err := s.toxi.addLatency(ctx, s.proxyName, stream, lat); err != nil {
				return err
			}
		}
	}
	proxied, err := s3Client(s.proxyAddr, s.opts.s3)
	if err != nil {
		return err
	}
	var rtts []time.Duration
	for range 5 {
		start := time.Now()
		if _, err := proxied.ListBuckets(ctx); err != nil {
			return fmt.Errorf("a request through the proxy: %w", err)
		}
		rtts = append(rtts, time.Since(start))
	}
	s.rtt = result{times: rtts}.median()
	return nil
}

// close removes the proxy, if any, and the last bucket (unless -keep).
func (s *s3Bench) close(ctx context.Context) error {
	err := s.dropBucket(ctx)
	if s.toxi != nil {
		err = errors.Join(err, s.toxi.deleteProxy(ctx, s.proxyName))
	}
	return err
}

// reconcileEnv is reconcile's storage configuration for ds: the current
// bucket, through the proxy if any; with ds's derived files, the pattern
// that names them.
func (s *s3Bench) reconcileEnv(ds *dataset) []string {
	o := s.opts.s3
	env := []string{
		"RECONCILE_STORAGE_BACKEND=s3",
		"RECONCILE_STORAGE_S3_ENDPOINT=" + s.proxyAddr,
		"RECONCILE_STORAGE_S3_BUCKET=" + s.bucket,
		"RECONCILE_STORAGE_S3_PREFIX=" + s3Prefix,
		"RECONCILE_STORAGE_S3_ACCESS_KEY=" + o.accessKey,
		"RECONCILE_STORAGE_S3_SECRET_KEY=" + o.secretKey,
		"RECONCILE_STORAGE_S3_USE_SSL=false",
		"RECONCILE_STORAGE_S3_REGION=" + s3Region,
	}
	if ds.derived {
		env = append(env, "RECONCILE_TABLE_DERIVED=imagekit")
	}
	return env
}

// timeRuns times each algorithm -runs times on freshly seeded data, in
// forward order on even runs and reverse order on odd ones, so that the
// binaries alternate.
func (s *s3Bench) timeRuns(ctx context.Context) ([]s3Result, error) {
	o := s.opts.s3
	algos := []string{s3Reconcile}
	if o.derived {
		algos = append(algos, s3Derived)
	}
	if o.baseline != "" {
		algos = append(algos, s3Baseline)
	}
	if o.cronDue > 0 {
		algos = append(algos, s3Cron)
	}
	datasets := map[string]*dataset{s3Reconcile: s3Dataset(o.due), s3Baseline: s3Dataset(o.due)}
	if o.derived {
		ds := s3Dataset(o.due)
		ds.derived = true
		datasets[s3Derived] = ds
	}
	if o.cronDue > 0 {
		datasets[s3Cron] = s3Dataset(o.cronDue)
	}
	labels := map[string]string{
		s3Reconcile: "reconcile --rescan",
		s3Derived:   fmt.Sprintf("reconcile --rescan, %d imagekit files a row", len(derivedSpecs)),
		s3Baseline:  "baseline --rescan",
		s3Cron:      "cron per-row (DELETE request, then row)",
	}
	bins := map[string]string{s3Reconcile: s.opts.reconcile, s3Derived: s.opts.reconcile, s3Baseline: o.baseline, s3Cron: s.opts.reconcile}

	results := make(map[string]*s3Result)
	for _, name := range algos {
		results[name] = &s3Result{result: result{algorithm: name, label: labels[name], due: datasets[name].due}}
	}
	for run := range s.opts.runs {
		order := slices.Clone(algos)
		if run%2 == 1 {
			slices.Reverse(order)
		}
		for _, name := range order {
			ds := datasets[name]
			dir := filepath.Join(s.tmp, fmt.Sprintf("run%d-%s", run+1, name))
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return nil, fmt.Errorf("creating run directory: %w", err)
			}
			// Migrated by the binary timed, whose outbox may differ.
			if err := s.seed(ctx, ds, dir, bins[name]); err != nil {
				return nil, fmt.Errorf("seeding for %s: %w", name, err)
			}
			if err := s.settle(ctx); err != nil {
				return nil, err
			}
			mark, err := s.logSize()
			if err != nil {
				return nil, err
			}
			slog.Info("timing", "algorithm", name, "run", run+1, "due", ds.due, "bucket", s.bucket)
			var elapsed time.Duration
			switch name {
			case s3Reconcile, s3Derived, s3Baseline:
				var p processResult
				p, err = s.runReconcile(ctx, bins[name], dir, "rescan", nil, "--rescan")
				elapsed = p.elapsed
			case s3Cron:
				elapsed, err = s.cronPerRow(ctx)
			}
			if err != nil {
				return nil, fmt.Errorf("%s, run %d: %w", name, run+1, err)
			}
			requests, err := s.requestsSince(mark)
			if err != nil {
				return nil, err
			}
			if err := s.verifyS3(ctx, ds); err != nil {
				return nil, fmt.Errorf("%s, run %d, checking the result: %w", name, run+1, err)
			}
			slog.Info("timed", "algorithm", name, "run", run+1, "seconds", elapsed.Seconds(),
				"rows_per_s", int(float64(ds.due)/elapsed.Seconds()), "s3_requests", formatRequests(requests))
			r := results[name]
			r.times = append(r.times, elapsed)
			r.requests = append(r.requests, requests)
		}
	}

	var out []s3Result
	for _, name := range algos {
		out = append(out, *results[name])
	}
	return out, nil
}

// seed gives a fresh database holding ds, migrated by migrateBin, and a
// fresh bucket holding ds's objects.
func (s *s3Bench) seed(ctx context.Context, ds *dataset, dir, migrateBin string) error {
	if err := s.dropBucket(ctx); err != nil {
		return err
	}
	s.buckets++
	name := fmt.Sprintf("reconcile-bench-%d-%d", os.Getpid(), s.buckets)
	if err := s.direct.MakeBucket(ctx, name, minio.MakeBucketOptions{Region: s3Region}); err != nil {
		return fmt.Errorf("creating bucket %s: %w", name, err)
	}
	s.bucket = name
	s.runEnv = s.reconcileEnv(ds)
	return s.seedWith(ctx, ds, dir, migrateBin, func(ctx context.Context) error {
		return s.putObjects(ctx, ds)
	})
}

// putObjects stores every object of ds, a few at a time, straight on the
// server.
func (s *s3Bench) putObjects(ctx context.Context, ds *dataset) error {
	err := eachFile(ctx, ds.files(), func(f storedFile) error {
		_, err := s.direct.PutObject(ctx, s.bucket, s3Prefix+f.key, bytes.NewReader(ds.content[:f.size]),
			int64(f.size), minio.PutObjectOptions{ContentType: "image/jpeg"})
		if err != nil {
			return fmt.Errorf("storing object %s: %w", f.key, err)
		}
		return nil
	})
	s.storedAt = time.Now()
	return err
}

// settle waits until the objects are settle old.
func (s *s3Bench) settle(ctx context.Context) error {
	wait := time.Until(s.storedAt.Add(settle))
	if wait <= 0 {
		return nil
	}
	slog.Info("letting the objects age", "wait", wait.Round(time.Millisecond))
	select {
	case <-time.After(wait):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// listObjects returns the names of the objects in the current bucket.
func (s *s3Bench) listObjects(ctx context.Context) ([]string, error) {
	var names []string
	for obj := range s.direct.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Recursive: true}) {
		if obj.Err != nil {
			return nil, fmt.Errorf("listing bucket %s: %w", s.bucket, obj.Err)
		}
		names = append(names, obj.Key)
	}
	return names, nil
}

// dropBucket empties and removes the current bucket, unless -keep.
func (s *s3Bench) dropBucket(ctx context.Context) error {
	if s.bucket == "" {
		return nil
	}
	if s.opts.keep {
		slog.Info("kept", "bucket", s.bucket)
		s.bucket = ""
		return nil
	}
	names, err := s.listObjects(ctx)
	if err != nil {
		return err
	}
	objects := func(yield func(minio.ObjectInfo) bool) {
		for _, name := range names {
			if !yield(minio.ObjectInfo{Key: name}) {
				return
			}
		}
	}
	results, err := s.direct.RemoveObjectsWithIter(ctx, s.bucket, objects, minio.RemoveObjectsOptions{})
	if err != nil {
		return fmt.Errorf("emptying bucket %s: %w", s.bucket, err)
	}
	for res := range results {
		if res.Err != nil {
			return fmt.Errorf("emptying bucket %s: %s: %w", s.bucket, res.ObjectName, res.Err)
		}
	}
	if err := s.direct.RemoveBucket(ctx, s.bucket); err != nil {
		return fmt.Errorf("removing bucket %s: %w", s.bucket, err)
	}
	s.bucket = ""
	return nil
}

// cronPerRow is the cron job's algorithm on S3: django-storages' delete
// sends one DELETE request per object, through the proxy.
func (s *s3Bench) cronPerRow(ctx context.Context) (time.Duration, error) {
	client, err := s3Client(s.proxyAddr, s.opts.s3) // makes no request
	if err != nil {
		return 0, err
	}
	return s.cronPerRowWith(ctx, func(ctx context.Context, key string) error {
		if err := client.RemoveObject(ctx, s.bucket, s3Prefix+key, minio.RemoveObjectOptions{}); err != nil {
			return fmt.Errorf("removing object: %w", err)
		}
		return nil
	})
}

// verifyS3 is verify with the objects of the current bucket.
func (s *s3Bench) verifyS3(ctx context.Context, ds *dataset) error {
	names, err := s.listObjects(ctx)
	if err != nil {
		return err
	}
	present := make(map[string]bool, len(names))
	for _, name := range names {
		present[strings.TrimPrefix(name, s3Prefix)] = true
	}
	return s.verifyWith(ctx, ds, "objects", func(key string) (bool, error) {
		return present[key], nil
	})
}

// logSize is the size of the server's access log, where the requests of
// what runs next will start (0 when no log is given).
func (s *s3Bench) logSize() (int64, error) {
	if s.opts.s3.accessLog == "" {
		return 0, nil
	}
	info, err := os.Stat(s.opts.s3.accessLog)
	if err != nil {
		return 0, fmt.Errorf("S3 access log: %w", err)
	}
	return info.Size(), nil
}

// requestsSince counts, by operation, the requests the server logged from
// offset on; failed ones (status 300 or more) also count under
// "<operation> failed". Nil when no log is given.
//
// versitygw writes a request's line before it answers, so every request
// of a finished run is there.
func (s *s3Bench) requestsSince(offset int64) (map[string]int, error) {
	if s.opts.s3.accessLog == "" {
		return nil, nil
	}
	f, err := os.Open(s.opts.s3.accessLog)
	if err != nil {
		return nil, fmt.Errorf("S3 access log: %w", err)
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return nil, fmt.Errorf("S3 access log: %w", err)
	}
	counts := make(map[string]int)
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// bucket owner, bucket, [time zone], remote IP, requester,
		// request id, operation, key, request URI, status, ...
		f := strings.Fields(sc.Text())
		if len(f) < 11 || !strings.HasPrefix(f[7], "s3_") {
			continue
		}
		op := strings.TrimPrefix(f[7], "s3_")
		counts[op]++
		if status, err := strconv.Atoi(f[10]); err == nil && status >= 300 {
			counts[op+" failed"]++
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("S3 access log: %w", err)
	}
	return counts, nil
}

// formatRequests writes request counts as "total (Op n, Op n)".
func formatRequests(counts map[string]int) string {
	if counts == nil {
		return "not counted"
	}
	total := 0
	var parts []string
	for _, op := range slices.Sorted(maps.Keys(counts)) {
		if !strings.HasSuffix(op, " failed") {
			total += counts[op]
		}
		parts = append(parts, fmt.Sprintf("%s %d", op, counts[op]))
	}
	return fmt.Sprintf("%d (%s)", total, strings.Join(parts, ", "))
}
