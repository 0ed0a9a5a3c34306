package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
)

// latency soft-deletes rows at a steady rate and measures, for each, how
// long after its due time the service purged it.
func (b *bench) latency(ctx context.Context) error {
	total := int(float64(b.o.rate) * b.o.duration.Seconds())
	fmt.Fprintf(os.Stderr, "latency: seeding %d rows and their files\n", total)
	ids := make([]string, 0, total)
	rows, err := b.pool.Query(ctx, `
		INSERT INTO forum_attachment (id, image, original_filename, is_active)
		SELECT gen_random_uuid(), 'latency/' || (g / 1000) || '/' || g || '.jpg', 'IMG.jpg', true
		FROM generate_series(1, $1) g
		RETURNING id::text, image`, total)
	if err != nil {
		return err
	}
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

	s, err := b.startService(ctx, "latency", filepath.Join(b.dir, "latency-index.db"),
		"RECONCILE_RETENTION="+b.o.retention.String(), "RECONCILE_LOG_FORMAT=json",
		"RECONCILE_REPLICATION_SLOT=bench_latency")
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "latency: %d soft-deletes a second for %s, retention %s\n", b.o.rate, b.o.duration, b.o.retention)
	const tick = 10 * time.Millisecond
	perTick := max(1, b.o.rate/int(time.Second/tick))
	dueAt := make(map[string]time.Time, total)
	ticker := time.NewTicker(tick)
	for next := 0; next < len(ids); next += perTick {
		<-ticker.C
		batch := ids[next:min(next+perTick, len(ids))]
		rows, err := b.pool.Query(ctx, `
			UPDATE forum_attachment SET is_active = false, deleted_at = now()
			WHERE id = ANY($1::uuid[]) RETURNING id::text, deleted_at`, batch)
		if err != nil {
			ticker.Stop()
			_ = s.stop()
			return err
		}
		var at time.Time
		if _, err := pgx.ForEachRow(rows, []any{&id, &at}, func() error {
			dueAt[id] = at.Add(b.o.retention)
			return nil
		}); err != nil {
			ticker.Stop()
			_ = s.stop()
			return err
		}
	}
	ticker.Stop()
	deadline := time.Now().Add(b.o.retention + time.Minute)
	for {
		var left int
		if err := b.pool.QueryRow(ctx, `SELECT count(*) FROM forum_attachment WHERE image LIKE 'latency/%'`).Scan(&left); err != nil {
			_ = s.stop()
			return err
		}
		if left == 0 {
			break
		}
		if time.Now().After(deadline) {
			_ = s.stop()
			return fmt.Errorf("%d rows not purged a minute after the last was due", left)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := s.stop(); err != nil {
		return err
	}

	late, err := purgeDelays(s.log, dueAt)
	if err != nil {
		return err
	}
	if len(late) != total {
		return fmt.Errorf("found %d purge log lines for %d rows", len(late), total)
	}
	slices.Sort(late)
	pct := func(p float64) time.Duration { return late[min(len(late)-1, int(p*float64(len(late))))] }
	fmt.Printf("\nlatency: %d soft-deletes/s for %s (%d rows, %d per statement), retention %s; purge time - due time\n",
		b.o.rate, b.o.duration, total, perTick, b.o.retention)
	fmt.Printf("  p50 %s  p90 %s  p99 %s  max %s  min %s (target: p99 under 1s)\n",
		pct(0.50).Round(time.Millisecond), pct(0.90).Round(time.Millisecond), pct(0.99).Round(time.Millisecond),
		late[len(late)-1].Round(time.Millisecond), late[0].Round(time.Millisecond))
	return nil
}

// purgeDelays reads the service's JSON log: the time of each purge line
// minus the row's due time.
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
			Time time.Time `json:"time"`
			Msg  string    `json:"msg"`
			ID   string    `json:"id"`
		}
		if json.Unmarshal(sc.Bytes(), &line) != nil || line.Msg != "[CLEANUP] Hard-deleted attachment" {
			continue
		}
		if due, ok := dueAt[line.ID]; ok {
			out = append(out, line.Time.Sub(due))
		}
	}
	return out, sc.Err()
}
