package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/reconcile/reconcile/internal/metrics"
	"github.com/reconcile/reconcile/reconciler"
	"github.com/reconcile/reconcile/replication"
)

const (
	// gaugesFresh is how old the gauges may be when a scrape comes: a
	// scrape reads the database and the index at most this often.
	gaugesFresh = 5 * time.Second
	// gaugesEvery is how often the service reads them without a scrape,
	// to warn of the slot's WAL.
	gaugesEvery = 30 * time.Second
	// gaugesTimeout bounds one reading.
	gaugesTimeout = 5 * time.Second
)

// backlogReader is what the gauges need of the purge; *reconciler.Reconciler
// has it.
type backlogReader interface {
	Backlog(ctx context.Context) (reconciler.Backlog, error)
	OutboxStats(ctx context.Context) (pending int, oldest time.Time, age time.Duration, err error)
}

// gauges reads what the database and the index hold into the metrics: the
// backlog, the outbox and the slot, and warns when the slot holds more WAL
// than it may.
type gauges struct {
	r              backlogReader
	db             replication.Querier
	slot           string // "" in a one-shot run: no slot to watch
	maxRetainedWAL int64
	m              *metrics.Metrics
	ready          *readiness // judged with each reading, for reconcile_ready; nil in a one-shot run
	log            *slog.Logger

	mu      sync.Mutex
	readAt  time.Time // when the last reading started
	overMax bool      // the slot held more than maxRetainedWAL at the last reading
	status  string
}

// refresh reads the gauges unless they were read, or tried, within
// maxAge, or a reading is under way: a scrape then serves the last values
// rather than queue behind a database that does not answer.
func (g *gauges) refresh(ctx context.Context, maxAge time.Duration) error {
	if !g.mu.TryLock() {
		return nil
	}
	defer g.mu.Unlock()
	if time.Since(g.readAt) < maxAge {
		return nil
	}
	g.readAt = time.Now()
	ctx, cancel := context.WithTimeout(ctx, gaugesTimeout)
	defer cancel()
	if g.ready != nil {
		g.ready.check(ctx)
	}
	var errs []error
	if b, err := g.r.Backlog(ctx); err != nil {
		errs = append(errs, err)
	} else {
		g.m.SetBacklog(metrics.Backlog{Rows: b.Rows, Due: b.Due, Overdue: b.Overdue, NextDue: b.NextDue})
	}
	if err := g.refreshOutbox(ctx); err != nil {
		errs = append(errs, err)
	}
	if g.slot != "" {
		if s, err := replication.Slot(ctx, g.db, g.slot); err != nil {
			errs = append(errs, err)
		} else {
			g.m.SetSlot(metrics.Slot{Active: s.Active, WALStatus: s.WALStatus, RetainedBytes: s.RetainedBytes, LagBytes: s.LagBytes, MaxRetainedWAL: g.maxRetainedWAL})
			g.warn(s)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("read the gauges: %w", err)
	}
	return nil
}

// refreshOutbox reads the outbox's size and age.
func (g *gauges) refreshOutbox(ctx context.Context) error {
	pending, _, age, err := g.r.OutboxStats(ctx)
	if err != nil {
		return err
	}
	g.m.SetOutbox(pending, max(age, 0))
	return nil
}

// warn logs when the slot crosses replication.max_retained_wal, and when
// its WAL is in danger or lost, once for each change.
func (g *gauges) warn(s replication.SlotInfo) {
	over := s.RetainedBytes > g.maxRetainedWAL
	switch {
	case over && !g.overMax:
		g.log.Warn("the replication slot holds more WAL than replication.max_retained_wal: the server keeps it until reconcile has read it; is the service keeping up?",
			"slot", g.slot, "retained", humanize.IBytes(uint64(s.RetainedBytes)), "max_retained_wal", humanize.IBytes(uint64(g.maxRetainedWAL)))
	case !over && g.overMax:
		g.log.Info("the replication slot holds less WAL than replication.max_retained_wal again",
			"slot", g.slot, "retained", humanize.IBytes(uint64(s.RetainedBytes)))
	}
	g.overMax = over
	if s.WALStatus != g.status && (s.WALStatus == "unreserved" || s.WALStatus == "lost") {
		g.log.Warn("the replication slot's WAL is past max_slot_wal_keep_size: the server removes, or has removed, WAL the slot needs; once lost, the service replaces the slot and rescans the table",
			"slot", g.slot, "wal_status", s.WALStatus)
	}
	g.status = s.WALStatus
}

// watch refreshes the gauges every gaugesEvery until ctx ends.
func (g *gauges) watch(ctx context.Context) {
	tick := time.NewTicker(gaugesEvery)
	defer tick.Stop()
	for {
		if err := g.refresh(ctx, gaugesFresh); err != nil && ctx.Err() == nil {
			g.log.Warn("metrics not refreshed", "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// scraped refreshes the gauges before h serves a scrape. A failed reading
// leaves the last values, and the scrape goes on.
func (g *gauges) scraped(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if err := g.refresh(req.Context(), gaugesFresh); err != nil {
			g.log.Debug("metrics not refreshed for a scrape", "error", err)
		}
		h.ServeHTTP(w, req)
	})
}

// checkWALLimit warns at start when the server lets a slot keep WAL
// without bound: a stuck reader then fills the server's disk.
func checkWALLimit(ctx context.Context, db replication.Querier, slot string, log *slog.Logger) {
	s, err := replication.Slot(ctx, db, slot)
	if err != nil {
		log.Warn("could not read max_slot_wal_keep_size", "error", err)
		return
	}
	if s.MaxSlotWALKeepSize < 0 {
		log.Warn("max_slot_wal_keep_size is unlimited (-1): should reconcile stop reading its slot, the server keeps WAL until its disk is full; set it, e.g. ALTER SYSTEM SET max_slot_wal_keep_size = '10GB' (see the README, \"WAL safety\")",
			"slot", slot)
	}
}
