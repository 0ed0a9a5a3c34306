package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

const latencySlot = "bench_latency"

// latencyRun is one run of the latency benchmark: percentiles of purge
// time - due time.
type latencyRun struct {
	p50, p90, p99, max, min time.Duration
}

// latency soft-deletes rows at a steady rate and measures, for each, how
// long after its due time the service purged it.
func (b *bench) latency(ctx context.Context) error {
	runs := map[int][]latencyRun{}
	for run := range b.o.runs {
		for _, n := range b.countsOrder(run) {
			r, err := b.latencyRun(ctx, run, n)
			if err != nil {
				return err
			}
			runs[n] = append(runs[n], r)
		}
	}
	ms := func(d time.Duration) string { return d.Round(time.Millisecond).String() }
	total := b.latencyRows()
	for _, n := range b.o.tables {
		statements := "per statement"
		if n > 1 {
			statements += ", each on one table, the tables in turn"
		}
		fmt.Printf("\nlatency: %d soft-deletes/s for %s (%d rows, %d %s), retention %s, %s; purge time - due time (%d runs)\n",
			b.o.rate, b.o.duration, total, b.perTick(), statements, b.o.retention, b.describeTables(n), len(runs[n]))
		fmt.Printf("  %-4s %8s %8s %8s %8s %8s\n", "run", "p50", "p90", "p99", "max", "min")
		for i, r := range runs[n] {
			fmt.Printf("  %-4d %8s %8s %8s %8s %8s\n", i+1, ms(r.p50), ms(r.p90), ms(r.p99), ms(r.max), ms(r.min))
		}
		fmt.Printf("  median p50 %s  p99 %s (target: p99 under 1s)\n", ms(medianLatency(runs[n], p50)), ms(medianLatency(runs[n], p99)))
	}
	if len(b.o.tables) == 1 {
		return nil
	}
	base := b.o.tables[0]
	fmt.Printf("\nlatency, medians of %d runs; x: against %s\n", b.o.runs, b.describeTables(base))
	fmt.Printf("  %-6s %8s %7s %8s %7s\n", "tables", "p50", "x", "p99", "x")
	for _, n := range b.o.tables {
		fmt.Printf("  %-6d", n)
		for _, f := range []func(latencyRun) time.Duration{p50, p99} {
			m := medianLatency(runs[n], f)
			fmt.Printf(" %8s %6.2fx", ms(m), m.Seconds()/medianLatency(runs[base], f).Seconds())
		}
		fmt.Println()
	}
	return nil
}

func p50(r latencyRun) time.Duration { return r.p50 }
func p99(r latencyRun) time.Duration { return r.p99 }

// medianLatency is the median of f over runs.
func medianLatency(runs []latencyRun, f func(latencyRun) time.Duration) time.Duration {
	xs := make([]time.Duration, len(runs))
	for i, r := range runs {
		xs[i] = f(r)
	}
	return median(xs)
}

// latencyRows is how many rows a latency run soft-deletes.
func (b *bench) latencyRows() int { return int(float64(b.o.rate) * b.o.duration.Seconds()) }

const tick = 10 * time.Millisecond

// perTick is how many rows one statement, one a tick, soft-deletes.
func (b *bench) perTick() int { return max(1, b.o.rate/int(time.Second/tick)) }

// batch is the rows of one statement: ids of one table.
type batch struct {
	table string
	ids   []string
}

// latencyRun seeds the first n tables with rows and their files, starts
// the service and soft-deletes the rows a statement a tick, each
// statement on one table, the tables in turn.
func (b *bench) latencyRun(ctx context.Context, run, n int) (latencyRun, error) {
	env, err := b.configure(ctx, n)
	if err != nil {
		return latencyRun{}, err
	}
	total := b.latencyRows()
	fmt.Fprintf(os.Stderr, "latency run %d, %s: seeding %d rows and their files\n", run+1, b.describeTables(n), total)
	if err := b.empty(ctx, n); err != nil {
		return latencyRun{}, err
	}
	var perTable [][]batch
	if err := b.spread(ctx, n, total, func(ctx context.Context, name string, from, to int) error {
		rows, err := b.pool.Query(ctx, `
			INSERT INTO `+name+` (id, image, original_filename, is_active)
			SELECT gen_random_uuid(), 'latency/' || (g / 1000) || '/' || g || '.jpg', 'IMG.jpg', true
			FROM generate_series($1::int, $2::int) g
			RETURNING id::text, image`, from, to)
		if err != nil {
			return err
		}
		var ids []string
		var id, key string
		if _, err := pgx.ForEachRow(rows, []any{&id, &key}, func() error {
			ids = append(ids, id)
			path := filepath.Join(b.media, key)
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				return err
			}
			return os.WriteFile(path, []byte("img"), 0o644)
		}); err != nil {
			return err
		}
		// Statistics, as a live table has: the planner picks its plans
		// for the purge's statements from them.
		if _, err := b.pool.Exec(ctx, `VACUUM ANALYZE `+name); err != nil {
			return err
		}
		var batches []batch
		for chunk := range slices.Chunk(ids, b.perTick()) {
			batches = append(batches, batch{name, chunk})
		}
		perTable = append(perTable, batches)
		return nil
	}); err != nil {
		return latencyRun{}, err
	}
	var batches []batch // a batch of each table in turn
	for i := 0; ; i++ {
		before := len(batches)
		for _, t := range perTable {
			if i < len(t) {
				batches = append(batches, t[i])
			}
		}
		if len(batches) == before {
			break
		}
	}

	indexPath := filepath.Join(b.dir, "latency-index.db")
	_ = os.Remove(indexPath)
	s, err := b.startService(ctx, fmt.Sprintf("latency-%dt-run%d", n, run+1), indexPath, append([]string{
		"RECONCILE_RETENTION=" + b.o.retention.String(), "RECONCILE_LOG_FORMAT=json",
		"RECONCILE_REPLICATION_SLOT=" + latencySlot,
	}, env...)...)
	if err != nil {
		return latencyRun{}, err
	}
	fmt.Fprintf(os.Stderr, "latency run %d, %s: %d soft-deletes a second for %s, retention %s\n",
		run+1, b.describeTables(n), b.o.rate, b.o.duration, b.o.retention)
	dueAt := make(map[string]time.Time, total)
	ticker := time.NewTicker(tick)
	for _, bt := range batches {
		<-ticker.C
		rows, err := b.pool.Query(ctx, `
			UPDATE `+bt.table+` SET is_active = false, deleted_at = now()
			WHERE id = ANY($1::uuid[]) RETURNING id::text, deleted_at`, bt.ids)
		if err != nil {
			ticker.Stop()
			_ = s.stop()
			return latencyRun{}, err
		}
		var id string
		var at time.Time
		if _, err := pgx.ForEachRow(rows, []any{&id, &at}, func() error {
			dueAt[logTable(n, bt.table)+" "+id] = at.Add(b.o.retention)
			return nil
		}); err != nil {
			ticker.Stop()
			_ = s.stop()
			return latencyRun{}, err
		}
	}
	ticker.Stop()
	counts := make([]string, n)
	for i, name := range b.tables[:n] {
		counts[i] = `(SELECT count(*) FROM ` + name + ` WHERE image LIKE 'latency/%')`
	}
	deadline := time.Now().Add(b.o.retention + time.Minute)
	for {
		var left int
		if err := b.pool.QueryRow(ctx, `SELECT `+strings.Join(counts, " + ")).Scan(&left); err != nil {
			_ = s.stop()
			return latencyRun{}, err
		}
		if left == 0 {
			break
		}
		if time.Now().After(deadline) {
			_ = s.stop()
			return latencyRun{}, fmt.Errorf("%d rows not purged a minute after the last was due", left)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := s.stop(); err != nil {
		return latencyRun{}, err
	}

	late, err := purgeDelays(s.log, dueAt)
	if err != nil {
		return latencyRun{}, err
	}
	if len(late) != total {
		return latencyRun{}, fmt.Errorf("found %d purge log lines for %d rows", len(late), total)
	}
	slices.Sort(late)
	pct := func(p float64) time.Duration { return late[min(len(late)-1, int(p*float64(len(late))))] }
	r := latencyRun{p50: pct(0.50), p90: pct(0.90), p99: pct(0.99), max: late[len(late)-1], min: late[0]}
	fmt.Fprintf(os.Stderr, "latency run %d, %s: p50 %s, p99 %s\n", run+1, b.describeTables(n),
		r.p50.Round(time.Millisecond), r.p99.Round(time.Millisecond))
	return r, nil
}

// purgeDelays reads the service's JSON log: the time of each purge line
// minus the due time of its row, which dueAt holds under the line's table
// attribute and id.
func purgeDelays(logPath string, dueAt map[string]time.Time) ([]time.Duration, error) {
	f, err := os.Open(logPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []time.Duration
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var line struct {
			Time  time.Time `json:"time"`
			Msg   string    `json:"msg"`
			Table string    `json:"table"`
			ID    string    `json:"id"`
		}
		if json.Unmarshal(sc.Bytes(), &line) != nil || line.Msg != "[CLEANUP] Hard-deleted attachment" {
			continue
		}
		if due, ok := dueAt[line.Table+" "+line.ID]; ok {
			out = append(out, line.Time.Sub(due))
		}
	}
	return out, sc.Err()
}
