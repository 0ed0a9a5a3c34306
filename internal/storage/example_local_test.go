//go:build linux

package storage_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/reconcile/reconcile/internal/storage"
)

func ExampleLocal_Remove() {
	root, err := os.MkdirTemp("", "media")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(root)
	if err := os.WriteFile(filepath.Join(root, "leaf.jpg"), []byte("..."), 0o644); err != nil {
		panic(err)
	}

	local, err := storage.NewLocal(root)
	if err != nil {
		panic(err)
	}
	defer local.Close()

	keys := []string{"leaf.jpg", "already/gone.jpg", "../etc/passwd"}
	for i, err := range local.Remove(context.Background(), keys) {
		fmt.Printf("%s: %v\n", keys[i], err)
	}
	// Output:
	// leaf.jpg: <nil>
	// already/gone.jpg: <nil>
	// ../etc/passwd: unsafe storage key "../etc/passwd": has a ".." element
}
