package replication

import (
	"encoding/binary"
	"time"
)

// The messages a walsender sends, written byte for byte as pgoutput
// (proto_version 1) and the streaming protocol do, for tests that feed a
// loop without a server.

// pgEpoch is where the protocol's timestamps count from, in microseconds.
var pgEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

func pgTime(b []byte, t time.Time) []byte {
	return binary.BigEndian.AppendUint64(b, uint64(t.Sub(pgEpoch).Microseconds()))
}

// col is one column of a tuple: its kind ('t' text, 'n' null, 'u'
// unchanged TOAST) and, for text, its value.
type col struct {
	kind  byte
	value string
}

func text(s string) col { return col{'t', s} }

var (
	null  = col{kind: 'n'}
	toast = col{kind: 'u'}
)

func tuple(b []byte, cols []col) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(cols)))
	for _, c := range cols {
		b = append(b, c.kind)
		if c.kind == 't' {
			b = binary.BigEndian.AppendUint32(b, uint32(len(c.value)))
			b = append(b, c.value...)
		}
	}
	return b
}

func cstring(b []byte, s string) []byte { return append(append(b, s...), 0) }

func relationMsg(rel uint32, schema, name string, columns ...string) []byte {
	b := binary.BigEndian.AppendUint32([]byte{'R'}, rel)
	b = cstring(cstring(b, schema), name)
	b = append(b, 'd')
	b = binary.BigEndian.AppendUint16(b, uint16(len(columns)))
	for _, c := range columns {
		b = cstring(append(b, 0), c)
		b = binary.BigEndian.AppendUint32(b, 25) // text
		b = binary.BigEndian.AppendUint32(b, 0xffffffff)
	}
	return b
}

func beginMsg(final uint64, at time.Time) []byte {
	b := binary.BigEndian.AppendUint64([]byte{'B'}, final)
	return binary.BigEndian.AppendUint32(pgTime(b, at), 1)
}

func commitMsg(end uint64, at time.Time) []byte {
	b := binary.BigEndian.AppendUint64([]byte{'C', 0}, end-1)
	return pgTime(binary.BigEndian.AppendUint64(b, end), at)
}

func insertMsg(rel uint32, cols ...col) []byte {
	return tuple(append(binary.BigEndian.AppendUint32([]byte{'I'}, rel), 'N'), cols)
}

// updateMsg: old, when not nil, is the old image of the replica identity
// ('K', as an update of the key sends it).
func updateMsg(rel uint32, old, cols []col) []byte {
	b := binary.BigEndian.AppendUint32([]byte{'U'}, rel)
	if old != nil {
		b = tuple(append(b, 'K'), old)
	}
	return tuple(append(b, 'N'), cols)
}

// deleteMsg: kind 'O' is a full old image (REPLICA IDENTITY FULL), 'K'
// the key alone.
func deleteMsg(rel uint32, kind byte, cols ...col) []byte {
	return tuple(append(binary.BigEndian.AppendUint32([]byte{'D'}, rel), kind), cols)
}

func truncateMsg(rels ...uint32) []byte {
	b := binary.BigEndian.AppendUint32([]byte{'T'}, uint32(len(rels)))
	b = append(b, 0)
	for _, r := range rels {
		b = binary.BigEndian.AppendUint32(b, r)
	}
	return b
}

func heartbeatMsg(content string) []byte {
	b := cstring(binary.BigEndian.AppendUint64([]byte{'M', 0}, 1), heartbeatPrefix)
	return append(binary.BigEndian.AppendUint32(b, uint32(len(content))), content...)
}

// xlogData wraps a pgoutput message as the CopyData of the stream.
func xlogData(walStart uint64, msg []byte) []byte {
	b := binary.BigEndian.AppendUint64([]byte{'w'}, walStart)
	b = binary.BigEndian.AppendUint64(b, walStart)
	return append(pgTime(b, time.Now()), msg...)
}

func keepaliveData(walEnd uint64, reply bool) []byte {
	b := pgTime(binary.BigEndian.AppendUint64([]byte{'k'}, walEnd), time.Now())
	if reply {
		return append(b, 1)
	}
	return append(b, 0)
}
