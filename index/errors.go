package index

import "errors"

var (
	// ErrLocked means another process holds the index file.
	ErrLocked = errors.New("index is in use by another process")

	// ErrCorrupt means the index file held garbage that bbolt could not
	// read: the operation failed, the file was moved aside and an empty
	// index took its place. A rescan rebuilds it.
	ErrCorrupt = errors.New("index corrupt")

	// ErrNotFilled means no rescan has completed since the index was last
	// emptied (by Reset or after ErrCorrupt): changes from the stream
	// would be applied to an index that lacks the rows they change.
	ErrNotFilled = errors.New("the index holds no rescan to apply changes to: rescan")
)
