package reconciler_test

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"strings"
	"testing"

	"github.com/reconcile/reconcile/reconciler"
)

func TestAuditReportsDueRefusedAndInconsistentRows(t *testing.T) {
	b := setup(t)
	ids := b.seed(
		due("audit/due-1.jpg"),
		due("audit/due-2.jpg"),
		row{key: "../outside.jpg", deletedAt: ago(3 * retention), noFile: true},
		row{key: "audit/recent.jpg", deletedAt: ago(retention / 2)},
		row{key: "audit/active.jpg", active: true},
		row{key: "audit/inconsistent.jpg"},
	)
	before := b.count(`SELECT count(*) FROM forum_attachment`)

	var out bytes.Buffer
	w, err := reconciler.NewAuditWriter("json", &out, nil)
	if err != nil {
		t.Fatal(err)
	}
	totals, err := b.r.Audit(b.ctx, w, nil)
	if err != nil {
		t.Fatal(err)
	}
	if totals.Due != 2 || totals.Refused != 1 || totals.Inconsistent != 1 {
		t.Fatalf("totals = %+v, want 2 due, 1 refused, 1 inconsistent", totals)
	}
	var report struct {
		DryRun       bool                  `json:"dry_run"`
		Due          []reconciler.AuditRow `json:"due"`
		Inconsistent []reconciler.AuditRow `json:"inconsistent"`
		Totals       map[string]any        `json:"totals"`
	}
	if err := json.Unmarshal(out.Bytes(), &report); err != nil {
		t.Fatalf("report is not JSON: %v\n%s", err, out.String())
	}
	if !report.DryRun || len(report.Due) != 3 || len(report.Inconsistent) != 1 || report.Totals["would_delete"] != 2.0 {
		t.Fatalf("report = %s", out.String())
	}
	// Oldest first: the refused row was deleted earliest.
	if report.Due[0].ID != ids[2] || report.Due[0].Refused == "" || *report.Due[0].DaysSinceDeleted != 0 {
		t.Errorf("first due row = %+v, want the refused one", report.Due[0])
	}
	if report.Inconsistent[0].ID != ids[5] || report.Inconsistent[0].DeletedAt != nil {
		t.Errorf("inconsistent row = %+v", report.Inconsistent[0])
	}

	// The same audit as text and CSV.
	var text, csvOut, csvTotals bytes.Buffer
	for _, f := range []struct {
		format     string
		out, total *bytes.Buffer
	}{{"text", &text, nil}, {"csv", &csvOut, &csvTotals}} {
		w, err := reconciler.NewAuditWriter(f.format, f.out, f.total)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.r.Audit(b.ctx, w, nil); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range []string{ids[0], "audit/due-2.jpg", "orig-due-1.jpg", "REFUSED", "Inconsistent rows", "Would delete: 2 attachments", "Cutoff date: "} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("text report lacks %q:\n%s", want, text.String())
		}
	}
	records, err := csv.NewReader(&csvOut).ReadAll()
	if err != nil || len(records) != 5 || records[0][0] != "status" || records[1][0] != "refused" || records[4][0] != "inconsistent" {
		t.Errorf("csv report = %q, err %v", records, err)
	}
	if !strings.Contains(csvTotals.String(), "would delete 2") {
		t.Errorf("csv totals = %q", csvTotals.String())
	}

	if after := b.count(`SELECT count(*) FROM forum_attachment`); after != before || !b.fileExists("audit/due-1.jpg") {
		t.Fatalf("the audit changed something: %d rows before, %d after", before, after)
	}
}

// A deleted_at of ±infinity is no time: the audit lists such rows as
// inconsistent, and the rescan and the purge leave them alone instead of
// failing on them.
func TestInfiniteDeletedAtIsInconsistentAndKept(t *testing.T) {
	b := setup(t)
	ids := b.seed(due("inf/due.jpg"), row{key: "inf/past.jpg"}, row{key: "inf/future.jpg"})
	for i, v := range []string{"-infinity", "infinity"} {
		if _, err := b.pool.Exec(b.ctx, `UPDATE forum_attachment SET deleted_at = $2::text::timestamptz WHERE id = $1`, ids[i+1], v); err != nil {
			t.Fatal(err)
		}
	}
	var out bytes.Buffer
	w, err := reconciler.NewAuditWriter("text", &out, nil)
	if err != nil {
		t.Fatal(err)
	}
	totals, err := b.r.Audit(b.ctx, w, nil)
	if err != nil || totals.Due != 1 || totals.Inconsistent != 2 {
		t.Fatalf("totals %+v, %v; want 1 due and 2 inconsistent\n%s", totals, err, out.String())
	}
	if s := b.run(); s.Purged != 1 || s.Failed != 0 {
		t.Fatalf("purge: %+v; want the due row purged and nothing failed", s)
	}
	if !b.rowExists(ids[1]) || !b.rowExists(ids[2]) {
		t.Fatal("a row with an infinite deleted_at was purged")
	}
}
