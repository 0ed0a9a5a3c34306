//go:build linux

package storage_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/reconcile/reconcile/internal/storage"
)

func ExampleLocal_List() {
	root, err := os.MkdirTemp("", "media")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(root)
	for _, key := range []string{"a0.jpg", "a/x.jpg", "a.b.jpg", "CACHE/images/a/x/0123.jpg"} {
		path := filepath.Join(root, key)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			panic(err)
		}
		if err := os.WriteFile(path, []byte("..."), 0o644); err != nil {
			panic(err)
		}
	}
	if err := os.Symlink("/etc/passwd", filepath.Join(root, "a", "y.jpg")); err != nil {
		panic(err)
	}

	local, err := storage.NewLocal(root)
	if err != nil {
		panic(err)
	}
	defer local.Close()

	// Byte order of the keys, as S3 lists them: "a.b.jpg" < "a/x.jpg" < "a0.jpg".
	err = local.List(context.Background(), storage.ListOptions{Prefix: "a"}, func(o storage.Object) error {
		if o.Refused != nil {
			fmt.Printf("%s: refused: %v\n", o.Key, o.Refused)
			return nil
		}
		fmt.Println(o.Key)
		return nil
	})
	if err != nil {
		panic(err)
	}
	// Output:
	// a.b.jpg
	// a/x.jpg
	// a/y.jpg: refused: unsafe storage key "a/y.jpg": is a symbolic link
	// a0.jpg
}
