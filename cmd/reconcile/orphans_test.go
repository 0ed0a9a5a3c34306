package main

import (
	"encoding/csv"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/reconcile/reconcile/reconciler"
)

func TestOrphansCommand(t *testing.T) {
	f := newForum(t)
	t.Setenv("RECONCILE_TABLE_DERIVED", "imagekit")
	f.add("forum/attachments/2025/10/04/live.jpg", -1)
	f.writeOld("forum/attachments/2025/10/04/failed-upload.jpg")
	f.writeOld("CACHE/images/forum/attachments/2025/10/04/gone/0123456789abcdef0123456789abcdef.jpg")
	f.writeOld("CACHE/images/forum/attachments/2025/10/04/live/0123456789abcdef0123456789abcdef.jpg")
	f.writeOld("elsewhere/x.jpg")

	if code, _, stderr := reconcile("orphans", "--dry-run"); code != exitUsage || !strings.Contains(stderr, "reconcile migrate") {
		t.Fatalf("before migrate: exit %d, %s", code, stderr)
	}
	f.migrate()
	if code, _, stderr := reconcile("orphans", "--format", "xml"); code != exitUsage {
		t.Fatalf("--format xml: exit %d, %s", code, stderr)
	}

	code, out, stderr := reconcile("orphans", "--dry-run", "--format", "json")
	if code != exitOK {
		t.Fatalf("dry run: exit %d\n%s\n%s", code, out, stderr)
	}
	var report struct {
		Files  []reconciler.Orphan     `json:"files"`
		Totals reconciler.OrphanTotals `json:"totals"`
	}
	if err := json.Unmarshal([]byte(out), &report); err != nil {
		t.Fatalf("json report: %v\n%s", err, out)
	}
	if len(report.Files) != 2 || report.Totals.Orphans != 2 || report.Totals.Bytes == 0 || report.Files[0].Action != "would remove" {
		t.Fatalf("json report %+v", report)
	}

	path := filepath.Join(t.TempDir(), "orphans.csv")
	code, _, stderr = reconcile("orphans", "--format", "csv", "--output", path)
	if code != exitOK {
		t.Fatalf("removal: exit %d\n%s", code, stderr)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	records, err := csv.NewReader(strings.NewReader(string(raw))).ReadAll()
	if err != nil || len(records) != 3 || records[1][0] != "removed" || records[2][0] != "removed" {
		t.Fatalf("csv report %q, %v", records, err)
	}
	if !f.fileGone("forum/attachments/2025/10/04/failed-upload.jpg") ||
		!f.fileGone("CACHE/images/forum/attachments/2025/10/04/gone/0123456789abcdef0123456789abcdef.jpg") {
		t.Error("an orphan was left")
	}
	for _, key := range []string{"forum/attachments/2025/10/04/live.jpg", "CACHE/images/forum/attachments/2025/10/04/live/0123456789abcdef0123456789abcdef.jpg", "elsewhere/x.jpg"} {
		if f.fileGone(key) {
			t.Errorf("%s removed", key)
		}
	}
	code, out, _ = reconcile("orphans", "--dry-run")
	if code != exitOK || !strings.Contains(out, "No file under the table's prefixes lacks an owner.") {
		t.Errorf("second run: exit %d\n%s", code, out)
	}
}
