package storage

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Object is a file List found.
type Object struct {
	Key     string    // relative to the root or prefix, as the database names it
	Size    int64     // bytes; on local disk only with ListOptions.Info
	ModTime time.Time // last modification; on local disk only with ListOptions.Info
	// Refused is set for an entry that must never be removed, and says why: a
	// symbolic link (wraps ErrUnsafeKey), a device, socket or fifo, an S3
	// folder marker ("a/"), a name ValidateKey refuses, a name a listing may
	// have mangled (see listable in s3.go). Size and ModTime may be zero then.
	Refused error
}

// ListOptions select what List lists.
type ListOptions struct {
	// Prefix selects keys that start with it, as S3 prefixes do: "a/b/" is a
	// folder's whole tree, "a/b/x." the names in a/b that start with "x."
	// and everything under folders so named; "" the whole root or bucket prefix.
	// Without its last '/', a prefix must be "" or a key ValidateKey accepts.
	Prefix string
	// StartAfter lists only keys after it (exclusive), for resuming.
	StartAfter string
	// Info fills Size and ModTime on local disk (one fstatat per file);
	// S3 listings carry them anyway.
	Info bool
}

// errNotFile is the Refused of an entry that is neither a file nor a folder
// of files: nothing a key of the database names.
var errNotFile = errors.New("not a regular file")

// errMangled is the Refused of a listed name that may not be the object's
// true name (see listable): removing it could name another object.
var errMangled = errors.New("the listing may have changed this name (it has a character XML cannot carry)")

// splitPrefix checks a listing's prefix and splits it after its last '/':
// "a/b/x." gives the folder "a/b/" and the name prefix "x.".
func splitPrefix(prefix string) (folder, name string, err error) {
	if prefix == "" {
		return "", "", nil
	}
	if err := ValidateKey(strings.TrimSuffix(prefix, "/")); err != nil {
		return "", "", fmt.Errorf("list prefix %q: %w", prefix, err)
	}
	slash := strings.LastIndexByte(prefix, '/')
	return prefix[:slash+1], prefix[slash+1:], nil
}

// notFile is the Refused of the entry key, which is a kind of thing no key names.
func notFile(key, kind string) error {
	return fmt.Errorf("%q: %w (%s)", key, errNotFile, kind)
}
