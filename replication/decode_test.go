package replication

import (
	"errors"
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
	for _, s := range []string{"infinity", "1500-01-01 00:00:00+00", "2300-01-01 00:00:00+00"} {
		if _, err := parseTimestamp(s); err == nil {
			t.Errorf("%s parsed: the index cannot order it", s)
		}
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

func TestUnreadableDeletedAtIsARemoval(t *testing.T) {
	rel := &relation{id: 0, key: 1, isActive: 2, deletedAt: 3}
	text := func(s string) *pglogrepl.TupleDataColumn {
		return &pglogrepl.TupleDataColumn{DataType: pglogrepl.TupleDataTypeText, Data: []byte(s)}
	}
	c, err := rel.rowChange(&pglogrepl.TupleData{Columns: []*pglogrepl.TupleDataColumn{text("1"), text("a.jpg"), text("f"), text("infinity")}})
	if !errors.Is(err, errUnreadable) || c.Op != index.Remove || c.Entry.ID != "1" {
		t.Fatalf("%+v, %v; want a removal and errUnreadable", c, err)
	}
}

func TestMatchesStandbyNames(t *testing.T) {
	for setting, want := range map[string]bool{
		"":                                  false,
		"*":                                 true,
		"FIRST 1 (*)":                       true,
		"ANY 2 (standby1, standby2)":        false,
		"reconcile_attachments":             true,
		`FIRST 1 ("Reconcile_Attachments")`: true,
		"standby1,reconcile_attachments2":   false,
	} {
		if got := matchesStandbyNames(setting, "reconcile_attachments"); got != want {
			t.Errorf("matchesStandbyNames(%q) = %v; want %v", setting, got, want)
		}
	}
}

func TestDeletedReadsTheOldImage(t *testing.T) {
	rel := &relation{id: 0, key: 1, isActive: 2, deletedAt: 3}
	text := func(s string) *pglogrepl.TupleDataColumn {
		return &pglogrepl.TupleDataColumn{DataType: pglogrepl.TupleDataTypeText, Data: []byte(s)}
	}
	null := &pglogrepl.TupleDataColumn{DataType: pglogrepl.TupleDataTypeNull}
	at := "2026-11-25 01:02:03+00"
	for _, tc := range []struct {
		name  string
		cols  []*pglogrepl.TupleDataColumn
		ok    bool
		soft  bool
		inKey string
	}{
		{"full image of a live row", []*pglogrepl.TupleDataColumn{text("1"), text("a.jpg"), text("t"), null}, true, false, "a.jpg"},
		{"full image of a soft-deleted row", []*pglogrepl.TupleDataColumn{text("1"), text("a.jpg"), text("f"), text(at)}, true, true, "a.jpg"},
		{"the primary key alone (default identity)", []*pglogrepl.TupleDataColumn{text("1"), null, null, null}, false, false, ""},
		{"no file", []*pglogrepl.TupleDataColumn{text("1"), text(""), text("t"), null}, false, false, ""},
	} {
		d, ok := rel.deleted(&pglogrepl.TupleData{Columns: tc.cols})
		if ok != tc.ok || ok && (d.ID != "1" || d.Key != tc.inKey || d.SoftDeleted != tc.soft) {
			t.Errorf("%s: %+v, %v", tc.name, d, ok)
		}
	}
}
