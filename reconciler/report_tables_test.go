package reconciler_test

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/reconcile/reconcile/reconciler"
)

// writeTables feeds a report of two tables to the writer of format: one
// due row in the first, one due and one inconsistent row in the second.
func writeTables(t *testing.T, format string) (out, totals string) {
	t.Helper()
	var o, tot bytes.Buffer
	w, err := reconciler.NewTablesAuditWriter(format, &o, &tot)
	if err != nil {
		t.Fatal(err)
	}
	deleted := time.Date(2025, 10, 4, 2, 0, 0, 0, time.UTC)
	days := 9
	due := func(id, key string) reconciler.AuditRow {
		return reconciler.AuditRow{ID: id, StorageKey: key, DeletedAt: &deleted, DaysSinceDeleted: &days}
	}
	sum := reconciler.AuditSum{Tables: 2, MaxDeletes: 1}
	for _, tb := range []struct {
		name         string
		due          []reconciler.AuditRow
		inconsistent []reconciler.AuditRow
		totals       reconciler.AuditTotals
	}{
		{"public.forum_attachment", []reconciler.AuditRow{due("f1", "forum/a.jpg")}, nil,
			reconciler.AuditTotals{Retention: 30 * 24 * time.Hour, Due: 1, MaxDeletes: 1, ThisRun: 1}},
		{"blog.image", []reconciler.AuditRow{due("7", "blog/b.jpg, blog/c.jpg")}, []reconciler.AuditRow{{ID: "8", StorageKey: "blog/d.jpg"}},
			reconciler.AuditTotals{Retention: 7 * 24 * time.Hour, Due: 1, Inconsistent: 1, MaxDeletes: 1}},
	} {
		tw, err := w.Table(tb.name, tb.totals.Retention)
		if err != nil {
			t.Fatal(err)
		}
		for _, row := range tb.due {
			if err := tw.Due(row); err != nil {
				t.Fatal(err)
			}
		}
		for _, row := range tb.inconsistent {
			if err := tw.Inconsistent(row); err != nil {
				t.Fatal(err)
			}
		}
		if err := tw.Close(tb.totals); err != nil {
			t.Fatal(err)
		}
		sum.Due += tb.totals.Due
		sum.Inconsistent += tb.totals.Inconsistent
		sum.ThisRun += tb.totals.ThisRun
	}
	if err := w.Close(sum); err != nil {
		t.Fatal(err)
	}
	return o.String(), tot.String()
}

func TestTablesAuditReportJSON(t *testing.T) {
	out, _ := writeTables(t, "json")
	if strings.Count(out, "\n") != 1 || !strings.HasSuffix(out, "}\n") {
		t.Errorf("want one line of JSON, got %q", out)
	}
	var report struct {
		DryRun bool `json:"dry_run"`
		Tables []struct {
			Table        string                `json:"table"`
			DryRun       bool                  `json:"dry_run"`
			Due          []reconciler.AuditRow `json:"due"`
			Inconsistent []reconciler.AuditRow `json:"inconsistent"`
			Totals       map[string]any        `json:"totals"`
		} `json:"tables"`
		Totals map[string]any `json:"totals"`
	}
	if err := json.Unmarshal([]byte(out), &report); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	if !report.DryRun || len(report.Tables) != 2 {
		t.Fatalf("report = %s", out)
	}
	first, second := report.Tables[0], report.Tables[1]
	if first.Table != "public.forum_attachment" || !first.DryRun || len(first.Due) != 1 || len(first.Inconsistent) != 0 ||
		first.Totals["retention"] != "720h0m0s" || first.Totals["this_run"] != 1.0 {
		t.Errorf("first table = %+v", first)
	}
	if second.Table != "blog.image" || len(second.Due) != 1 || second.Due[0].StorageKey != "blog/b.jpg, blog/c.jpg" ||
		len(second.Inconsistent) != 1 || second.Totals["this_run"] != 0.0 {
		t.Errorf("second table = %+v", second)
	}
	if report.Totals["tables"] != 2.0 || report.Totals["would_delete"] != 2.0 || report.Totals["inconsistent"] != 1.0 ||
		report.Totals["this_run"] != 1.0 || report.Totals["max_deletes"] != 1.0 {
		t.Errorf("totals = %v", report.Totals)
	}
}

func TestTablesAuditReportCSV(t *testing.T) {
	out, totals := writeTables(t, "csv")
	records, err := csv.NewReader(strings.NewReader(out)).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	want := [][2]string{{"table", "status"}, {"public.forum_attachment", "due"}, {"blog.image", "due"}, {"blog.image", "inconsistent"}}
	if len(records) != len(want) {
		t.Fatalf("records = %q", records)
	}
	for i, w := range want {
		if records[i][0] != w[0] || records[i][1] != w[1] || len(records[i]) != 8 {
			t.Errorf("record %d = %q, want it to start with %q", i, records[i], w)
		}
	}
	for _, line := range []string{
		"Dry run complete of public.forum_attachment: would delete 1 (0 without a file; 1 in the next run), refused 0, inconsistent 0; retention 30 days",
		"Dry run complete of blog.image: would delete 1 (0 without a file; 0 in the next run), refused 0, inconsistent 1; retention 7 days",
		"Dry run complete, all 2 tables: would delete 2 (0 without a file; 1 in the next run), refused 0, inconsistent 1\n",
	} {
		if !strings.Contains(totals, line) {
			t.Errorf("totals lack %q:\n%s", line, totals)
		}
	}
}

func TestTablesAuditReportText(t *testing.T) {
	out, _ := writeTables(t, "text")
	for _, want := range []string{
		"Table public.forum_attachment (retention 30 days):\nDry run: nothing is deleted.",
		"\n\nTable blog.image (retention 7 days):\n",
		"blog/b.jpg, blog/c.jpg",
		"\nAll 2 tables:\n  - Would delete: 2 attachments\n  - The next run would delete: 1 attachments (safety.max_deletes is 1, for all tables)\n",
		"  - Inconsistent (no usable deleted_at, never purged): 1 attachments\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("text lacks %q:\n%s", want, out)
		}
	}
	if n := strings.Count(out, "Dry run complete:"); n != 2 {
		t.Errorf("%d closing blocks; want one per table:\n%s", n, out)
	}
}
