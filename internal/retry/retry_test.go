package retry

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestBackoffDoublesCapsAndGivesUp(t *testing.T) {
	b := Backoff{Min: time.Millisecond, Max: 4 * time.Millisecond, Tries: 5}
	var waits []time.Duration
	cause := errors.New("boom")
	for range 4 {
		waits = append(waits, b.Next())
		if err := b.Failed(context.Background(), cause); err != nil {
			t.Fatalf("gave up early: %v", err)
		}
	}
	want := []time.Duration{time.Millisecond, 2 * time.Millisecond, 4 * time.Millisecond, 4 * time.Millisecond}
	for i := range want {
		if waits[i] != want[i] {
			t.Fatalf("waits = %v, want %v", waits, want)
		}
	}
	err := b.Failed(context.Background(), cause)
	if !errors.Is(err, ErrGaveUp) || !errors.Is(err, cause) {
		t.Fatalf("fifth failure: %v, want ErrGaveUp wrapping the cause", err)
	}
	b.Succeeded()
	if b.Next() != time.Millisecond {
		t.Fatalf("after a success the wait is %s", b.Next())
	}
}

func TestBackoffStopsWaitingWhenCancelled(t *testing.T) {
	b := Backoff{Min: time.Hour, Max: time.Hour}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	if err := b.Failed(ctx, errors.New("x")); err != nil || time.Since(start) > time.Second {
		t.Fatalf("Failed = %v after %s", err, time.Since(start))
	}
}
