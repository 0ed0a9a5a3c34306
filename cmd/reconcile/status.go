package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/jackc/pglogrepl"

	"github.com/reconcile/reconcile/index"
	"github.com/reconcile/reconcile/internal/config"
	"github.com/reconcile/reconcile/reconciler"
	"github.com/reconcile/reconcile/replication"
)

// statusReport is what `reconcile status` prints, and what the service's
// /status serves as JSON: the field names are stable, and carry their
// units.
type statusReport struct {
	GeneratedAt time.Time    `json:"generated_at"`
	Table       string       `json:"table"`
	Index       *indexStatus `json:"index"` // nil: see IndexUnavailable
	// IndexUnavailable says why the index's figures are missing.
	IndexUnavailable string       `json:"index_unavailable,omitempty"`
	Outbox           outboxStatus `json:"outbox"`
	Slot             slotStatus   `json:"slot"`
	Lock             lockStatus   `json:"lock"`
}

type indexStatus struct {
	Path string `json:"path"`
	// Source is where the figures come from: "file" when status read the
	// index itself, "service" when the running service, which holds the
	// file, answered them.
	Source string `json:"source"`
	// Filled is false until a rescan of the service has completed since the
	// index was emptied: the figures are then partial, or those of a
	// one-shot --rescan, which leaves the rows it purged in the index.
	Filled              bool       `json:"filled"`
	Rows                int        `json:"rows"`
	DueRows             int        `json:"due_rows"`
	OverdueRows         int        `json:"overdue_rows"`
	OverdueAfterSeconds float64    `json:"overdue_after_seconds"`
	NextDueAt           *time.Time `json:"next_due_at"` // when the earliest row falls due; past while rows wait
	LastRescanAt        *time.Time `json:"last_rescan_at"`
	LastSweepAt         *time.Time `json:"last_sweep_at"` // up to a minute behind the last sweep
	CheckpointLSN       string     `json:"checkpoint_lsn"`
}

type outboxStatus struct {
	Exists           bool       `json:"exists"` // false before `reconcile migrate`
	PendingFiles     int        `json:"pending_files"`
	OldestEnqueuedAt *time.Time `json:"oldest_enqueued_at"`
	OldestAgeSeconds float64    `json:"oldest_age_seconds"`
}

type slotStatus struct {
	Name             string `json:"name"`
	Exists           bool   `json:"exists"`
	Active           bool   `json:"active"`
	ActivePID        int    `json:"active_pid"`
	WALStatus        string `json:"wal_status"`
	RetainedWALBytes int64  `json:"retained_wal_bytes"`
	LagBytes         int64  `json:"lag_bytes"`
	// SafeWALBytes is null when the server keeps WAL for slots without
	// limit.
	SafeWALBytes *int64 `json:"safe_wal_bytes"`
	// MaxSlotWALKeepBytes is the server's max_slot_wal_keep_size; -1 is
	// unlimited.
	MaxSlotWALKeepBytes int64 `json:"max_slot_wal_keep_bytes"`
	// MaxRetainedWALBytes is replication.max_retained_wal, the alert's
	// threshold.
	MaxRetainedWALBytes int64 `json:"max_retained_wal_bytes"`
}

type lockStatus struct {
	Held            bool       `json:"held"`
	PID             int        `json:"pid"`
	ApplicationName string     `json:"application_name"`
	ClientAddr      string     `json:"client_addr"`
	BackendStartAt  *time.Time `json:"backend_start_at"`
}

// stateReader is what the report reads of the index beside the backlog;
// *index.Index has it.
type stateReader interface {
	State() (index.State, error)
}

// readStatus gathers the report from the database and, unless idx is nil,
// from the index that r was made with; source says whose index it is.
func readStatus(ctx context.Context, cfg *config.Config, db replication.Querier, rs reconciler.Tables, idx stateReader, source string) (statusReport, error) {
	var names []string
	for _, t := range tables(cfg) {
		names = append(names, t.IndexName())
	}
	rep := statusReport{GeneratedAt: time.Now().UTC(), Table: strings.Join(names, ", ")}

	pending, oldest, age, err := rs.OutboxStats(ctx)
	switch {
	case errors.Is(err, reconciler.ErrSetup):
		// Not migrated yet: said, not failed.
	case err != nil:
		return rep, err
	default:
		rep.Outbox = outboxStatus{Exists: true, PendingFiles: pending, OldestEnqueuedAt: stamp(oldest), OldestAgeSeconds: age.Seconds()}
	}

	slot, err := replication.Slot(ctx, db, cfg.Replication.Slot)
	if err != nil {
		return rep, err
	}
	rep.Slot = slotStatus{
		Name: cfg.Replication.Slot, Exists: slot.Exists, Active: slot.Active, ActivePID: slot.ActivePID, WALStatus: slot.WALStatus,
		RetainedWALBytes: slot.RetainedBytes, LagBytes: slot.LagBytes, SafeWALBytes: slot.SafeWALSize,
		MaxSlotWALKeepBytes: slot.MaxSlotWALKeepSize, MaxRetainedWALBytes: int64(cfg.Replication.MaxRetainedWAL),
	}

	// One session holds every table's lock: the first names it.
	holder, held, err := rs[0].LockHolder(ctx)
	if err != nil {
		return rep, err
	}
	if held {
		rep.Lock = lockStatus{Held: true, PID: holder.PID, ApplicationName: holder.ApplicationName, ClientAddr: holder.ClientAddr, BackendStartAt: stamp(holder.BackendStart)}
	}

	if idx != nil {
		if rep.Index, err = readIndexStatus(ctx, cfg, rs, idx, source); err != nil {
			rep.IndexUnavailable = err.Error()
		}
	}
	return rep, nil
}

func readIndexStatus(ctx context.Context, cfg *config.Config, rs reconciler.Tables, idx stateReader, source string) (*indexStatus, error) {
	st, err := idx.State()
	if err != nil {
		return nil, err
	}
	backlog, err := rs.Backlog(ctx)
	if err != nil {
		return nil, err
	}
	s := &indexStatus{
		Path: cfg.Index.Path, Source: source, Filled: st.Origin != "",
		Rows: backlog.Rows, DueRows: backlog.Due, OverdueRows: backlog.Overdue, OverdueAfterSeconds: cfg.Sweep.OverdueAfter.Seconds(),
		NextDueAt: stamp(backlog.NextDue), LastRescanAt: stamp(st.RescannedAt), LastSweepAt: stamp(st.SweptAt),
	}
	if st.Checkpoint != 0 {
		s.CheckpointLSN = pglogrepl.LSN(st.Checkpoint).String()
	}
	return s, nil
}

// stamp is t in UTC for the report; nil when t is zero.
func stamp(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	t = t.UTC()
	return &t
}

// newStatusHandler serves the report as JSON, with the figures of the
// index the service holds open: `reconcile status` asks it here, since it
// cannot open the file itself then. r must be the service's reconciler,
// made with idx.
func newStatusHandler(cfg *config.Config, db replication.Querier, rs reconciler.Tables, idx stateReader) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		rep, err := readStatus(req.Context(), cfg, db, rs, idx, "service")
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(rep)
	})
}

// status prints the report. It opens the database read-only and the index
// for reading, so it changes nothing; while the service holds the index,
// the service's /status gives the index's figures.
func status(ctx context.Context, cfg *config.Config, format string, log *slog.Logger, stdout io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, statusDeadline)
	defer cancel()
	pool, err := openDB(ctx, cfg, forAudit)
	if err != nil {
		return err
	}
	defer pool.Close()

	// The index is held open only while its own figures are read: the
	// service or a --rescan starting meanwhile waits a second for the
	// file, then gives up.
	idx, unavail := openIndexForStatus(cfg.Index.Path)
	rs, err := openTables(ctx, cfg, pool, nil, idx, nil, log)
	var figures *indexStatus
	if err == nil && idx != nil {
		figures, unavail = readIndexStatus(ctx, cfg, rs, idx, "file")
	}
	if idx != nil {
		idx.Close()
	}
	if err != nil {
		return err
	}
	rep, err := readStatus(ctx, cfg, pool, rs, nil, "file")
	if err != nil {
		return err
	}
	rep.Index = figures
	if errors.Is(unavail, index.ErrLocked) {
		unavail = nil
		if rep.Index, err = askService(ctx, cfg); err != nil {
			unavail = fmt.Errorf("another reconcile (the service, or a --rescan) holds the index %s, and the service's /status could not tell its figures: %w", cfg.Index.Path, err)
		}
	}
	if unavail != nil {
		rep.IndexUnavailable = unavail.Error()
	}
	if format == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	printStatus(stdout, rep, cfg)
	return nil
}

// statusDeadline bounds the whole command: a hung database must not hold
// the terminal, or a cron job, for ever.
const statusDeadline = time.Minute

// openIndexForStatus opens the index for reading, or says why it cannot:
// index.ErrLocked when another process holds it.
func openIndexForStatus(path string) (*index.Index, error) {
	idx, err := index.OpenReadOnly(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("no index at %s (index.path): the service, or a --rescan, creates it", path)
	}
	return idx, err
}

// statusTimeout bounds the wait for the service's /status.
const statusTimeout = 10 * time.Second

// askService reads the index's figures from the running service's /status.
func askService(ctx context.Context, cfg *config.Config) (*indexStatus, error) {
	addr := cfg.HTTP.Address(true)
	if addr == "" {
		return nil, errors.New("http.listen is off")
	}
	url := "http://" + dialAddress(addr) + "/status"
	ctx, cancel := context.WithTimeout(ctx, statusTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("ask %s: %w", url, err)
	}
	transport := &http.Transport{DisableKeepAlives: true}
	defer transport.CloseIdleConnections()
	resp, err := (&http.Client{Transport: transport}).Do(req)
	if err != nil {
		return nil, fmt.Errorf("ask %s: %w", url, err)
	}
	defer resp.Body.Close()
	body := io.LimitReader(resp.Body, 1<<20)
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(body)
		return nil, fmt.Errorf("%s answered %s: %s", url, resp.Status, strings.TrimSpace(string(msg)))
	}
	var rep statusReport
	if err := json.NewDecoder(body).Decode(&rep); err != nil {
		return nil, fmt.Errorf("read the answer of %s: %w", url, err)
	}
	if rep.Index == nil {
		return nil, fmt.Errorf("%s has none: %s", url, rep.IndexUnavailable)
	}
	return rep.Index, nil
}

// dialAddress turns a listen address into one to connect to: a wildcard
// host is this host.
func dialAddress(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

// printStatus writes the report for a person: aligned, times with how far
// away they are, sizes in binary units.
func printStatus(w io.Writer, rep statusReport, cfg *config.Config) {
	now := rep.GeneratedAt
	line := func(label, format string, args ...any) {
		fmt.Fprintf(w, "  %-15s%s\n", label, fmt.Sprintf(format, args...))
	}
	fmt.Fprintf(w, "reconcile status of %s at %s\n", rep.Table, now.Format(timeFormat))

	if ix := rep.Index; ix != nil {
		from := "read from the file"
		if ix.Source == "service" {
			from = "from the running service"
		}
		fmt.Fprintf(w, "\nIndex %s (%s)\n", ix.Path, from)
		if !ix.Filled {
			line("note", "no rescan of the service has completed since it was emptied: figures may be partial, or stale from a --rescan")
		}
		line("rows", "%s", humanize.Comma(int64(ix.Rows)))
		line("due", "%s", humanize.Comma(int64(ix.DueRows)))
		line("overdue", "%s (due for longer than %s, sweep.overdue_after)", humanize.Comma(int64(ix.OverdueRows)), span(time.Duration(ix.OverdueAfterSeconds*float64(time.Second))))
		line("next due", "%s", when(ix.NextDueAt, now))
		line("last rescan", "%s", when(ix.LastRescanAt, now))
		line("last sweep", "%s", when(ix.LastSweepAt, now))
	} else {
		fmt.Fprintf(w, "\nIndex %s\n", cfg.Index.Path)
		line("unavailable", "%s", rep.IndexUnavailable)
	}

	fmt.Fprintf(w, "\nOutbox\n")
	if rep.Outbox.Exists {
		line("pending files", "%s", humanize.Comma(int64(rep.Outbox.PendingFiles)))
		line("oldest", "%s", when(rep.Outbox.OldestEnqueuedAt, now))
	} else {
		line("missing", "run `reconcile migrate` to create it")
	}

	s := rep.Slot
	fmt.Fprintf(w, "\nReplication slot %s\n", s.Name)
	if s.Exists {
		active := "no"
		if s.Active {
			active = fmt.Sprintf("yes (walsender pid %d)", s.ActivePID)
		}
		line("active", "%s", active)
		line("wal status", "%s", s.WALStatus)
		line("retained WAL", "%s (alert above %s, replication.max_retained_wal)", humanize.IBytes(uint64(max(s.RetainedWALBytes, 0))), humanize.IBytes(uint64(s.MaxRetainedWALBytes)))
		line("lag", "%s", humanize.IBytes(uint64(max(s.LagBytes, 0))))
		if s.SafeWALBytes != nil {
			line("safe WAL size", "%s (max_slot_wal_keep_size %s)", humanize.IBytes(uint64(max(*s.SafeWALBytes, 0))), humanize.IBytes(uint64(max(s.MaxSlotWALKeepBytes, 0))))
		} else if s.MaxSlotWALKeepBytes < 0 {
			line("safe WAL size", "unlimited (max_slot_wal_keep_size -1)")
		}
	} else {
		line("missing", "the service creates it when it starts")
	}

	fmt.Fprintf(w, "\nAdvisory lock\n")
	if l := rep.Lock; l.Held {
		by := fmt.Sprintf("pid %d", l.PID)
		if l.ApplicationName != "" {
			by += ", " + l.ApplicationName
		}
		if l.ClientAddr != "" {
			by += ", from " + l.ClientAddr
		}
		if l.BackendStartAt != nil {
			by += ", connected " + when(l.BackendStartAt, now)
		}
		line("held by", "%s", by)
	} else {
		line("held by", "nobody: no instance is purging")
	}
}

const timeFormat = "2006-01-02 15:04:05 MST"

// when writes t with how far from now it is: "2026-10-04 09:00:00 UTC
// (3h12m ago)".
func when(t *time.Time, now time.Time) string {
	if t == nil {
		return "never"
	}
	at := t.UTC().Format(timeFormat)
	switch d := now.Sub(*t); {
	case d >= time.Second:
		return fmt.Sprintf("%s (%s ago)", at, span(d))
	case d <= -time.Second:
		return fmt.Sprintf("%s (in %s)", at, span(-d))
	default:
		return at + " (now)"
	}
}

// span writes a duration to the second below an hour, to the minute below
// two days, and in days and hours above: "42s", "12m3s", "3h12m", "5d3h".
func span(d time.Duration) string {
	unit := func(big, small time.Duration, a, b string) string {
		d = d.Round(small)
		if d%big == 0 {
			return fmt.Sprintf("%d%s", d/big, a)
		}
		return fmt.Sprintf("%d%s%d%s", d/big, a, d%big/small, b)
	}
	d = d.Round(time.Second)
	switch {
	case d < time.Minute:
		return d.String()
	case d < time.Hour:
		return unit(time.Minute, time.Second, "m", "s")
	case d < 48*time.Hour:
		return unit(time.Hour, time.Minute, "h", "m")
	default:
		return unit(24*time.Hour, time.Hour, "d", "h")
	}
}
