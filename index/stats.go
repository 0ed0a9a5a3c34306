package index

import (
	"bytes"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Stats are the index's figures for `reconcile status` and the metrics.
type Stats struct {
	Rows     int       // entries
	Due      int       // entries deleted at or before the cutoff
	Overdue  int       // entries deleted at or before the overdue cutoff
	Earliest time.Time // the earliest deleted_at; zero when the index is empty
}

// Stats counts the entries of every table, and those deleted at or before
// cutoff and overdueCutoff (the earlier of the two). The due counts walk
// due order from its start, so they cost a step per due entry: the
// backlog, not the index.
func (x *Index) Stats(cutoff, overdueCutoff time.Time) (Stats, error) {
	return x.stats(nil, cutoff, overdueCutoff)
}

// stats is Stats of the named table, or of every table when table is nil.
func (x *Index) stats(table *string, cutoff, overdueCutoff time.Time) (Stats, error) {
	var st Stats
	dueEnd, overdueEnd := encodeTime(cutoff), encodeTime(overdueCutoff)
	err := x.view(func(tx *bolt.Tx) error {
		for _, tb := range readTables(tx, table) {
			// Counted from the pages' headers, not entry by entry.
			st.Rows += tb.entries.Stats().KeyN
			c := tb.due.Cursor()
			k, _ := c.First()
			if k != nil && (st.Earliest.IsZero() || decodeTime(k[:8]).Before(st.Earliest)) {
				st.Earliest = decodeTime(k[:8])
			}
			for ; k != nil && bytes.Compare(k[:8], dueEnd) <= 0; k, _ = c.Next() {
				st.Due++
				if bytes.Compare(k[:8], overdueEnd) <= 0 {
					st.Overdue++
				}
			}
		}
		return nil
	})
	if err != nil {
		return Stats{}, fmt.Errorf("count index entries: %w", err)
	}
	return st, nil
}

// Swept records when the timer last finished a sweep. It is kept across
// rescans: it tells that the purge runs, not what the index holds.
func (x *Index) Swept(at time.Time) error {
	err := x.update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(keySwept, encodeTime(at))
	})
	if err != nil {
		return fmt.Errorf("record sweep in index: %w", err)
	}
	return nil
}
