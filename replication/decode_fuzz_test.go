package replication

import (
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pglogrepl"

	"github.com/reconcile/reconcile/index"
)

// insertMessage writes a pgoutput Insert message of relation 1 whose tuple
// holds the given columns: kind 't' (text), 'n' (null) or 'u' (unchanged
// TOAST), as the server sends them.
func insertMessage(kinds []byte, values []string) []byte {
	b := []byte{'I'}
	b = binary.BigEndian.AppendUint32(b, 1)
	b = append(b, 'N')
	b = binary.BigEndian.AppendUint16(b, uint16(len(kinds)))
	for i, kind := range kinds {
		b = append(b, kind)
		if kind == 't' {
			b = binary.BigEndian.AppendUint32(b, uint32(len(values[i])))
			b = append(b, values[i]...)
		}
	}
	return b
}

// decodeRow turns a message into the change it makes, as the stream does.
func decodeRow(rel *relation, msg []byte) (index.Change, bool, error) {
	m, err := parseMessage(msg)
	if err != nil {
		return index.Change{}, false, nil // the stream reports a message it cannot parse
	}
	switch m := m.(type) {
	case *pglogrepl.InsertMessage:
		c, err := rel.rowChange(m.Tuple)
		return c, true, err
	case *pglogrepl.UpdateMessage:
		c, err := rel.rowChange(m.NewTuple)
		return c, true, err
	case *pglogrepl.DeleteMessage:
		c, err := rel.removal(m.OldTuple)
		return c, true, err
	}
	return index.Change{}, false, nil
}

// checkChange holds what any change decoded from the stream must be: a
// known operation on a row named by its id, a soft-delete with a time the
// index can order, and only the errors the stream knows how to handle.
func checkChange(t *testing.T, c index.Change, err error) {
	t.Helper()
	if err != nil {
		if !errors.Is(err, errUnreadable) && !strings.Contains(err.Error(), "change without its id column") {
			t.Fatalf("unexpected error: %v", err)
		}
		if errors.Is(err, errUnreadable) && c.Op != index.Remove {
			t.Fatalf("an unreadable deleted_at gave %+v; want a removal", c)
		}
		return
	}
	switch c.Op {
	case index.Upsert:
		if !c.Entry.DeletedAt.After(earliestTime) || !c.Entry.DeletedAt.Before(latestTime) {
			t.Fatalf("soft-delete at %s, out of the index's range", c.Entry.DeletedAt)
		}
		if c.KeyUnchanged && c.Entry.Key != "" {
			t.Fatalf("an unchanged key came with a value: %+v", c)
		}
	case index.Remove:
	default:
		t.Fatalf("change %+v has no known operation", c)
	}
}

// Arbitrary bytes, parsed as pgoutput messages and decoded: never a panic,
// only the documented outcomes.
func FuzzDecodeMessage(f *testing.F) {
	f.Add(insertMessage([]byte("tttt"), []string{"1", "a.jpg", "f", "2026-11-25 01:02:03+00"}))
	f.Add(insertMessage([]byte("tutt"), []string{"1", "", "f", "2026-11-25 01:02:03.5+05:30"}))
	f.Add(insertMessage([]byte("ttnn"), []string{"1", "a.jpg", "", ""}))
	f.Add(insertMessage([]byte("tt"), []string{"1", "a.jpg"}))
	f.Add(insertMessage([]byte("ttt"), []string{"", "", ""}))
	f.Add([]byte{'U', 0, 0, 0, 1, 'N', 0, 1, 't', 0, 0, 0, 1, '7'})
	f.Add([]byte{'D', 0, 0, 0, 1, 'K', 0, 1, 't', 0, 0, 0, 1, '7'})
	f.Add([]byte{'I', 0, 0, 0, 1, 'N', 0xff, 0xff})
	f.Add([]byte{})
	rel := &relation{id: 0, key: 1, isActive: 2, deletedAt: 3}
	f.Fuzz(func(t *testing.T, msg []byte) {
		c, ok, err := decodeRow(rel, msg)
		if ok {
			checkChange(t, c, err)
		}
	})
}

// A row the server sends decodes to what it holds: its id, its key (or
// the stored one when unchanged), a soft-delete exactly when is_active is
// false and deleted_at a time the index can order.
func FuzzDecodeRow(f *testing.F) {
	f.Add("1", "forum/a.jpg", "f", "2026-11-25 01:02:03+00", byte('t'), byte('t'))
	f.Add("2", "", "f", "2026-11-25 01:02:03", byte('u'), byte('t'))
	f.Add("3", "x", "t", "", byte('t'), byte('n'))
	f.Add("4", "x", "f", "infinity", byte('t'), byte('t'))
	f.Add("5", "x", "f", "0001-01-01 00:00:00+00 BC", byte('n'), byte('t'))
	rel := &relation{id: 0, key: 1, isActive: 2, deletedAt: 3}
	f.Fuzz(func(t *testing.T, id, key, active, deletedAt string, keyKind, deletedKind byte) {
		kinds := []byte{'t', "tnu"[int(keyKind)%3], 't', "tn"[int(deletedKind)%2]}
		c, ok, err := decodeRow(rel, insertMessage(kinds, []string{id, key, active, deletedAt}))
		if !ok {
			t.Fatal("a well-formed insert was not decoded")
		}
		checkChange(t, c, err)
		if c.Entry.ID != id {
			t.Fatalf("id %q decoded as %q", id, c.Entry.ID)
		}
		at, tsErr := parseTimestamp(deletedAt)
		softDeleted := active == "f" && kinds[3] == 't' && tsErr == nil
		if (c.Op == index.Upsert) != softDeleted || (err != nil) != (active == "f" && kinds[3] == 't' && tsErr != nil) {
			t.Fatalf("active %q, deleted_at %q (%c): %+v, %v", active, deletedAt, kinds[3], c, err)
		}
		if !softDeleted {
			return
		}
		if !c.Entry.DeletedAt.Equal(at) {
			t.Fatalf("deleted_at %q decoded as %s", deletedAt, c.Entry.DeletedAt)
		}
		switch kinds[1] {
		case 't':
			if c.Entry.Key != key || c.KeyUnchanged {
				t.Fatalf("key %q decoded as %q (unchanged %v)", key, c.Entry.Key, c.KeyUnchanged)
			}
		case 'u':
			if !c.KeyUnchanged {
				t.Fatal("an unchanged TOAST key was not kept")
			}
		case 'n':
			if c.Entry.Key != "" || c.KeyUnchanged {
				t.Fatalf("a NULL key decoded as %q (unchanged %v)", c.Entry.Key, c.KeyUnchanged)
			}
		}
	})
}
