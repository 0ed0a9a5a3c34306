package replication

import (
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/reconcile/reconcile/index"
)

// relation is the attachment table as a Relation message describes it: the
// position of each column reconcile reads in the tuples that follow.
type relation struct {
	id, key, isActive, deletedAt int
	// keyOnlyWarned: a DELETE carrying only the primary key was warned of.
	keyOnlyWarned bool
}

func (s *Stream) newRelation(m *pglogrepl.RelationMessage) (*relation, error) {
	pos := map[string]int{}
	for i, c := range m.Columns {
		pos[c.Name] = i
	}
	var rel relation
	for _, c := range []struct {
		name string
		dst  *int
	}{{s.cfg.ID, &rel.id}, {s.cfg.Key, &rel.key}, {s.cfg.IsActive, &rel.isActive}, {s.cfg.DeletedAt, &rel.deletedAt}} {
		i, ok := pos[c.name]
		if !ok {
			return nil, fmt.Errorf("the stream's description of %s.%s has no column %q: %w", m.Namespace, m.RelationName, c.name, ErrSetup)
		}
		*c.dst = i
	}
	return &rel, nil
}

// rowChange turns the new image of a row into the index change it makes: a
// soft-deleted row is recorded, any other is forgotten.
func (rel *relation) rowChange(tuple *pglogrepl.TupleData) (index.Change, error) {
	id, err := rel.text(tuple, rel.id, "id")
	if err != nil {
		return index.Change{}, err
	}
	active, deleted := rel.col(tuple, rel.isActive), rel.col(tuple, rel.deletedAt)
	if active == nil || active.DataType != pglogrepl.TupleDataTypeText || string(active.Data) != "f" ||
		deleted == nil || deleted.DataType != pglogrepl.TupleDataTypeText {
		return index.Change{Op: index.Remove, Entry: index.Entry{ID: id}}, nil
	}
	at, err := parseTimestamp(string(deleted.Data))
	if err != nil {
		return index.Change{Op: index.Remove, Entry: index.Entry{ID: id}}, fmt.Errorf("row %s: deleted_at: %w: %w", id, err, errUnreadable)
	}
	c := index.Change{Op: index.Upsert, Entry: index.Entry{ID: id, DeletedAt: at}}
	switch key := rel.col(tuple, rel.key); {
	case key == nil || key.DataType == pglogrepl.TupleDataTypeNull:
	case key.DataType == pglogrepl.TupleDataTypeToast:
		c.KeyUnchanged = true
	default:
		c.Entry.Key = string(key.Data)
	}
	return c, nil
}

// errUnreadable marks a row whose deleted_at is not a time reconcile can
// use ('infinity', a date before the common era); its change is a removal.
var errUnreadable = errors.New("unreadable value")

// removal is the change a DELETE makes: its old tuple holds at least the
// replica identity, which reconcile checked includes the id.
func (rel *relation) removal(old *pglogrepl.TupleData) (index.Change, error) {
	id, err := rel.text(old, rel.id, "id")
	if err != nil {
		return index.Change{}, err
	}
	return index.Change{Op: index.Remove, Entry: index.Entry{ID: id}}, nil
}

// deleted reads a DELETE's old image as a row deleted outright: only a
// full image (REPLICA IDENTITY FULL) carries the key; a row without one
// (NULL or ”) had no file.
func (rel *relation) deleted(old *pglogrepl.TupleData) (DeletedRow, bool) {
	id, err := rel.text(old, rel.id, "id")
	key := rel.col(old, rel.key)
	if err != nil || key == nil || key.DataType != pglogrepl.TupleDataTypeText || len(key.Data) == 0 {
		return DeletedRow{}, false
	}
	d := DeletedRow{ID: id, Key: string(key.Data)}
	if c, err := rel.rowChange(old); err == nil && c.Op == index.Upsert {
		d.SoftDeleted, d.DeletedAt = true, c.Entry.DeletedAt
	}
	return d, true
}

func (rel *relation) col(tuple *pglogrepl.TupleData, i int) *pglogrepl.TupleDataColumn {
	if tuple == nil || i >= len(tuple.Columns) {
		return nil
	}
	return tuple.Columns[i]
}

func (rel *relation) text(tuple *pglogrepl.TupleData, i int, what string) (string, error) {
	c := rel.col(tuple, i)
	if c == nil || c.DataType != pglogrepl.TupleDataTypeText {
		return "", fmt.Errorf("change without its %s column", what)
	}
	return string(c.Data), nil
}

// timestampLayouts are the forms of timestamptz and timestamp in the text
// output of a session with DateStyle ISO and TimeZone UTC, as the
// replication connection sets them.
var timestampLayouts = []string{
	"2006-01-02 15:04:05.999999999Z07",
	"2006-01-02 15:04:05.999999999Z07:00",
	"2006-01-02 15:04:05.999999999",
}

// The times the index can order: reconciler's queries hold rescans to the
// same range, so both paths agree on which rows are left alone.
var (
	earliestTime = time.Date(1700, 1, 1, 0, 0, 0, 0, time.UTC)
	latestTime   = time.Date(2260, 1, 1, 0, 0, 0, 0, time.UTC)
)

func parseTimestamp(s string) (time.Time, error) {
	for _, layout := range timestampLayouts {
		if t, err := time.Parse(layout, s); err == nil {
			if !t.After(earliestTime) || !t.Before(latestTime) {
				return time.Time{}, fmt.Errorf("timestamp %q is out of range", s)
			}
			return t.UTC(), nil
		}
	}
	return time.Time{}, fmt.Errorf("unreadable timestamp %q", s)
}

// parseMessage parses a pgoutput message as pglogrepl does, but answers a
// malformed one with an error where pglogrepl would panic (it indexes an
// empty message, and trusts the lengths it reads): the session then ends
// and is dialled again, instead of the process.
func parseMessage(data []byte) (m pglogrepl.Message, err error) {
	if len(data) == 0 {
		return nil, errors.New("empty logical message")
	}
	defer func() {
		if p := recover(); p != nil {
			m, err = nil, fmt.Errorf("malformed logical message %q: %v", data[0], p)
		}
	}()
	return pglogrepl.Parse(data)
}
