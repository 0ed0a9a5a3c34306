//go:build !linux

package storage

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// errNeedsLinux is what local storage answers on other systems.
var errNeedsLinux = errors.New("local storage needs Linux 5.6 or later (openat2)")

// Local stores files under a root directory. It needs openat2, so it works
// on Linux only; here NewLocal always fails.
type Local struct{}

// NewLocal fails: local storage needs Linux.
func NewLocal(root string, _ ...Option) (*Local, error) {
	return nil, fmt.Errorf("open storage root %q: %w", root, errNeedsLinux)
}

// Check fails for every key.
func (*Local) Check(_ context.Context, keys []string) []error {
	errs := make([]error, len(keys))
	for i := range errs {
		errs[i] = errNeedsLinux
	}
	return errs
}

// Stat fails for every key.
func (*Local) Stat(_ context.Context, keys []string) []FileInfo {
	infos := make([]FileInfo, len(keys))
	for i := range infos {
		infos[i].Err = errNeedsLinux
	}
	return infos
}

// Remove fails for every removal.
func (*Local) Remove(_ context.Context, removals []Removal) []Result {
	results := make([]Result, len(removals))
	for i := range results {
		results[i].Err = errNeedsLinux
	}
	return results
}

// List fails.
func (*Local) List(context.Context, ListOptions, func(Object) error) error {
	return errNeedsLinux
}

// CheckList fails.
func (*Local) CheckList(context.Context, string) error { return errNeedsLinux }

// Untrash fails for every key.
func (*Local) Untrash(_ context.Context, keys []string) []error {
	errs := make([]error, len(keys))
	for i := range errs {
		errs[i] = errNeedsLinux
	}
	return errs
}

// EmptyTrash fails.
func (*Local) EmptyTrash(context.Context, time.Time) (int, error) { return 0, errNeedsLinux }

// Close does nothing.
func (*Local) Close() error { return nil }
