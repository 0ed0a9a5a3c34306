//go:build linux

package storage_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/reconcile/reconcile/internal/storage"
)

func ExampleLocal_Remove() {
	root, err := os.MkdirTemp("", "media")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(root)
	// leaf.jpg was uploaded yesterday; new.jpg is uploaded now, under a
	// name freed by a purge whose removal was queued a minute ago.
	yesterday := time.Now().Add(-24 * time.Hour)
	for name, modTime := range map[string]time.Time{"leaf.jpg": yesterday, "new.jpg": time.Now()} {
		path := filepath.Join(root, name)
		if err := os.WriteFile(path, []byte("..."), 0o644); err != nil {
			panic(err)
		}
		if err := os.Chtimes(path, modTime, modTime); err != nil {
			panic(err)
		}
	}

	local, err := storage.NewLocal(root)
	if err != nil {
		panic(err)
	}
	defer local.Close()

	queued := time.Now().Add(-time.Minute)
	removals := []storage.Removal{
		{Key: "leaf.jpg", QueuedAt: queued},
		{Key: "already/gone.jpg", QueuedAt: queued},
		{Key: "new.jpg", QueuedAt: queued},
		{Key: "../etc/passwd", QueuedAt: queued},
	}
	for i, res := range local.Remove(context.Background(), removals) {
		if res.Err != nil {
			fmt.Printf("%s: %v\n", removals[i].Key, res.Err)
			continue
		}
		fmt.Printf("%s: %v\n", removals[i].Key, res.Outcome)
	}
	// Output:
	// leaf.jpg: removed
	// already/gone.jpg: missing
	// new.jpg: rewritten
	// ../etc/passwd: unsafe storage key "../etc/passwd": has a ".." element
}
