package replication

import (
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/reconcile/reconcile/index"
)

// Table is one table the stream tails.
type Table struct {
	Schema, Name string
	ID           string
	Keys         []string // storage key columns, at least one
	IsActive     string   // flag whose false means soft-deleted; "" none
	IsDeleted    string   // flag whose true means soft-deleted; "" none
	DeletedAt    string   // with both flags "": soft-deleted when deleted_at is set
}

// IndexName is the table's namespace in the index: index.Change.Table.
func (t Table) IndexName() string { return t.Schema + "." + t.Name }

// columns are the columns reconcile reads of the table.
func (t Table) columns() []string {
	cols := append([]string{t.ID}, t.Keys...)
	for _, c := range []string{t.IsActive, t.IsDeleted} {
		if c != "" {
			cols = append(cols, c)
		}
	}
	return append(cols, t.DeletedAt)
}

// shape is how a table marks a row soft-deleted.
type shape uint8

const (
	shapeIsActive  shape = iota // is_active false and deleted_at set
	shapeIsDeleted              // is_deleted true and deleted_at set
	shapeDeletedAt              // deleted_at set
)

// decoder reads the pgoutput messages of one connection: it keeps the
// relations the server described on it, and tells what each message means
// to the stream.
type decoder struct {
	tables []Table
	// outright: the rows DELETEs remove are wanted (Config.Deleted is set).
	outright bool
	log      *slog.Logger
	rels     map[uint32]*relation // nil: a table not configured, whose changes are dropped
	changes  []index.Change       // reused by every message
}

func newDecoder(tables []Table, outright bool, log *slog.Logger) *decoder {
	return &decoder{tables: tables, outright: outright, log: log, rels: map[uint32]*relation{}}
}

// messageKind is what a message is to the stream.
type messageKind uint8

const (
	msgNone      messageKind = iota // nothing: a relation, another table's change
	msgBegin                        // a transaction starts
	msgCommit                       // it ends
	msgRow                          // a row of a configured table changed
	msgTruncate                     // a configured table was truncated
	msgHeartbeat                    // a heartbeat went through the WAL
)

// message is what a pgoutput message means to the stream.
type message struct {
	kind messageKind
	// changes are what a row's change does to the index, in order (an
	// update of the id forgets the old one first). They are valid until
	// the next decode.
	changes []index.Change
	// deleted are the rows a DELETE removed outright, when its old image
	// carries their keys and they are wanted.
	deleted []DeletedRow
	at      time.Time // begin and commit: the commit time; heartbeat: when it was written
	end     uint64    // commit: the end of the transaction
}

// decode reads the WAL data of an XLogData message. With rowsSkipped (a
// transaction a rescan covers), inserts and updates are not even parsed,
// and of a DELETE only the rows it removed outright are read.
func (d *decoder) decode(data []byte, rowsSkipped bool) (message, error) {
	if rowsSkipped && len(data) > 0 {
		switch pglogrepl.MessageType(data[0]) {
		case pglogrepl.MessageTypeInsert, pglogrepl.MessageTypeUpdate:
			return message{}, nil
		case pglogrepl.MessageTypeDelete:
			if !d.outright {
				return message{}, nil
			}
		}
	}
	m, err := parseMessage(data)
	if err != nil {
		return message{}, fmt.Errorf("parse logical message: %w", err)
	}
	switch m := m.(type) {
	case *pglogrepl.RelationMessage:
		d.rels[m.RelationID] = nil
		for _, t := range d.tables {
			if m.Namespace == t.Schema && m.RelationName == t.Name {
				rel, err := newRelation(t, m)
				if err != nil {
					return message{}, err
				}
				d.rels[m.RelationID] = rel
				break
			}
		}
	case *pglogrepl.BeginMessage:
		return message{kind: msgBegin, at: m.CommitTime}, nil
	case *pglogrepl.CommitMessage:
		return message{kind: msgCommit, at: m.CommitTime, end: uint64(m.TransactionEndLSN)}, nil
	case *pglogrepl.LogicalDecodingMessage:
		if !m.Transactional && m.Prefix == heartbeatPrefix {
			if nanos, err := strconv.ParseInt(string(m.Content), 10, 64); err == nil {
				return message{kind: msgHeartbeat, at: time.Unix(0, nanos)}, nil
			}
		}
	case *pglogrepl.InsertMessage:
		if rel := d.rels[m.RelationID]; rel != nil {
			c, err := rel.rowChange(m.Tuple)
			if err = d.readable(err); err != nil {
				return message{}, err
			}
			d.changes = append(d.changes[:0], c)
			return message{kind: msgRow, changes: d.changes}, nil
		}
	case *pglogrepl.UpdateMessage:
		if rel := d.rels[m.RelationID]; rel != nil {
			c, err := rel.rowChange(m.NewTuple)
			if err = d.readable(err); err != nil {
				return message{}, err
			}
			d.changes = d.changes[:0]
			// An update of the id itself carries the old one: forget it.
			if m.OldTuple != nil {
				if old, err := rel.removal(m.OldTuple); err == nil && old.Entry.ID != c.Entry.ID {
					d.changes = append(d.changes, old)
				}
			}
			d.changes = append(d.changes, c)
			return message{kind: msgRow, changes: d.changes}, nil
		}
	case *pglogrepl.DeleteMessage:
		if rel := d.rels[m.RelationID]; rel != nil {
			msg := message{kind: msgRow, deleted: d.deletedRows(rel, m)}
			if !rowsSkipped {
				c, err := rel.removal(m.OldTuple)
				if err != nil {
					return message{}, fmt.Errorf("decode change: %w", err)
				}
				d.changes = append(d.changes[:0], c)
				msg.changes = d.changes
			}
			return msg, nil
		}
	case *pglogrepl.TruncateMessage:
		for _, id := range m.RelationIDs {
			if d.rels[id] != nil {
				return message{kind: msgTruncate}, nil
			}
		}
	}
	return message{}, nil
}

// readable lets a row whose deleted_at cannot be read through as a
// removal: an error would stop the stream for good, replaying the same
// change. The row is left out of the index instead, and never purged.
func (d *decoder) readable(err error) error {
	if errors.Is(err, errUnreadable) {
		d.log.Warn("a soft-deleted row's deleted_at cannot be read; the row is left alone", "error", err)
		return nil
	}
	if err != nil {
		return fmt.Errorf("decode change: %w", err)
	}
	return nil
}

// deletedRows reads the rows a DELETE removed outright, when they are
// wanted and its old image carries their keys.
func (d *decoder) deletedRows(rel *relation, m *pglogrepl.DeleteMessage) []DeletedRow {
	if !d.outright {
		return nil
	}
	if m.OldTupleType == pglogrepl.DeleteMessageTupleTypeKey && !rel.keyOnlyWarned {
		// A partition made after `migrate` has the default identity.
		rel.keyOnlyWarned = true
		d.log.Warn("a DELETE of the table carries only its primary key (its replica identity, or a partition's, is not FULL): the files of rows deleted outright there stay until `reconcile orphans`; run `reconcile migrate`",
			"table", rel.table)
	}
	return rel.deletedRows(m.OldTuple)
}

// relation is a table as a Relation message describes it: the position of
// each column reconcile reads in the tuples that follow.
type relation struct {
	id, key, isActive, deletedAt int
	// keyOnlyWarned: a DELETE carrying only the primary key was warned of.
	keyOnlyWarned bool
	table         string // the index name
	shape         shape
	isDeleted     int
	moreKeys      []int // the key columns after the first, for a table of several
}

func newRelation(t Table, m *pglogrepl.RelationMessage) (*relation, error) {
	pos := map[string]int{}
	for i, c := range m.Columns {
		pos[c.Name] = i
	}
	find := func(name string, dst *int) error {
		i, ok := pos[name]
		if !ok {
			return fmt.Errorf("the stream's description of %s.%s has no column %q: %w", m.Namespace, m.RelationName, name, ErrSetup)
		}
		*dst = i
		return nil
	}
	rel := relation{table: t.IndexName(), moreKeys: make([]int, len(t.Keys)-1)}
	err := errors.Join(find(t.ID, &rel.id), find(t.Keys[0], &rel.key), find(t.DeletedAt, &rel.deletedAt))
	switch {
	case t.IsActive != "":
		err = errors.Join(err, find(t.IsActive, &rel.isActive))
	case t.IsDeleted != "":
		rel.shape = shapeIsDeleted
		err = errors.Join(err, find(t.IsDeleted, &rel.isDeleted))
	default:
		rel.shape = shapeDeletedAt
	}
	for i, k := range t.Keys[1:] {
		err = errors.Join(err, find(k, &rel.moreKeys[i]))
	}
	if err != nil {
		return nil, err
	}
	return &rel, nil
}

// softDeleted tells whether a row's image marks it soft-deleted, as the
// table's shape does, and returns its deleted_at.
func (rel *relation) softDeleted(tuple *pglogrepl.TupleData) (*pglogrepl.TupleDataColumn, bool) {
	deleted := rel.col(tuple, rel.deletedAt)
	if deleted == nil || deleted.DataType != pglogrepl.TupleDataTypeText {
		return nil, false
	}
	switch rel.shape {
	case shapeIsActive:
		return deleted, rel.flag(tuple, rel.isActive) == "f"
	case shapeIsDeleted:
		return deleted, rel.flag(tuple, rel.isDeleted) == "t"
	}
	return deleted, true
}

func (rel *relation) flag(tuple *pglogrepl.TupleData, i int) string {
	c := rel.col(tuple, i)
	if c == nil || c.DataType != pglogrepl.TupleDataTypeText {
		return ""
	}
	return string(c.Data)
}

// rowChange turns the new image of a row into the index change it makes: a
// soft-deleted row is recorded, any other is forgotten.
func (rel *relation) rowChange(tuple *pglogrepl.TupleData) (index.Change, error) {
	id, err := rel.text(tuple, rel.id, "id")
	if err != nil {
		return index.Change{}, err
	}
	deleted, soft := rel.softDeleted(tuple)
	if !soft {
		return index.Change{Op: index.Remove, Table: rel.table, Entry: index.Entry{ID: id}}, nil
	}
	at, err := parseTimestamp(string(deleted.Data))
	if err != nil {
		return index.Change{Op: index.Remove, Table: rel.table, Entry: index.Entry{ID: id}}, fmt.Errorf("row %s: deleted_at: %w: %w", id, err, errUnreadable)
	}
	c := index.Change{Op: index.Upsert, Table: rel.table, Entry: index.Entry{ID: id, DeletedAt: at}}
	if len(rel.moreKeys) > 0 {
		c.Entry.Key = rel.joinedKey(tuple)
		return c, nil
	}
	switch key := rel.col(tuple, rel.key); {
	case key == nil || key.DataType == pglogrepl.TupleDataTypeNull:
	case key.DataType == pglogrepl.TupleDataTypeToast:
		c.KeyUnchanged = true
	default:
		c.Entry.Key = string(key.Data)
	}
	return c, nil
}

// joinedKey is the index key of a table of several key columns; "" when
// one of them is an unchanged TOAST value: the stored key cannot be
// patched a column at a time, so the purge reads the keys from the
// database.
func (rel *relation) joinedKey(tuple *pglogrepl.TupleData) string {
	var b strings.Builder
	for i, pos := range append([]int{rel.key}, rel.moreKeys...) {
		if i > 0 {
			b.WriteString(index.KeySeparator)
		}
		switch key := rel.col(tuple, pos); {
		case key == nil || key.DataType == pglogrepl.TupleDataTypeNull:
		case key.DataType == pglogrepl.TupleDataTypeToast:
			return ""
		default:
			b.Write(key.Data)
		}
	}
	return b.String()
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
	return index.Change{Op: index.Remove, Table: rel.table, Entry: index.Entry{ID: id}}, nil
}

// deleted reads a DELETE's old image as a row deleted outright, Key its
// first file's: only a full image (REPLICA IDENTITY FULL) carries the
// keys; a key NULL or empty names no file, and a row without any had none.
func (rel *relation) deleted(old *pglogrepl.TupleData) (DeletedRow, bool) {
	id, err := rel.text(old, rel.id, "id")
	keys := rel.fileKeys(old)
	if err != nil || len(keys) == 0 {
		return DeletedRow{}, false
	}
	d := DeletedRow{Table: rel.table, ID: id, Key: keys[0]}
	if c, err := rel.rowChange(old); err == nil && c.Op == index.Upsert {
		d.SoftDeleted, d.DeletedAt = true, c.Entry.DeletedAt
	}
	return d, true
}

// deletedRows is deleted, one row for each file the old image names.
func (rel *relation) deletedRows(old *pglogrepl.TupleData) []DeletedRow {
	d, ok := rel.deleted(old)
	if !ok {
		return nil
	}
	rows := []DeletedRow{d}
	for _, key := range rel.fileKeys(old)[1:] {
		d.Key = key
		rows = append(rows, d)
	}
	return rows
}

// fileKeys are the non-empty keys of an image, in the configured order.
func (rel *relation) fileKeys(tuple *pglogrepl.TupleData) []string {
	var keys []string
	for _, pos := range append([]int{rel.key}, rel.moreKeys...) {
		if key := rel.col(tuple, pos); key != nil && key.DataType == pglogrepl.TupleDataTypeText && len(key.Data) > 0 {
			keys = append(keys, string(key.Data))
		}
	}
	return keys
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
