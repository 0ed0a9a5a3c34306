package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pglogrepl"
	bolt "go.etcd.io/bbolt"
)

const (
	serviceSlot = "reconcile_attachments" // the service's default
	floorSlot   = "bench_floor"
)

// applyRun is one run of the apply benchmark.
type applyRun struct {
	service, floor time.Duration
	peakHeapMiB    int
	entries        int
	indexBytes     int64
	walBytes       int64 // written by the measured change
}

func (b *bench) apply(ctx context.Context) error {
	runs := map[int][]applyRun{}
	for run := range b.o.runs {
		for _, n := range b.countsOrder(run) {
			r, err := b.applyRun(ctx, run, n)
			if err != nil {
				return err
			}
			runs[n] = append(runs[n], r)
		}
	}

	// Leave nothing behind for the next benchmark: no slot holding WAL, no
	// backlog due.
	if err := b.dropSlots(ctx); err != nil {
		return err
	}
	if err := b.empty(ctx, 0); err != nil {
		return err
	}

	for _, n := range b.o.tables {
		fmt.Printf("\napply: %d rows %s in %s (replica identity %s), %s; from the start of the stream until the last commit is acknowledged (%d runs)\n",
			b.o.rows, b.verb(), b.txDescription(n), b.identity(ctx), b.describeTables(n), len(runs[n]))
		fmt.Printf("  %-4s %12s %16s %8s %14s %12s %12s\n", "run", "reconcile", "pg_recvlogical", "ratio", "peak heap", "index B/row", "WAL B/row")
		for i, r := range runs[n] {
			perRow := "-" // deleted rows leave no entry
			if r.entries > 0 {
				perRow = fmt.Sprint(r.indexBytes / int64(r.entries))
			}
			fmt.Printf("  %-4d %11.2fs %15.2fs %7.2fx %10d MiB %12s %12d\n", i+1, r.service.Seconds(), r.floor.Seconds(), r.ratio(),
				r.peakHeapMiB, perRow, r.walBytes/int64(b.o.rows))
		}
		fmt.Printf("  median ratio reconcile/pg_recvlogical: %.2fx (target: 1.5x at most)\n", medianOf(runs[n], applyRun.ratio))
	}
	if len(b.o.tables) == 1 {
		return nil
	}
	base := b.o.tables[0]
	fmt.Printf("\napply, medians of %d runs; x: against %s\n", b.o.runs, b.describeTables(base))
	fmt.Printf("  %-6s %12s %7s %16s %7s %8s %7s\n", "tables", "reconcile", "x", "pg_recvlogical", "x", "ratio", "x")
	figures := []func(applyRun) float64{applyRun.serviceSeconds, applyRun.floorSeconds, applyRun.ratio}
	for _, n := range b.o.tables {
		fmt.Printf("  %-6d", n)
		for i, f := range figures {
			m := medianOf(runs[n], f)
			unit := "s"
			if i == 2 {
				unit = "x"
			}
			fmt.Printf(" %*.2f%s %6.2fx", []int{11, 15, 7}[i], m, unit, m/medianOf(runs[base], f))
		}
		fmt.Println()
	}
	fmt.Println("  (target: reconcile with three tables within 1.2x of one table)")
	return nil
}

func (r applyRun) serviceSeconds() float64 { return r.service.Seconds() }
func (r applyRun) floorSeconds() float64   { return r.floor.Seconds() }
func (r applyRun) ratio() float64          { return r.service.Seconds() / r.floor.Seconds() }

// medianOf is the median of f over runs.
func medianOf(runs []applyRun, f func(applyRun) float64) float64 {
	xs := make([]float64, len(runs))
	for i, r := range runs {
		xs[i] = f(r)
	}
	return median(xs)
}

// applyRun seeds the first n tables, readies the service's slot and the
// floor's, makes the measured change and times the service and the floor
// on it, in an order that alternates with run.
func (b *bench) applyRun(ctx context.Context, run, n int) (applyRun, error) {
	env, err := b.configure(ctx, n)
	if err != nil {
		return applyRun{}, err
	}
	fmt.Fprintf(os.Stderr, "apply run %d, %s: seeding %d rows\n", run+1, b.describeTables(n), b.o.rows)
	if err := b.empty(ctx, n); err != nil {
		return applyRun{}, err
	}
	if err := b.spread(ctx, n, b.o.rows, func(ctx context.Context, name string, from, to int) error {
		if _, err := b.pool.Exec(ctx, `
			INSERT INTO `+name+` (id, image, original_filename, is_active)
			SELECT gen_random_uuid(), 'forum/attachments/2025/10/04/' || md5(g::text) || '.jpg', 'IMG_' || g || '.jpg', true
			FROM generate_series($1::int, $2::int) g`, from, to); err != nil {
			return err
		}
		_, err := b.pool.Exec(ctx, `VACUUM ANALYZE `+name)
		return err
	}); err != nil {
		return applyRun{}, err
	}
	// Both slots start just before the measured transactions: the
	// service's through a start that creates it (and rescans an empty
	// backlog), the floor's directly.
	indexPath := filepath.Join(b.dir, "apply-index.db")
	_ = os.Remove(indexPath)
	name := fmt.Sprintf("apply-%dt-run%d", n, run+1) // the logs' names, kept with -keep
	s, err := b.startService(ctx, name+"-setup", indexPath, env...)
	if err != nil {
		return applyRun{}, err
	}
	if err := s.stop(); err != nil {
		return applyRun{}, err
	}
	if _, err := b.pool.Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, floorSlot); err != nil {
		return applyRun{}, err
	}
	fmt.Fprintf(os.Stderr, "apply run %d, %s: %d rows %s in %s\n", run+1, b.describeTables(n), b.o.rows, b.verb(), b.txDescription(n))
	var start, end pglogrepl.LSN
	if err := b.pool.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&start); err != nil {
		return applyRun{}, err
	}
	if err := b.change(ctx, n); err != nil {
		return applyRun{}, err
	}
	if err := b.pool.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&end); err != nil {
		return applyRun{}, err
	}

	r := applyRun{walBytes: int64(end - start)}
	steps := []func() error{
		func() (err error) {
			r.service, r.peakHeapMiB, err = b.timeService(ctx, name, indexPath, end, env)
			return err
		},
		func() (err error) { r.floor, err = b.timeFloor(ctx, end); return err },
	}
	if run%2 == 1 {
		slices.Reverse(steps)
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return applyRun{}, err
		}
	}
	if r.entries, r.indexBytes, err = indexSize(indexPath); err != nil {
		return applyRun{}, err
	}
	if want := b.wantEntries(b.o.rows); r.entries != want {
		return applyRun{}, fmt.Errorf("the index holds %d entries; want %d", r.entries, want)
	}
	fmt.Fprintf(os.Stderr, "apply run %d, %s: reconcile %s, pg_recvlogical %s\n", run+1, b.describeTables(n),
		r.service.Round(time.Millisecond), r.floor.Round(time.Millisecond))
	return r, nil
}

// verb says what the measured change does to the rows.
func (b *bench) verb() string {
	if b.o.deletes {
		return "deleted outright"
	}
	return "soft-deleted"
}

// wantEntries is what the index holds once the change is applied.
func (b *bench) wantEntries(n int) int {
	if b.o.deletes {
		return 0
	}
	return n
}

// identity is the table's replica identity, as the catalog says.
func (b *bench) identity(ctx context.Context) string {
	var id string
	if err := b.pool.QueryRow(ctx, `SELECT CASE relreplident WHEN 'f' THEN 'full' WHEN 'd' THEN 'default' ELSE relreplident::text END FROM pg_class WHERE oid = 'forum_attachment'::regclass`).Scan(&id); err != nil {
		return "unknown"
	}
	return id
}

// change makes the measured change on the first n tables: soft-deletes,
// or deletes outright, every row.
func (b *bench) change(ctx context.Context, n int) error {
	if b.o.deletes {
		return b.deleteAll(ctx, n)
	}
	return b.softDeleteAll(ctx, n)
}

// deleteAll deletes every row outright, as softDeleteAll soft-deletes them.
func (b *bench) deleteAll(ctx context.Context, n int) error {
	if b.o.txRows == 0 {
		return b.inOne(ctx, n, func(name string) string { return `DELETE FROM ` + name })
	}
	return b.inTurn(ctx, n, b.o.rows, func(name string) string {
		return `DELETE FROM ` + name + ` WHERE ctid = ANY (ARRAY(SELECT ctid FROM ` + name + ` LIMIT $1))`
	})
}

func (b *bench) txDescription(n int) string {
	whole := b.o.txRows == 0 || b.o.txRows >= share(b.o.rows, n, 0)
	switch {
	case whole && n == 1:
		return "one transaction"
	case b.o.txRows == 0:
		return "one transaction over the tables"
	case whole:
		return "one transaction on each table, the tables in turn"
	case n == 1:
		return fmt.Sprintf("transactions of %d rows", b.o.txRows)
	}
	return fmt.Sprintf("transactions of %d rows, each on one table, the tables in turn", b.o.txRows)
}

// softDeleteAll soft-deletes every row of the first n tables, in one
// transaction or in transactions of -tx-rows, taking each table's pages in
// order.
func (b *bench) softDeleteAll(ctx context.Context, n int) error {
	const set = ` SET is_active = false, deleted_at = now()`
	if b.o.txRows == 0 {
		return b.inOne(ctx, n, func(name string) string { return `UPDATE ` + name + set })
	}
	return b.inTurn(ctx, n, b.o.rows, func(name string) string {
		return `UPDATE ` + name + set + ` WHERE ctid = ANY (ARRAY(SELECT ctid FROM ` + name + ` WHERE is_active LIMIT $1))`
	})
}

// timeService starts the service on the slot it already has and times it
// until the slot confirms end; it returns the peak Go heap it went through.
func (b *bench) timeService(ctx context.Context, name, indexPath string, end pglogrepl.LSN, env []string) (time.Duration, int, error) {
	start := time.Now()
	s, err := b.startService(ctx, name, indexPath, append([]string{"GODEBUG=gctrace=1"}, env...)...)
	if err != nil {
		return 0, 0, err
	}
	for {
		var flushed pglogrepl.LSN
		err := b.pool.QueryRow(ctx, `SELECT coalesce(confirmed_flush_lsn, '0/0')::text FROM pg_replication_slots WHERE slot_name = $1`, serviceSlot).Scan(&flushed)
		if err != nil {
			_ = s.stop()
			return 0, 0, err
		}
		if flushed >= end {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	took := time.Since(start)
	if err := s.stop(); err != nil {
		return 0, 0, err
	}
	peak, err := peakHeap(s.log)
	return took, peak, err
}

// timeFloor times pg_recvlogical receiving the same changes into /dev/null.
func (b *bench) timeFloor(ctx context.Context, end pglogrepl.LSN) (time.Duration, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(b.o.pgBin, "pg_recvlogical"),
		"-d", b.url, "--slot", floorSlot, "--start", "--no-loop",
		"-o", "proto_version=1", "-o", "publication_names="+publication,
		"-E", end.String(), "-f", "/dev/null")
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("pg_recvlogical: %w\n%s", err, out)
	}
	return time.Since(start), nil
}

// gcLine matches the heap sizes of a gctrace line: at start -> at end ->
// live, in MB (2^20 bytes).
var gcLine = regexp.MustCompile(`, (\d+)->(\d+)->(\d+) MB,`)

func peakHeap(logPath string) (int, error) {
	f, err := os.Open(logPath)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	peak := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if m := gcLine.FindStringSubmatch(sc.Text()); m != nil {
			for _, v := range m[1:] {
				if n, _ := strconv.Atoi(v); n > peak {
					peak = n
				}
			}
		}
	}
	return peak, sc.Err()
}

// indexSize counts the entries of the index at path, from its bbolt file:
// an older binary (-reconcile) writes the layout of its time, whose one
// table's entries bucket is at the top, and which index.Open would empty.
func indexSize(path string) (int, int64, error) {
	st, err := os.Stat(path)
	if err != nil {
		return 0, 0, err
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 10 * time.Second})
	if err != nil {
		return 0, 0, err
	}
	defer db.Close()
	n := 0
	count := func(b *bolt.Bucket) {
		if b != nil {
			n += b.Stats().KeyN
		}
	}
	err = db.View(func(tx *bolt.Tx) error {
		entries := []byte("entries")
		count(tx.Bucket(entries)) // one table, before tables: existed
		all := tx.Bucket([]byte("tables"))
		if all == nil {
			return nil
		}
		return all.ForEachBucket(func(name []byte) error {
			count(all.Bucket(name).Bucket(entries))
			return nil
		})
	})
	return n, st.Size(), err
}
