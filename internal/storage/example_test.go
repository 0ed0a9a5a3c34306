package storage_test

import (
	"fmt"

	"github.com/reconcile/reconcile/internal/storage"
)

func ExampleValidateKey() {
	fmt.Println(storage.ValidateKey("forum/attachments/2025/10/04/leaf.jpg"))
	fmt.Println(storage.ValidateKey("forum/../../settings.py"))
	// Output:
	// <nil>
	// unsafe storage key "forum/../../settings.py": has a ".." element
}
