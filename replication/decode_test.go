package replication

import (
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/reconcile/reconcile/index"
)

func TestParseTimestampReadsTheServersTextForms(t *testing.T) {
	want := time.Date(2026, 11, 25, 1, 2, 3, 456789000, time.UTC)
	for _, s := range []string{
		"2026-11-25 01:02:03.456789+00",    // timestamptz, TimeZone UTC
		"2026-11-25 02:32:03.456789+01:30", // another zone
		"2026-11-25 01:02:03.456789",       // timestamp without time zone
	} {
		got, err := parseTimestamp(s)
		if err != nil || !got.Equal(want) {
			t.Errorf("parseTimestamp(%q) = %s, %v; want %s", s, got, err, want)
		}
	}
	if _, err := parseTimestamp("infinity"); err == nil {
		t.Error("infinity parsed")
	}
}

func TestRowChangeFollowsIsActiveAndDeletedAt(t *testing.T) {
	rel := &relation{id: 0, key: 1, isActive: 2, deletedAt: 3}
	text := func(s string) *pglogrepl.TupleDataColumn {
		return &pglogrepl.TupleDataColumn{DataType: pglogrepl.TupleDataTypeText, Data: []byte(s)}
	}
	null := &pglogrepl.TupleDataColumn{DataType: pglogrepl.TupleDataTypeNull}
	toast := &pglogrepl.TupleDataColumn{DataType: pglogrepl.TupleDataTypeToast}
	at := "2026-11-25 01:02:03+00"
	for _, tc := range []struct {
		name    string
		cols    []*pglogrepl.TupleDataColumn
		op      index.Op
		key     string
		keyKept bool
	}{
		{"soft-deleted", []*pglogrepl.TupleDataColumn{text("1"), text("a.jpg"), text("f"), text(at)}, index.Upsert, "a.jpg", false},
		{"key in TOAST", []*pglogrepl.TupleDataColumn{text("1"), toast, text("f"), text(at)}, index.Upsert, "", true},
		{"restored", []*pglogrepl.TupleDataColumn{text("1"), text("a.jpg"), text("t"), null}, index.Remove, "", false},
		{"inactive without deleted_at", []*pglogrepl.TupleDataColumn{text("1"), text("a.jpg"), text("f"), null}, index.Remove, "", false},
	} {
		c, err := rel.rowChange(&pglogrepl.TupleData{Columns: tc.cols})
		if err != nil || c.Op != tc.op || c.Entry.ID != "1" || c.Entry.Key != tc.key || c.KeyUnchanged != tc.keyKept {
			t.Errorf("%s: %+v, %v", tc.name, c, err)
		}
	}
}
