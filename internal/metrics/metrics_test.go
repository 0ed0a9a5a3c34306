package metrics

import (
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func scrape(t *testing.T, m *Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	return string(body)
}

func TestHandlerServesEveryMetricAndTheRuntime(t *testing.T) {
	m := New("v1.2.3")
	m.Purged(3)
	m.Files(2, 1, 1)
	m.PurgeErrors("storage", 1)
	m.StorageRequest("remove", 3*time.Millisecond)
	m.SetSlot(Slot{Active: true, WALStatus: "extended", RetainedBytes: 5 << 20, MaxRetainedWAL: 1 << 30})
	m.Applied(time.Now().Add(-2 * time.Second))
	body := scrape(t, m)
	for _, want := range []string{
		"reconcile_purged_rows_total 3",
		"reconcile_files_removed_total 2",
		"reconcile_files_missing_total 1",
		"reconcile_shared_files_kept_total 1",
		`reconcile_purge_errors_total{reason="storage"} 1`,
		`reconcile_purge_errors_total{reason="probe"} 0`,
		`reconcile_storage_request_duration_seconds_count{op="remove"} 1`,
		`reconcile_slot_wal_status{status="extended"} 1`,
		`reconcile_slot_wal_status{status="lost"} 0`,
		"reconcile_slot_retained_wal_bytes 5.24288e+06",
		"reconcile_slot_max_retained_wal_bytes 1.073741824e+09",
		`reconcile_build_info{version="v1.2.3"} 1`,
		`reconcile_rescans_total{reason="periodic"} 0`,
		"reconcile_replication_lag_seconds 2",
		"go_goroutines",
		"process_start_time_seconds",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

func TestTextfileKeepsTheLastSuccessThroughAFailure(t *testing.T) {
	path := filepath.Join(t.TempDir(), "reconcile.prom")
	first := time.Unix(1_700_000_000, 0)
	m := New("v1")
	m.Purged(7)
	if err := m.WriteTextfile(path, true, first); err != nil {
		t.Fatal(err)
	}
	text := read(t, path)
	for _, want := range []string{"reconcile_purged_rows_total 7", "reconcile_last_success_timestamp_seconds 1.7e+09", "reconcile_last_run_success 1"} {
		if !strings.Contains(text, want) {
			t.Errorf("textfile lacks %q:\n%s", want, text)
		}
	}
	for _, absent := range []string{"go_goroutines", "reconcile_leader", "reconcile_slot_active", "reconcile_index_rows"} {
		if strings.Contains(text, absent) {
			t.Errorf("the textfile holds %s, which is not a one-shot run's", absent)
		}
	}

	failed := New("v1")
	if err := failed.WriteTextfile(path, false, first.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	text = read(t, path)
	for _, want := range []string{"reconcile_last_success_timestamp_seconds 1.7e+09", "reconcile_last_run_success 0", "reconcile_last_run_timestamp_seconds 1.7000036e+09"} {
		if !strings.Contains(text, want) {
			t.Errorf("after a failure, the textfile lacks %q:\n%s", want, text)
		}
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("the folder holds %d files, want the textfile alone (no temporary left)", len(entries))
	}

	// A failure with no earlier success says none.
	fresh := filepath.Join(t.TempDir(), "reconcile.prom")
	if err := failed.WriteTextfile(fresh, false, first); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(read(t, fresh), "last_success") {
		t.Error("a first run that failed records a success")
	}
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// A path the textfile cannot replace (a folder holding files) fails the
// write, and leaves the folder and its files as they were, with no
// temporary file behind.
func TestTextfileThatCannotBeReplacedChangesNothing(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "reconcile.prom")
	if err := os.Mkdir(path, 0o755); err != nil {
		t.Fatal(err)
	}
	kept := filepath.Join(path, "keep")
	if err := os.WriteFile(kept, []byte("kept"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := New("v1").WriteTextfile(path, true, time.Now()); err == nil {
		t.Fatal("the textfile replaced a folder")
	}
	if got := read(t, kept); got != "kept" {
		t.Errorf("the folder's file holds %q", got)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("%d entries beside the folder, want none: a temporary file was left", len(entries)-1)
	}
}
