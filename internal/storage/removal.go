package storage

import (
	"errors"
	"fmt"
	"time"
)

// Removal is a file to remove and the moment its removal was queued, in
// this host's clock. A file modified at or after that moment was written
// again under the same key (django-storages reuses a freed name for a new
// upload) and is kept. Each backend compares the times only as finely as it
// can trust them, and keeps the file when in doubt: Local keeps a file
// modified less than a second before QueuedAt, S3 one modified in the same
// second (see rewrittenLocal and rewrittenS3).
//
// A zero QueuedAt is refused: it would make every file look rewritten, or,
// read as "no limit", remove a file written after the key was freed.
type Removal struct {
	Key      string
	QueuedAt time.Time
	// Listed, when set, is the modification time a listing gave the caller
	// just now: S3 then decides from it instead of listing the file's
	// folder again (the derived files of a purged row, listed to be
	// found). Local disk looks at the file anyway, which costs nothing.
	Listed time.Time
}

// errNoQueuedAt is the error of a Removal whose QueuedAt is zero.
var errNoQueuedAt = errors.New("the removal has no QueuedAt, which is a programming error upstream; the file is kept")

// Outcome is what a removal did to one file.
type Outcome uint8

const (
	// Removed means the file was there and is gone.
	Removed Outcome = iota + 1
	// Missing means there was no file to remove.
	Missing
	// Rewritten means the file was modified after its removal was queued;
	// it is kept.
	Rewritten
)

func (o Outcome) String() string {
	switch o {
	case Removed:
		return "removed"
	case Missing:
		return "missing"
	case Rewritten:
		return "rewritten"
	}
	return fmt.Sprintf("Outcome(%d)", uint8(o))
}

// Result is the outcome of one Removal. With Err set the file may still be
// there, and Outcome is zero.
type Result struct {
	Outcome Outcome
	ModTime time.Time // the modification time of a Rewritten file
	Err     error
}

// FileInfo is what Stat tells of one key. With Err set nothing is known.
type FileInfo struct {
	Exists  bool
	ModTime time.Time
	// Changed is when the file last changed at all: on local disk its
	// status change time, which a copy that keeps the modification time
	// (rsync -a, cp -p) sets to the copy's; on S3 its LastModified.
	Changed time.Time
	Size    int64 // bytes
	Err     error
}
