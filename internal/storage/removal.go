package storage

import "time"

// Removal is a file to remove and the moment its removal was queued, in
// this host's clock. A file modified at or after that moment was written
// again under the same key (django-storages reuses a freed name for a new
// upload) and is kept.
type Removal struct {
	Key      string
	QueuedAt time.Time
}

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
	Err     error
}
