package replication

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// Querier is what Slot needs of a connection; *pgxpool.Pool and *pgx.Conn
// have it.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// SlotInfo is the state of a replication slot on the server, for status and
// metrics.
type SlotInfo struct {
	Exists    bool
	Active    bool   // a walsender streams from it
	ActivePID int    // that walsender's pid; 0 while inactive
	WALStatus string // reserved, extended, unreserved or lost
	// RetainedBytes is the WAL the slot keeps on the server: from its
	// restart_lsn to the server's current WAL position.
	RetainedBytes int64
	// LagBytes is the WAL the consumer has not confirmed: from the slot's
	// confirmed_flush_lsn to the current position.
	LagBytes int64
	// SafeWALSize is how much more WAL the server may write before the
	// slot is in danger of losing WAL it needs; nil when
	// max_slot_wal_keep_size is unlimited, or the slot lost WAL already.
	SafeWALSize *int64
	// MaxSlotWALKeepSize is the server's max_slot_wal_keep_size in bytes;
	// -1 is unlimited.
	MaxSlotWALKeepSize int64
}

// slotQuery reads a slot, and the server's limit, in one statement: the
// LEFT JOIN gives a row when the slot does not exist. pg_current_wal_lsn
// fails on a standby; the service runs against the primary.
const slotQuery = `
	SELECT s.slot_name IS NOT NULL, coalesce(s.active, false), coalesce(s.active_pid, 0), coalesce(s.wal_status, ''),
	       coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn), 0)::int8,
	       coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn), 0)::int8,
	       s.safe_wal_size,
	       pg_size_bytes(current_setting('max_slot_wal_keep_size'))
	FROM (SELECT 1) one
	LEFT JOIN pg_replication_slots s ON s.slot_name = $1`

// Slot reads the state of the replication slot name.
func Slot(ctx context.Context, q Querier, name string) (SlotInfo, error) {
	var s SlotInfo
	err := q.QueryRow(ctx, slotQuery, name).Scan(&s.Exists, &s.Active, &s.ActivePID, &s.WALStatus,
		&s.RetainedBytes, &s.LagBytes, &s.SafeWALSize, &s.MaxSlotWALKeepSize)
	if err != nil {
		return SlotInfo{}, fmt.Errorf("read replication slot %q: %w", name, err)
	}
	return s, nil
}
