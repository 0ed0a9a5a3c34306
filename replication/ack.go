package replication

import (
	"fmt"

	"github.com/jackc/pglogrepl"
)

// acker keeps the positions of one connection: the server hears only what
// the index holds, so that after any crash the slot replays what the index
// lacks.
type acker struct {
	// send sends a standby status update reporting pos.
	send func(pos pglogrepl.LSN, askReply bool) error
	inTx bool
	// complete is the end of the last whole transaction seen, or a
	// keepalive's position between transactions.
	complete uint64
	// committed is what the index holds: the only position reported.
	committed uint64
}

func (a *acker) begin() { a.inTx = true }

// commit notes a transaction seen whole, up to end.
func (a *acker) commit(end uint64) {
	a.inTx = false
	a.complete = max(a.complete, end)
}

// keepalive notes the server's position. Between transactions the server
// has sent everything before it that concerns the tables: it can be
// acknowledged, once the index has it as its checkpoint, so the slot lets
// WAL go. Inside one it says nothing of the transaction's end.
func (a *acker) keepalive(walEnd uint64) {
	if !a.inTx && walEnd > a.complete {
		a.complete = walEnd
	}
}

// held notes that the index holds everything up to pos.
func (a *acker) held(pos uint64) {
	a.committed, a.complete = pos, max(a.complete, pos)
}

// status reports the committed position.
func (a *acker) status(askReply bool) error {
	if err := a.send(pglogrepl.LSN(a.committed), askReply); err != nil {
		return fmt.Errorf("send standby status: %w", err)
	}
	return nil
}
