// Package storage removes attachment files from where the forum stores them:
// a local directory (Local) or an S3 bucket (S3).
//
// Both backends offer the same calls, each taking many keys and answering
// one entry per key, in order:
//
//   - Check refuses the keys that must not be touched (ErrUnsafeKey for a
//     key that could reach outside the root or prefix or passes through a
//     symbolic link, an error for a directory); a missing file is fine.
//   - Stat tells whether each file exists, when it was last modified and
//     its size.
//   - Remove removes files, each one decided just before it is removed: a
//     file that is not there is Missing, which is not Removed; a file
//     modified since its removal was queued (Removal.QueuedAt) is Rewritten
//     and kept, because the application reuses a freed name for a new
//     upload; a refused key gets an error and nothing is touched.
//
// List finds the files no row names (the derived files of a purged row,
// orphans): it walks everything under a prefix in byte order of keys, the
// order of S3 listings, so that a caller can merge it with keys sorted by
// the database. Its memory does not grow with the number of files: Local
// reads the folders depth first through openat2 as below, holding the
// entries of the folders on the current path, and S3 reads ListObjectsV2
// pages one at a time. Entries that must never be removed (symbolic links,
// devices, folder markers, names ValidateKey refuses) come marked Refused.
// CheckList tells, before any work depends on it, whether listing is
// allowed.
//
// Keys come from the database and are untrusted. Every key is checked by
// ValidateKey before it is used, and each backend keeps it inside its root
// or prefix. Local (Linux only) opens each key's folder with openat2 under
// the root, refusing in the kernel any path that leaves the root or meets a
// symbolic link, then looks at the file and unlinks it through that folder
// handle without following a link. S3 joins the key under the prefix, takes
// the modification times from listings of the keys' folders (a request per
// 1000 objects, not one per file) and removes with bulk DeleteObjects
// requests, checking each key's result.
package storage

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// ErrMisconfigured marks a backend that cannot work as configured (a missing
// bucket, refused credentials), as opposed to one out of reach for now.
var ErrMisconfigured = errors.New("storage misconfigured")

// ErrUnsafeKey marks a key refused because it could reach outside the storage root or prefix.
var ErrUnsafeKey = errors.New("unsafe storage key")

// ValidateKey reports whether key is a clean relative slash path that both
// backends read the same way. It refuses, with an error wrapping ErrUnsafeKey:
//
//   - the empty key and a key with a NUL byte;
//   - a key that is not valid UTF-8: the S3 bulk delete sends keys as XML,
//     which would turn the bad bytes into U+FFFD and name another object;
//   - a backslash: Django always stores '/', so a backslash is a Windows
//     separator from elsewhere, and a traversal on any backend that honours it;
//   - an absolute key (leading '/') and any ".." element, even one that
//     stays inside ("a/../b"): S3 servers backed by a filesystem resolve
//     ".." too, so "media/../x" would reach outside the prefix;
//   - "." and empty elements ("./a", "a//b", "a/"): a filesystem, and an S3
//     server backed by one (versitygw), collapses them onto another name,
//     while AWS S3 does not. Django normalizes the names it stores, so a
//     real key never has them.
//
// Other characters, leading and trailing spaces included, are kept as they
// are: rewriting a key could name a different file than the row does.
func ValidateKey(key string) error {
	switch {
	case key == "":
		return unsafeKey(key, "is empty")
	case strings.IndexByte(key, 0) >= 0:
		return unsafeKey(key, "contains a NUL byte")
	case !utf8.ValidString(key):
		return unsafeKey(key, "is not valid UTF-8")
	case strings.IndexByte(key, '\\') >= 0:
		return unsafeKey(key, "contains a backslash")
	case key[0] == '/':
		return unsafeKey(key, "is absolute")
	}
	for elem := range strings.SplitSeq(key, "/") {
		switch elem {
		case "..":
			return unsafeKey(key, `has a ".." element`)
		case ".", "":
			return unsafeKey(key, "is not a clean path")
		}
	}
	return nil
}

func unsafeKey(key, why string) error {
	return fmt.Errorf("%w %q: %s", ErrUnsafeKey, key, why)
}
