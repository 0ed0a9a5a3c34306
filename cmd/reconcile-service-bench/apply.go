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

	"github.com/reconcile/reconcile/index"
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
	n := b.o.rows
	fmt.Fprintf(os.Stderr, "apply: seeding %d rows\n", n)
	if _, err := b.pool.Exec(ctx, `
		INSERT INTO forum_attachment (id, image, original_filename, is_active)
		SELECT gen_random_uuid(), 'forum/attachments/2025/10/04/' || md5(g::text) || '.jpg', 'IMG_' || g || '.jpg', true
		FROM generate_series(1, $1) g`, n); err != nil {
		return err
	}
	if _, err := b.pool.Exec(ctx, `VACUUM ANALYZE forum_attachment`); err != nil {
		return err
	}
	indexPath := filepath.Join(b.dir, "apply-index.db")
	var runs []applyRun
	for run := range b.o.runs {
		if _, err := b.pool.Exec(ctx, `UPDATE forum_attachment SET is_active = true, deleted_at = NULL WHERE NOT is_active`); err != nil {
			return err
		}
		if err := b.reseed(ctx, n); err != nil {
			return err
		}
		// Both slots start just before the measured transaction: the
		// service's through a start that creates it (and rescans an
		// empty backlog), the floor's directly.
		if _, err := b.pool.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name IN ($1, $2)`, serviceSlot, floorSlot); err != nil {
			return err
		}
		_ = os.Remove(indexPath)
		s, err := b.startService(ctx, "apply-setup", indexPath)
		if err != nil {
			return err
		}
		if err := s.stop(); err != nil {
			return err
		}
		if _, err := b.pool.Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, floorSlot); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "apply run %d: %d rows %s in %s\n", run+1, n, b.verb(), b.txDescription())
		var start, end pglogrepl.LSN
		if err := b.pool.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&start); err != nil {
			return err
		}
		if err := b.change(ctx); err != nil {
			return err
		}
		if err := b.pool.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&end); err != nil {
			return err
		}

		r := applyRun{walBytes: int64(end - start)}
		steps := []func() error{
			func() (err error) { r.service, r.peakHeapMiB, err = b.timeService(ctx, indexPath, end); return err },
			func() (err error) { r.floor, err = b.timeFloor(ctx, end); return err },
		}
		if run%2 == 1 {
			slices.Reverse(steps)
		}
		for _, step := range steps {
			if err := step(); err != nil {
				return err
			}
		}
		if r.entries, r.indexBytes, err = indexSize(indexPath); err != nil {
			return err
		}
		if want := b.wantEntries(n); r.entries != want {
			return fmt.Errorf("the index holds %d entries; want %d", r.entries, want)
		}
		fmt.Fprintf(os.Stderr, "apply run %d: reconcile %s, pg_recvlogical %s\n", run+1, r.service.Round(time.Millisecond), r.floor.Round(time.Millisecond))
		runs = append(runs, r)
	}

	// Leave nothing behind for the next benchmark: no slot holding WAL, no
	// backlog due.
	if _, err := b.pool.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name IN ($1, $2)`, serviceSlot, floorSlot); err != nil {
		return err
	}
	if _, err := b.pool.Exec(ctx, `TRUNCATE forum_attachment`); err != nil {
		return err
	}

	fmt.Printf("\napply: %d rows %s in %s (replica identity %s); from the start of the stream until the last commit is acknowledged (%d runs)\n",
		n, b.verb(), b.txDescription(), b.identity(ctx), len(runs))
	fmt.Printf("  %-4s %12s %16s %8s %14s %12s %12s\n", "run", "reconcile", "pg_recvlogical", "ratio", "peak heap", "index B/row", "WAL B/row")
	var ratios []float64
	for i, r := range runs {
		ratio := r.service.Seconds() / r.floor.Seconds()
		ratios = append(ratios, ratio)
		perRow := "-" // deleted rows leave no entry
		if r.entries > 0 {
			perRow = fmt.Sprint(r.indexBytes / int64(r.entries))
		}
		fmt.Printf("  %-4d %11.2fs %15.2fs %7.2fx %10d MiB %12s %12d\n", i+1, r.service.Seconds(), r.floor.Seconds(), ratio,
			r.peakHeapMiB, perRow, r.walBytes/int64(n))
	}
	slices.Sort(ratios)
	fmt.Printf("  median ratio reconcile/pg_recvlogical: %.2fx (target: 1.5x at most)\n", ratios[len(ratios)/2])
	return nil
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

// reseed puts back the rows a run deleted outright, and empties the outbox
// the service filled with their keys.
func (b *bench) reseed(ctx context.Context, n int) error {
	if !b.o.deletes {
		return nil
	}
	for _, sql := range []string{
		`TRUNCATE reconcile_forum_attachment_outbox`,
		`INSERT INTO forum_attachment (id, image, original_filename, is_active)
		 SELECT gen_random_uuid(), 'forum/attachments/2025/10/04/' || md5(g::text) || '.jpg', 'IMG_' || g || '.jpg', true
		 FROM generate_series(1, ` + fmt.Sprint(n) + `) g
		 WHERE NOT EXISTS (SELECT 1 FROM forum_attachment)`,
		`VACUUM ANALYZE forum_attachment`,
	} {
		if _, err := b.pool.Exec(ctx, sql); err != nil {
			return err
		}
	}
	return nil
}

// change makes the measured change: soft-deletes, or deletes outright.
func (b *bench) change(ctx context.Context) error {
	if b.o.deletes {
		return b.deleteAll(ctx)
	}
	return b.softDeleteAll(ctx)
}

// deleteAll deletes every row outright, as softDeleteAll soft-deletes them.
func (b *bench) deleteAll(ctx context.Context) error {
	if b.o.txRows == 0 {
		_, err := b.pool.Exec(ctx, `DELETE FROM forum_attachment`)
		return err
	}
	for {
		tag, err := b.pool.Exec(ctx, `
			DELETE FROM forum_attachment
			WHERE ctid = ANY (ARRAY(SELECT ctid FROM forum_attachment LIMIT $1))`, b.o.txRows)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return nil
		}
	}
}

func (b *bench) txDescription() string {
	if b.o.txRows == 0 || b.o.txRows >= b.o.rows {
		return "one transaction"
	}
	return fmt.Sprintf("transactions of %d rows", b.o.txRows)
}

// softDeleteAll soft-deletes every row, in one transaction or in
// transactions of -tx-rows, taking the table's pages in order.
func (b *bench) softDeleteAll(ctx context.Context) error {
	if b.o.txRows == 0 {
		_, err := b.pool.Exec(ctx, `UPDATE forum_attachment SET is_active = false, deleted_at = now()`)
		return err
	}
	for {
		tag, err := b.pool.Exec(ctx, `
			UPDATE forum_attachment SET is_active = false, deleted_at = now()
			WHERE ctid = ANY (ARRAY(SELECT ctid FROM forum_attachment WHERE is_active LIMIT $1))`, b.o.txRows)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return nil
		}
	}
}

// timeService starts the service on the slot it already has and times it
// until the slot confirms end; it returns the peak Go heap it went through.
func (b *bench) timeService(ctx context.Context, indexPath string, end pglogrepl.LSN) (time.Duration, int, error) {
	start := time.Now()
	s, err := b.startService(ctx, "apply", indexPath, "GODEBUG=gctrace=1")
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
		"-o", "proto_version=1", "-o", "publication_names=reconcile_attachments",
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

func indexSize(path string) (int, int64, error) {
	st, err := os.Stat(path)
	if err != nil {
		return 0, 0, err
	}
	x, err := index.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer x.Close()
	n := 0
	var from index.Position
	for {
		page, next, err := x.Due(from, time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC), 100_000)
		if err != nil {
			return 0, 0, err
		}
		n += len(page)
		if next == nil {
			return n, st.Size(), nil
		}
		from = next
	}
}
