package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/reconcile/reconcile/internal/testdb"
)

var servingAt = regexp.MustCompile(`msg="serving /metrics[^"]*" address=(\S+)`)

// url is where the service serves path: it listens on a free port and
// logs it.
func (s *service) url(path string) string {
	s.t.Helper()
	s.waitLog("serving /metrics", 1)
	m := servingAt.FindStringSubmatch(s.logs.String())
	if m == nil {
		s.t.Fatalf("no address in the log:\n%s", s.logs)
	}
	return "http://" + m[1] + path
}

// get fetches url and returns its status and body; 0 when it could not.
func get(url string) (int, string) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// scrape reads /metrics into series ("name{labels}") and values.
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	code, body := get(url)
	if code != http.StatusOK {
		t.Fatalf("GET %s: %d %s", url, code, body)
	}
	series := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("unreadable line %q", line)
		}
		series[line[:i]] = v
	}
	return series
}

// The metrics follow the service: rows purged and files removed move the
// counters, a storage outage shows in the errors and the outbox, and
// /readyz turns 503 while PostgreSQL is away and 200 once it is back.
func TestServiceMetricsFollowThePurge(t *testing.T) {
	srv := testdb.StartServer(t)
	f := newForumOn(t, srv)
	serviceEnv(t, f, "1s")
	t.Setenv("RECONCILE_SWEEP_MAX_WAIT", "1s")
	backend, bucket, down := flakyS3(t)
	put := func(key string) {
		meta := map[string]string{"Last-Modified": time.Now().UTC().Format(http.TimeFormat)}
		if _, err := backend.PutObject(bucket, key, meta, strings.NewReader("img"), 3, nil); err != nil {
			t.Fatal(err)
		}
	}
	// A live row, so the storage probe finds a file.
	put("forum/attachments/live.jpg")
	f.add("forum/attachments/live.jpg", -1)
	f.migrate()
	s := startService(t, false)
	metricsURL, readyURL := s.url("/metrics"), s.url("/readyz")

	start := map[string]float64{
		"reconcile_replication_connected":              1,
		"reconcile_leader":                             1,
		"reconcile_purged_rows_total":                  0,
		"reconcile_slot_active":                        1,
		"reconcile_index_rows":                         0,
		`reconcile_rescans_total{reason="new_slot"}`:   1,
		`reconcile_slot_wal_status{status="reserved"}`: 1,
		"reconcile_slot_max_retained_wal_bytes":        1 << 30,
	}
	var m map[string]float64
	// The slot turns active once the stream starts, after the first reading.
	eventually(t, 2*gaugesFresh, func() bool {
		m = scrape(t, metricsURL)
		for series, want := range start {
			if m[series] != want {
				return false
			}
		}
		return true
	}, func() string {
		names := make([]string, 0, len(start))
		for n := range start {
			names = append(names, n)
		}
		return fmt.Sprintf("at start: %v, want %v", pick(m, names...), start)
	})
	if code, body := get(readyURL); code != http.StatusOK {
		t.Errorf("/readyz while streaming: %d %s", code, body)
	}

	// Three rows fall due: purged, files removed.
	var ids []string
	for i := range 3 {
		key := fmt.Sprintf("forum/attachments/due-%d.jpg", i)
		put(key)
		id := f.add(key, -1)
		f.softDelete(id)
		ids = append(ids, id)
	}
	eventually(t, 15*time.Second, func() bool {
		m = scrape(t, metricsURL)
		return m["reconcile_purged_rows_total"] == 3 && m["reconcile_files_removed_total"] == 3
	}, func() string {
		return fmt.Sprintf("counters did not follow the purge: %v\n%s", pick(m, "reconcile_purged_rows_total", "reconcile_files_removed_total"), s.logs)
	})
	for _, id := range ids {
		if f.exists(id) {
			t.Errorf("row %s is still there", id)
		}
	}
	if m[`reconcile_storage_request_duration_seconds_count{op="remove"}`] < 1 {
		t.Errorf("no storage removal timed: %v", m)
	}
	if m["reconcile_last_sweep_timestamp_seconds"] < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Errorf("last sweep %v: not recent", m["reconcile_last_sweep_timestamp_seconds"])
	}
	if lag := m["reconcile_replication_lag_seconds"]; lag <= 0 || lag > 30 {
		t.Errorf("replication lag %vs; want a fresh, positive figure", lag)
	}

	// The storage goes down: the next row is purged, its file waits.
	down.Store(true)
	put("forum/attachments/outage.jpg")
	id := f.add("forum/attachments/outage.jpg", -1)
	f.softDelete(id)
	time.Sleep(gaugesFresh) // the gauges a scrape reads are this old at most
	eventually(t, 20*time.Second, func() bool {
		m = scrape(t, metricsURL)
		return m[`reconcile_purge_errors_total{reason="storage"}`] >= 1 && m["reconcile_outbox_pending"] == 1 && m["reconcile_outbox_oldest_age_seconds"] > 0
	}, func() string {
		return fmt.Sprintf("the outage does not show: %v\n%s", pick(m, `reconcile_purge_errors_total{reason="storage"}`, "reconcile_outbox_pending", "reconcile_outbox_oldest_age_seconds"), s.logs)
	})
	if m["reconcile_purged_rows_total"] != 4 {
		t.Errorf("purged rows %v, want 4", m["reconcile_purged_rows_total"])
	}
	down.Store(false)
	eventually(t, 40*time.Second, func() bool {
		m = scrape(t, metricsURL)
		return m["reconcile_files_removed_total"] == 4 && m["reconcile_outbox_pending"] == 0
	}, func() string {
		return fmt.Sprintf("the outbox never drained: %v", pick(m, "reconcile_files_removed_total", "reconcile_outbox_pending"))
	})

	// PostgreSQL goes away: not ready; back: ready again.
	srv.Halt(t)
	eventually(t, 15*time.Second, func() bool { code, _ := get(readyURL); return code == http.StatusServiceUnavailable },
		func() string {
			code, body := get(readyURL)
			return fmt.Sprintf("/readyz with PostgreSQL stopped: %d %s", code, body)
		})
	if code, _ := get(s.url("/healthz")); code != http.StatusOK {
		t.Errorf("/healthz with PostgreSQL stopped: %d, want 200: the process lives", code)
	}
	srv.Resume(t)
	eventually(t, 40*time.Second, func() bool { code, _ := get(readyURL); return code == http.StatusOK },
		func() string {
			code, body := get(readyURL)
			return fmt.Sprintf("/readyz after PostgreSQL came back: %d %s\n%s", code, body, s.logs)
		})
	if m = scrape(t, metricsURL); m["reconcile_reconnects_total"] < 1 {
		t.Errorf("reconnects %v, want at least 1", m["reconcile_reconnects_total"])
	}
}

func pick(m map[string]float64, names ...string) map[string]float64 {
	out := map[string]float64{}
	for _, n := range names {
		out[n] = m[n]
	}
	return out
}

// A slot holding more WAL than replication.max_retained_wal is warned of,
// as is a server that lets a slot keep WAL without bound.
func TestServiceWarnsOfRetainedWAL(t *testing.T) {
	f := newForum(t)
	serviceEnv(t, f, "1h")
	t.Setenv("RECONCILE_REPLICATION_MAX_RETAINED_WAL", "1") // a byte: any WAL at all
	f.migrate()
	s := startService(t, false)
	s.waitLog("max_slot_wal_keep_size is unlimited", 1)
	// A scrape reads the slot, as the service does every 30 s.
	var m map[string]float64
	eventually(t, 3*gaugesFresh, func() bool {
		m = scrape(t, s.url("/metrics"))
		return s.logs.count("the replication slot holds more WAL than replication.max_retained_wal") == 1
	}, func() string { return "no warning:\n" + s.logs.String() })
	if m["reconcile_slot_retained_wal_bytes"] <= m["reconcile_slot_max_retained_wal_bytes"] || m["reconcile_slot_max_retained_wal_bytes"] != 1 {
		t.Errorf("retained %v, max %v: want the retained WAL above the bound of 1 byte",
			m["reconcile_slot_retained_wal_bytes"], m["reconcile_slot_max_retained_wal_bytes"])
	}

	// On a quiet table the heartbeats keep the lag fresh: without them it
	// would be the age of the last transaction.
	f.add("forum/attachments/last-change.jpg", -1)
	time.Sleep(4 * time.Second)
	if lag := scrape(t, s.url("/metrics"))["reconcile_replication_lag_seconds"]; lag <= 0 || lag > 2.5 {
		t.Errorf("replication lag %vs, 4 s after the last change; want the heartbeats' (under 2.5 s)", lag)
	}
}

// A one-shot run writes its metrics for node_exporter's textfile
// collector; a failed run keeps the time of the last success.
func TestRescanWritesTheMetricsFile(t *testing.T) {
	f := newForum(t)
	f.add("forum/attachments/live.jpg", -1)
	for i := range 3 {
		f.add(fmt.Sprintf("forum/attachments/old-%d.jpg", i), 48)
	}
	f.migrate()
	prom := filepath.Join(t.TempDir(), "reconcile.prom")
	code, out, errOut := reconcile("--rescan", "--metrics-file", prom)
	if code != exitOK {
		t.Fatalf("exit %d\n%s\n%s", code, out, errOut)
	}
	text := readFile(t, prom)
	for _, want := range []string{
		"reconcile_purged_rows_total 3",
		"reconcile_files_removed_total 3",
		`reconcile_rescans_total{reason="once"} 1`,
		"reconcile_outbox_pending 0",
		"reconcile_last_run_success 1",
		"reconcile_last_success_timestamp_seconds ",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics file lacks %q:\n%s", want, text)
		}
	}
	success := regexp.MustCompile(`reconcile_last_success_timestamp_seconds (\S+)`).FindStringSubmatch(text)

	// The storage holds none of the table's files: the run fails.
	if err := os.RemoveAll(filepath.Join(f.root, "forum")); err != nil {
		t.Fatal(err)
	}
	f.add("forum/attachments/gone.jpg", 48)
	if err := os.RemoveAll(filepath.Join(f.root, "forum")); err != nil {
		t.Fatal(err)
	}
	if code, out, errOut = reconcile("--rescan", "--metrics-file", prom); code != exitFailed {
		t.Fatalf("exit %d with the storage empty, want %d\n%s\n%s", code, exitFailed, out, errOut)
	}
	text = readFile(t, prom)
	for _, want := range []string{"reconcile_last_run_success 0", `reconcile_purge_errors_total{reason="probe"} 1`, success[0]} {
		if !strings.Contains(text, want) {
			t.Errorf("after a failed run, the metrics file lacks %q:\n%s", want, text)
		}
	}

	for _, args := range [][]string{
		{"--metrics-file", prom},
		{"--rescan", "--metrics-file", filepath.Join(t.TempDir(), "missing", "reconcile.prom")},
	} {
		if code, _, errOut := reconcile(args...); code != exitUsage || !strings.Contains(errOut, "--metrics-file") {
			t.Errorf("%v: exit %d, %q; want %d naming --metrics-file", args, code, errOut, exitUsage)
		}
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// A port another process holds is no configuration error: the service
// exits 1, which its supervisor restarts, not 2, which it does not.
func TestServiceExitsOneWhenItsPortIsTaken(t *testing.T) {
	f := newForum(t)
	serviceEnv(t, f, "1h")
	f.migrate()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	t.Setenv("RECONCILE_HTTP_LISTEN", ln.Addr().String())
	if code, _, errOut := reconcile(); code != exitFailed || !strings.Contains(errOut, "http.listen "+ln.Addr().String()) {
		t.Errorf("exit %d, %q; want %d naming http.listen", code, errOut, exitFailed)
	}
	// A one-shot run goes on without its metrics.
	f.add("forum/attachments/old.jpg", 48)
	if code, out, errOut := reconcile("--rescan"); code != exitOK || !strings.Contains(errOut, "serving no metrics") {
		t.Errorf("--rescan with the port taken: exit %d\n%s\n%s", code, out, errOut)
	}
}

// Rows the run refused are counted as such, not as a purge that stopped
// short; the index's own path is refused as a metrics file, as is a folder.
func TestMetricsFileCountsAndPaths(t *testing.T) {
	f := newForum(t)
	f.add("forum/attachments/live.jpg", -1)
	f.add("forum/attachments/ok.jpg", 48)
	f.add("../outside.jpg", 48) // refused: outside the storage root
	f.migrate()
	prom := filepath.Join(t.TempDir(), "reconcile.prom")
	if code, out, errOut := reconcile("--rescan", "--metrics-file", prom); code != exitFailed {
		t.Fatalf("exit %d, want %d\n%s\n%s", code, exitFailed, out, errOut)
	}
	text := readFile(t, prom)
	for _, want := range []string{`reconcile_purge_errors_total{reason="row"} 1`, `reconcile_purge_errors_total{reason="batch"} 0`, "reconcile_purged_rows_total 1"} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics file lacks %q:\n%s", want, text)
		}
	}

	folder := t.TempDir()
	for _, path := range []string{os.Getenv("RECONCILE_INDEX_PATH"), folder} {
		if code, _, errOut := reconcile("--rescan", "--metrics-file", path); code != exitUsage || !strings.Contains(errOut, "--metrics-file") {
			t.Errorf("--metrics-file %s: exit %d, %q; want %d", path, code, errOut, exitUsage)
		}
	}
	if code, out, errOut := reconcile("--rescan"); code != exitFailed || !strings.Contains(out, "Cleanup complete") {
		t.Errorf("the run after: exit %d\nstdout: %q\nstderr: %q", code, out, errOut)
	}
}
