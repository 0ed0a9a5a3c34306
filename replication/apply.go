package replication

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/reconcile/reconcile/index"
)

// applier brings the row changes of one connection into the index: in
// chunks, each with the checkpoint of the last whole transaction it holds.
// It hands the rows deleted outright over before the index records a
// position past them, and rebuilds the index instead where a rescan is
// cheaper (a large transaction) or the only way (a TRUNCATE).
type applier struct {
	idx      Index
	rescan   RescanFunc
	deliver  func(ctx context.Context, rows []DeletedRow) error // Config.Deleted
	observer Observer
	log      *slog.Logger
	ack      *acker
	origin   string
	// statusEvery is how often the server hears the old position while a
	// rescan is waited for.
	statusEvery time.Duration

	ctx         context.Context // the run's: deliver's and the rescans'
	pending     []index.Change  // not yet in the index
	deleted     []DeletedRow    // rows deleted outright, not yet handed over
	txAt        time.Time       // commit time of the transaction being received
	txChanges   int             // row changes of the configured tables in it
	skipping    bool            // the transaction is too large to apply: a rescan covers it
	truncated   bool            // the transaction truncated a table: rescan at its commit
	rescanning  chan error      // a rescan running in the background, when not nil
	stopRescan  context.CancelFunc
	rescannedAt time.Time
	seenAt      time.Time // commit time of the last whole transaction seen, or a heartbeat's time after it
	flushAt     time.Time // when the pending changes are due in the index; zero: nothing waits
}

func (a *applier) begin(at time.Time) {
	a.txChanges, a.txAt = 0, at
}

// row takes the changes of one row message.
func (a *applier) row(m message) error {
	if err := a.noteDeleted(m.deleted); err != nil {
		return err
	}
	if a.skipping {
		return nil
	}
	if a.txChanges++; a.txChanges > rescanOver {
		// The server sends a transaction only once it has committed: the
		// tables already hold all of it, and a rescan can start now,
		// while the rest of it is received and dropped.
		a.skipping = true
		if a.rescanning == nil {
			a.startRescan(fmt.Sprintf("a transaction changes more than %d rows", rescanOver), RescanLargeTransaction)
		}
		return nil
	}
	a.pending = append(a.pending, m.changes...)
	if len(a.pending) >= applyChunk {
		return a.flush()
	}
	return nil
}

func (a *applier) truncate() { a.truncated = true }

// heartbeat notes a heartbeat's time: the index is as fresh as that.
func (a *applier) heartbeat(at time.Time) { a.seenAt = at }

// commit ends the transaction, committed at at, whose end the acker
// holds: the index is rebuilt when it truncated a table or was too large,
// and its changes are due soon otherwise.
func (a *applier) commit(at time.Time) error {
	a.seenAt = at
	if a.truncated && a.rescanning == nil {
		a.startRescan("the table was truncated (the files of its rows stay until `reconcile orphans`)", RescanTruncate)
	}
	a.truncated, a.skipping = false, false
	if a.rescanning != nil {
		return a.finishRescan(a.ack.complete)
	}
	if len(a.pending) > 0 && a.flushAt.IsZero() {
		a.flushAt = time.Now().Add(flushDelay)
	}
	return nil
}

// noteDeleted keeps rows deleted outright for Config.Deleted.
func (a *applier) noteDeleted(rows []DeletedRow) error {
	for _, d := range rows {
		d.At = a.txAt
		a.deleted = append(a.deleted, d)
	}
	if len(a.deleted) >= applyChunk {
		return a.handDeleted()
	}
	return nil
}

// handDeleted hands the rows deleted outright to Config.Deleted. It comes
// before the index records any position past their transaction.
func (a *applier) handDeleted() error {
	if len(a.deleted) == 0 {
		return nil
	}
	if err := a.deliver(a.ctx, a.deleted); err != nil {
		return fmt.Errorf("hand over rows deleted outright: %w", err)
	}
	clear(a.deleted)
	a.deleted = a.deleted[:0]
	return nil
}

// flush commits the pending changes to the index and reports the new
// position at once, so the server can let go of their WAL.
func (a *applier) flush() error {
	wrote, err := a.commitIndex()
	if err != nil || !wrote {
		return err
	}
	return a.ack.status(false)
}

// commitIndex writes the pending changes and the checkpoint of the last
// whole transaction among them in one index transaction. Changes of a
// transaction not yet complete go in too: the checkpoint stays before it,
// so after a crash it is replayed, and replaying is harmless.
func (a *applier) commitIndex() (bool, error) {
	a.flushAt = time.Time{}
	if err := a.handDeleted(); err != nil {
		return false, err
	}
	if a.rescanning != nil {
		// The changes dropped for the rescan are only covered once it is
		// done: until then the checkpoint stays where it is.
		return false, nil
	}
	if len(a.pending) == 0 && a.ack.complete == a.ack.committed {
		a.observer.Applied(a.seenAt)
		return false, nil
	}
	if err := a.idx.Apply(a.pending, a.ack.complete); err != nil {
		return false, err
	}
	clear(a.pending)
	a.pending = a.pending[:0]
	a.ack.held(a.ack.complete)
	a.observer.Applied(a.seenAt)
	return true, nil
}

// report tells the server what the index holds, after committing what can
// be committed without splitting a transaction.
func (a *applier) report(askReply bool) error {
	// An index set aside meanwhile (corrupt pages met by the timer) is
	// empty: on a quiet table no change would bring that to light.
	if a.rescanning == nil {
		st, err := a.idx.State()
		if err != nil {
			return err
		}
		if st.Origin == "" {
			return fmt.Errorf("the index was emptied while streaming: %w", index.ErrNotFilled)
		}
	}
	if !a.ack.inTx {
		if _, err := a.commitIndex(); err != nil {
			return err
		}
	}
	return a.ack.status(askReply)
}

// startRescan starts rebuilding the index from the tables in the
// background. The changes received so far are dropped: the tables hold
// them (the rescan waits until every committed transaction is visible to
// it).
func (a *applier) startRescan(reason, kind string) {
	clear(a.pending)
	a.pending, a.flushAt = a.pending[:0], time.Time{}
	a.log.Info("rescanning the table into the index", "reason", reason)
	a.observer.Rescanned(kind)
	ctx, cancel := context.WithCancel(a.ctx)
	done := make(chan error, 1)
	go func() { done <- a.rescan(ctx) }()
	a.rescanning, a.stopRescan = done, cancel
}

// abandonRescan stops a rescan the loop will not wait for: the index must
// be left alone before the next session or the shutdown.
func (a *applier) abandonRescan() {
	if a.rescanning != nil {
		a.stopRescan()
		<-a.rescanning
		a.rescanning = nil
	}
}

// finishRescan waits for the rescan, then makes at, a position it covers,
// the checkpoint. Until then the server hears the old position, so that a
// crash meanwhile replays what the rescan was to cover. The connection is
// not read meanwhile, only reported on, so the server keeps it.
func (a *applier) finishRescan(at uint64) error {
	done := a.rescanning
	defer a.stopRescan()
	a.rescanning = nil
	tick := time.NewTicker(a.statusEvery)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			if err != nil {
				return err
			}
			a.rescannedAt = time.Now()
			if err := a.handDeleted(); err != nil {
				return err
			}
			if err := a.idx.Rescanned(a.origin, at, a.rescannedAt); err != nil {
				return err
			}
			a.ack.held(at)
			return a.ack.status(false)
		case <-tick.C:
			if err := a.ack.status(false); err != nil {
				a.stopRescan()
				<-done
				return err
			}
		}
	}
}

// stop writes what was received, at shutdown.
func (a *applier) stop() error {
	// The rows deleted outright go to Config.Deleted before the index
	// records their position: on the run's context, now ended, they would
	// fail the stop.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(a.ctx), 5*time.Second)
	defer cancel()
	a.ctx = ctx
	_, err := a.commitIndex()
	return err
}
