package main

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

const publication = "reconcile_attachments" // the service's default

// describeTables names the first n tables, for the output.
func (b *bench) describeTables(n int) string {
	if n == 1 {
		return "1 table (" + b.tables[0] + ", the table: section)"
	}
	return fmt.Sprintf("%d tables (%s, in tables:)", n, strings.Join(b.tables[:n], ", "))
}

// tablesEnv is the service's configuration of the first n tables. One
// table is left to the table: section's defaults, as before tables:
// existed, so that an older binary serves it alike.
func (b *bench) tablesEnv(n int) ([]string, error) {
	if n == 1 {
		return nil, nil
	}
	list := make([]map[string]string, n)
	for i, name := range b.tables[:n] {
		list[i] = map[string]string{"name": name}
	}
	text, err := json.Marshal(list)
	if err != nil {
		return nil, err
	}
	return []string{"RECONCILE_TABLES=" + string(text)}, nil
}

// logTable is the table attribute of the service's log lines for a row of
// the table name when it serves n tables: none with one.
func logTable(n int, name string) string {
	if n == 1 {
		return ""
	}
	return "public." + name
}

// configure readies the database for the service over the first n tables
// and returns the service's environment for them: no slot is left from an
// earlier run, `reconcile migrate` makes the publication of exactly these
// tables (a fresh one, as the service drops none it does not know), and
// the tables get the replica identity -identity asks for.
func (b *bench) configure(ctx context.Context, n int) ([]string, error) {
	env, err := b.tablesEnv(n)
	if err != nil {
		return nil, err
	}
	if err := b.dropSlots(ctx); err != nil {
		return nil, err
	}
	if _, err := b.pool.Exec(ctx, `DROP PUBLICATION IF EXISTS `+publication); err != nil {
		return nil, err
	}
	cmd := b.reconcileCmd(ctx, filepath.Join(b.dir, "migrate-index.db"), "migrate")
	cmd.Env = append(cmd.Env, env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("reconcile migrate: %w\n%s", err, out)
	}
	if b.o.identity != "" {
		for _, name := range b.tables[:n] {
			if _, err := b.pool.Exec(ctx, `ALTER TABLE `+name+` REPLICA IDENTITY `+strings.ToUpper(b.o.identity)); err != nil {
				return nil, err
			}
		}
	}
	return env, nil
}

// dropSlots drops the benchmark's slots. A stopped service's walsender
// may hold its slot a moment longer: it is waited for.
func (b *bench) dropSlots(ctx context.Context) error {
	slots := []string{serviceSlot, floorSlot, latencySlot}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		var active bool
		err := b.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = ANY ($1) AND active)`, slots).Scan(&active)
		if err != nil {
			return err
		}
		if !active {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("a slot of %s is still in use 10s after its reader stopped", strings.Join(slots, ", "))
		}
	}
	_, err := b.pool.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = ANY ($1)`, slots)
	return err
}

// empty empties every table, and the outboxes of the first n (which
// migrate made).
func (b *bench) empty(ctx context.Context, n int) error {
	names := slices.Clone(b.tables)
	for _, name := range b.tables[:n] {
		names = append(names, "reconcile_"+name+"_outbox")
	}
	_, err := b.pool.Exec(ctx, `TRUNCATE `+strings.Join(names, ", "))
	return err
}

// share is the part of total that falls to table i of n: the same to
// each, the first ones taking one more when it does not divide.
func share(total, n, i int) int {
	s := total / n
	if i < total%n {
		s++
	}
	return s
}

// spread runs insert on each of the first n tables with its share of
// total rows: the numbers from, to (inclusive) of its rows, which are
// distinct across the tables, so no two rows share a file.
func (b *bench) spread(ctx context.Context, n, total int, insert func(ctx context.Context, name string, from, to int) error) error {
	next := 1
	for i, name := range b.tables[:n] {
		count := share(total, n, i)
		if err := insert(ctx, name, next, next+count-1); err != nil {
			return err
		}
		next += count
	}
	return nil
}

// inTurn runs sql on each of the first n tables in turn, a transaction of
// -tx-rows rows ($1) at a time, as an app whose tables each change on
// their own does, until each has changed its share of total rows. Nothing
// follows the last change: a statement that finds no row to change may
// still write WAL (pruning pages), past the last commit, which the
// service confirms only at its next status report, up to
// replication.status_interval later.
func (b *bench) inTurn(ctx context.Context, n, total int, sql func(name string) string) error {
	left := make([]int, n)
	for i := range left {
		left[i] = share(total, n, i)
	}
	for more := true; more; {
		more = false
		for i, name := range b.tables[:n] {
			if left[i] == 0 {
				continue
			}
			k := min(left[i], b.o.txRows)
			tag, err := b.pool.Exec(ctx, sql(name), k)
			if err != nil {
				return err
			}
			if tag.RowsAffected() != int64(k) {
				return fmt.Errorf("%s: %d rows changed; want %d", name, tag.RowsAffected(), k)
			}
			left[i] -= k
			more = more || left[i] > 0
		}
	}
	return nil
}

// inOne runs sql on each of the first n tables in one transaction.
func (b *bench) inOne(ctx context.Context, n int, sql func(name string) string) error {
	return pgx.BeginFunc(ctx, b.pool, func(tx pgx.Tx) error {
		for _, name := range b.tables[:n] {
			if _, err := tx.Exec(ctx, sql(name)); err != nil {
				return err
			}
		}
		return nil
	})
}

func median[T time.Duration | float64](xs []T) T {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

// countsOrder is the order of -tables in run: reversed every other run,
// so that no count always comes first.
func (b *bench) countsOrder(run int) []int {
	counts := slices.Clone(b.o.tables)
	if run%2 == 1 {
		slices.Reverse(counts)
	}
	return counts
}
