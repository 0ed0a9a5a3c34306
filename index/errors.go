package index

import "errors"

var (
	// ErrLocked means another process holds the index file.
	ErrLocked = errors.New("index is in use by another process")

	// ErrNotFilled means no rescan has completed since the index was last
	// emptied: changes from the stream would be applied to an index that
	// lacks the rows they change.
	ErrNotFilled = errors.New("the index holds no rescan to apply changes to: rescan")
)
