// Package metrics holds reconcile's Prometheus metrics: what the stream,
// the purge and the storage report as they work, and the gauges the
// service refreshes from the database and the index. It serves them over
// HTTP for the service and writes them to a node_exporter textfile for
// one-shot runs.
package metrics

import (
	"fmt"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

const namespace = "reconcile"

// walStatuses are the values of pg_replication_slots.wal_status.
var walStatuses = []string{"reserved", "extended", "unreserved", "lost"}

// Metrics is every metric of one process. Its methods are safe from any
// goroutine.
type Metrics struct {
	reg     *prometheus.Registry // reconcile_* alone: the textfile's
	runtime *prometheus.Registry // the Go and process collectors

	connected        prometheus.Gauge
	lagBytes         prometheus.Gauge
	reconnects       prometheus.Counter
	rescans          *prometheus.CounterVec
	slotActive       prometheus.Gauge
	retainedWAL      prometheus.Gauge
	maxRetainedWAL   prometheus.Gauge
	walStatus        *prometheus.GaugeVec
	indexRows        prometheus.Gauge
	dueRows          prometheus.Gauge
	overdueRows      prometheus.Gauge
	nextDue          prometheus.Gauge
	purgedRows       prometheus.Counter
	filesRemoved     prometheus.Counter
	filesMissing     prometheus.Counter
	sharedKept       prometheus.Counter
	purgeErrors      *prometheus.CounterVec
	outboxPending    prometheus.Gauge
	outboxOldestAge  prometheus.Gauge
	storageDuration  *prometheus.HistogramVec
	storageObservers map[string]prometheus.Observer // one per op of storageOps, resolved once
	lastSweep        prometheus.Gauge
	leader           prometheus.Gauge
	ready            prometheus.Gauge

	mu      sync.Mutex
	applied time.Time // commit time of the last transaction in the index
}

// purgeErrorReasons are the reason labels of reconcile_purge_errors_total.
var purgeErrorReasons = []string{"row", "batch", "storage", "probe"}

// rescanReasons are the reason labels of reconcile_rescans_total.
var rescanReasons = []string{"new_slot", "index_empty", "index_mismatch", "index_behind", "periodic", "truncate", "large_transaction", "once"}

// storageOps are the op labels of reconcile_storage_request_duration_seconds.
var storageOps = []string{"stat", "remove", "list", "other"}

// Handler serves every metric, the Go runtime's and the process's too.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(prometheus.Gatherers{m.reg, m.runtime}, promhttp.HandlerOpts{})
}

// New registers every metric; version goes into reconcile_build_info.
func New(version string) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry(), runtime: prometheus.NewRegistry()}
	m.runtime.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	f := factory{m.reg}

	m.connected = f.gauge("replication_connected", "1 while the replication stream is connected and streaming.")
	m.lagBytes = f.gauge("replication_lag_bytes", "The server's WAL end minus the slot's confirmed position: what the index has yet to acknowledge.")
	f.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: namespace, Name: "replication_lag_seconds",
		Help: "Now minus the commit time of the last transaction (or heartbeat) applied to the index; 0 before the first.",
	}, m.lagSeconds))
	m.reconnects = f.counter("reconnects_total", "Replication sessions that ended in an error and were dialled again.")
	m.rescans = f.counterVec("rescans_total", "Rebuilds of the index from the table, by reason.", "reason", rescanReasons)
	m.slotActive = f.gauge("slot_active", "1 while the replication slot has a connected reader.")
	m.retainedWAL = f.gauge("slot_retained_wal_bytes", "WAL the slot holds on the server: the WAL end minus the slot's restart_lsn.")
	m.maxRetainedWAL = f.gauge("slot_max_retained_wal_bytes", "replication.max_retained_wal: above it the service warns.")
	m.walStatus = f.gaugeVec("slot_wal_status", "1 for the slot's wal_status, 0 for the others.", "status", walStatuses)
	m.indexRows = f.gauge("index_rows", "Soft-deleted rows in the index.")
	m.dueRows = f.gauge("due_rows", "Rows in the index whose retention has passed.")
	m.overdueRows = f.gauge("overdue_rows", "Rows due for longer than sweep.overdue_after: the purge is not keeping up.")
	m.nextDue = f.gauge("next_due_timestamp_seconds", "When the next row not yet due falls due (Unix time); 0 when none waits.")
	m.purgedRows = f.counter("purged_rows_total", "Rows hard-deleted.")
	m.filesRemoved = f.counter("files_removed_total", "Files removed from storage.")
	m.filesMissing = f.counter("files_missing_total", "Files of purged rows that were already gone.")
	m.sharedKept = f.counter("shared_files_kept_total", "Files kept because another row still uses them.")
	m.purgeErrors = f.counterVec("purge_errors_total",
		"Purge failures: row (a row the database refused), batch (a purge that stopped short), storage (a file removal that failed and waits in the outbox), probe (storage held none of the table's files: nothing deleted).",
		"reason", purgeErrorReasons)
	m.outboxPending = f.gauge("outbox_pending", "Files waiting in the outbox for removal (not those of rows deleted outright within orphans.grace).")
	m.outboxOldestAge = f.gauge("outbox_oldest_age_seconds", "Age of the oldest file waiting in the outbox, counted from when its removal fell due; 0 when none waits.")
	m.storageDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Name: "storage_request_duration_seconds",
		Help:    "Storage requests by operation: stat, remove, list, other.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	}, []string{"op"})
	m.reg.MustRegister(m.storageDuration)
	m.storageObservers = make(map[string]prometheus.Observer, len(storageOps))
	for _, op := range storageOps {
		m.storageObservers[op] = m.storageDuration.WithLabelValues(op)
	}
	m.lastSweep = f.gauge("last_sweep_timestamp_seconds", "When the service's timer last swept what was due (Unix time).")
	m.leader = f.gauge("leader", "1 while this instance holds the advisory lock and purges.")
	m.ready = f.gauge("ready", "1 when /readyz answers 200.")
	info := f.gaugeVec("build_info", "Always 1; the version label says which build runs.", "version", nil)
	info.WithLabelValues(version).Set(1)
	return m
}

// factory registers metrics of the namespace.
type factory struct{ reg *prometheus.Registry }

func (f factory) gauge(name, help string) prometheus.Gauge {
	g := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: name, Help: help})
	f.reg.MustRegister(g)
	return g
}

func (f factory) counter(name, help string) prometheus.Counter {
	c := prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: name, Help: help})
	f.reg.MustRegister(c)
	return c
}

// counterVec registers a counter with one label, its known values at 0, so
// that rate() and increase() see the first one.
func (f factory) counterVec(name, help, label string, values []string) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: name, Help: help}, []string{label})
	for _, v := range values {
		c.WithLabelValues(v)
	}
	f.reg.MustRegister(c)
	return c
}

func (f factory) gaugeVec(name, help, label string, values []string) *prometheus.GaugeVec {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Name: name, Help: help}, []string{label})
	for _, v := range values {
		g.WithLabelValues(v)
	}
	f.reg.MustRegister(g)
	return g
}

// The stream's reports (replication.Observer).

// Connected says whether the stream is up.
func (m *Metrics) Connected(up bool) { m.connected.Set(bool01(up)) }

// Reconnected counts a session that failed and is dialled again.
func (m *Metrics) Reconnected() { m.reconnects.Inc() }

// Rescanned counts a rebuild of the index.
func (m *Metrics) Rescanned(reason string) { m.rescans.WithLabelValues(reason).Inc() }

// Applied records the commit time of the last transaction, or heartbeat,
// that the index holds.
func (m *Metrics) Applied(at time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if at.After(m.applied) {
		m.applied = at
	}
}

func (m *Metrics) lagSeconds() float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.applied.IsZero() {
		return 0
	}
	return math.Max(0, time.Since(m.applied).Seconds())
}

// The purge's reports (reconciler.Observer).

// Purged counts rows hard-deleted.
func (m *Metrics) Purged(rows int) { m.purgedRows.Add(float64(rows)) }

// Files counts files removed, found missing, and kept for another row.
func (m *Metrics) Files(removed, missing, kept int) {
	m.filesRemoved.Add(float64(removed))
	m.filesMissing.Add(float64(missing))
	m.sharedKept.Add(float64(kept))
}

// PurgeErrors counts failures of one reason.
func (m *Metrics) PurgeErrors(reason string, n int) {
	if n > 0 {
		m.purgeErrors.WithLabelValues(reason).Add(float64(n))
	}
}

// Swept records the end of a sweep of the timer.
func (m *Metrics) Swept(at time.Time) { m.lastSweep.Set(unix(at)) }

// StorageRequest records how long a storage request took.
func (m *Metrics) StorageRequest(op string, d time.Duration) {
	o, ok := m.storageObservers[op]
	if !ok {
		o = m.storageDuration.WithLabelValues(op)
	}
	o.Observe(d.Seconds())
}

// The gauges the service refreshes.

// SetLeader says whether this instance holds the advisory lock.
func (m *Metrics) SetLeader(held bool) { m.leader.Set(bool01(held)) }

// SetReady says what /readyz answers.
func (m *Metrics) SetReady(ready bool) { m.ready.Set(bool01(ready)) }

// Backlog is what the index holds.
type Backlog struct {
	Rows, Due, Overdue int
	NextDue            time.Time // zero when no row waits
}

// SetBacklog records what the index holds.
func (m *Metrics) SetBacklog(b Backlog) {
	m.indexRows.Set(float64(b.Rows))
	m.dueRows.Set(float64(b.Due))
	m.overdueRows.Set(float64(b.Overdue))
	m.nextDue.Set(unix(b.NextDue))
}

// SetOutbox records the outbox's size and the age of its oldest entry.
func (m *Metrics) SetOutbox(pending int, oldestAge time.Duration) {
	m.outboxPending.Set(float64(pending))
	m.outboxOldestAge.Set(oldestAge.Seconds())
}

// Slot is the replication slot as the server reports it.
type Slot struct {
	Active         bool
	WALStatus      string
	RetainedBytes  int64 // the WAL end minus restart_lsn
	LagBytes       int64 // the WAL end minus confirmed_flush_lsn
	MaxRetainedWAL int64
}

// SetSlot records the slot's state.
func (m *Metrics) SetSlot(s Slot) {
	m.slotActive.Set(bool01(s.Active))
	m.retainedWAL.Set(float64(s.RetainedBytes))
	m.lagBytes.Set(float64(s.LagBytes))
	m.maxRetainedWAL.Set(float64(s.MaxRetainedWAL))
	for _, st := range walStatuses {
		m.walStatus.WithLabelValues(st).Set(bool01(st == s.WALStatus))
	}
}

// serviceOnly are the metrics a one-shot run leaves out of its textfile:
// it has no stream, no slot, no timer and no lock to hold for long, and a
// reconcile_leader of 0 from every host with a timer would read as an
// instance that lost the lock.
var serviceOnly = []string{
	"replication_connected", "replication_lag_bytes", "replication_lag_seconds", "reconnects_total",
	"slot_active", "slot_retained_wal_bytes", "slot_max_retained_wal_bytes", "slot_wal_status",
	"index_rows", "due_rows", "overdue_rows", "next_due_timestamp_seconds",
	"last_sweep_timestamp_seconds", "leader", "ready",
}

// WriteTextfile writes the reconcile_* metrics of a one-shot run, and the end of the last
// successful run, to path for node_exporter's textfile collector: to a
// temporary file in the same folder first, then renamed over path, so a
// scrape never reads half a file. A failed run keeps the last success
// that path recorded, so an alert on its age sees the failure. The Go
// runtime metrics are left out: node_exporter has its own.
func (m *Metrics) WriteTextfile(path string, success bool, now time.Time) error {
	last := now
	if !success {
		last = lastSuccess(path)
	}
	gathered, err := m.reg.Gather()
	if err != nil {
		return fmt.Errorf("gather metrics: %w", err)
	}
	var families []*dto.MetricFamily
	for _, f := range gathered {
		if !slices.Contains(serviceOnly, strings.TrimPrefix(f.GetName(), namespace+"_")) {
			families = append(families, f)
		}
	}
	if !last.IsZero() {
		families = append(families, gaugeFamily("last_success_timestamp_seconds",
			"When the last one-shot run that succeeded ended (Unix time).", unix(last)))
	}
	families = append(families, gaugeFamily("last_run_timestamp_seconds", "When the last one-shot run ended (Unix time).", unix(now)),
		gaugeFamily("last_run_success", "1 when the last one-shot run succeeded.", bool01(success)))

	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write metrics file: %w", err)
	}
	defer os.Remove(tmp.Name()) // after a rename, nothing is there
	enc := expfmt.NewEncoder(tmp, expfmt.FmtText)
	for _, f := range families {
		if err = enc.Encode(f); err != nil {
			break
		}
	}
	if err == nil {
		err = tmp.Chmod(0o644) // node_exporter runs as another user
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("write metrics file: %w", err)
	}
	return nil
}

// lastSuccess reads the last success an earlier run wrote to path; zero
// when there is none.
func lastSuccess(path string) time.Time {
	f, err := os.Open(path)
	if err != nil {
		return time.Time{}
	}
	defer f.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(f)
	if err != nil {
		return time.Time{}
	}
	fam := families[namespace+"_last_success_timestamp_seconds"]
	if fam == nil || len(fam.GetMetric()) != 1 || fam.GetMetric()[0].GetGauge() == nil {
		return time.Time{}
	}
	sec := fam.GetMetric()[0].GetGauge().GetValue()
	return time.Unix(0, int64(sec*1e9))
}

func gaugeFamily(name, help string, v float64) *dto.MetricFamily {
	full := namespace + "_" + name
	typ := dto.MetricType_GAUGE
	return &dto.MetricFamily{Name: &full, Help: &help, Type: &typ, Metric: []*dto.Metric{{Gauge: &dto.Gauge{Value: &v}}}}
}

func bool01(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func unix(t time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return float64(t.UnixNano()) / 1e9
}
