// Package retry paces work that fails for a while: a capped exponential
// backoff that gives up after a bounded number of failures in a row, so
// that no error loops silently. Once it gives up the caller ends, with a
// non-zero status, for its supervisor (systemd) and an operator to see.
package retry

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// ErrGaveUp marks the error of work that failed Tries times in a row.
var ErrGaveUp = errors.New("gave up")

// Backoff waits Min after a first failure, twice as long after each next
// one, Max at most. The zero value of Tries never gives up.
type Backoff struct {
	Min, Max time.Duration
	Tries    int
	fails    int
}

// Next is the wait the next failure brings.
func (b *Backoff) Next() time.Duration {
	d := b.Min
	for i := 0; i < b.fails && d < b.Max; i++ {
		d *= 2
	}
	return min(d, b.Max)
}

// Failed counts a failure. Once Tries failures have come in a row it
// returns err wrapped with ErrGaveUp; otherwise it waits Next, or until ctx
// ends, and returns nil.
func (b *Backoff) Failed(ctx context.Context, err error) error {
	wait := b.Next()
	if err := b.Count(err); err != nil {
		return err
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
	return nil
}

// Count counts a failure without waiting: once Tries failures have come
// in a row it returns err wrapped with ErrGaveUp. The caller waits Next,
// taken before, as it sees fit.
func (b *Backoff) Count(err error) error {
	b.fails++
	if b.Tries > 0 && b.fails >= b.Tries {
		return fmt.Errorf("%w after %d failures in a row: %w", ErrGaveUp, b.fails, err)
	}
	return nil
}

// Succeeded starts the count over.
func (b *Backoff) Succeeded() { b.fails = 0 }
