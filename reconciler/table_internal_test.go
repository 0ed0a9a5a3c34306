package reconciler

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// Names of what reconcile creates stay within Postgres's 63 bytes, stay
// valid UTF-8, and stay apart for long table names that start alike.
func TestObjectNameStaysUniqueAndShort(t *testing.T) {
	long := strings.Repeat("attachment_", 6)
	a, b := objectName(long+"a", "outbox"), objectName(long+"b", "outbox")
	accented := objectName(strings.Repeat("é", 40), "due_idx")
	for _, name := range []string{a, b, accented} {
		if len(name) > 63 || !utf8.ValidString(name) {
			t.Errorf("%q: %d bytes, valid UTF-8 %v", name, len(name), utf8.ValidString(name))
		}
	}
	if a == b {
		t.Errorf("two tables share the outbox %q", a)
	}
	if got := objectName("forum_attachment", "outbox"); got != "reconcile_forum_attachment_outbox" {
		t.Errorf("short name = %q", got)
	}
}

func TestSharedDepthCountsCommonFolders(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want int
	}{
		{"forum/attachments/2025/01/a.jpg", "forum/attachments/2025/01/b.jpg", 4},
		{"forum/attachments/2025/01/a.jpg", "forum/attachments/2025/02/a.jpg", 3},
		{"forum/attachments/2025/01/a.jpg", "forum/attachments/2025/01", 3},
		{"a.jpg", "b.jpg", 0},
		{"x/a.jpg", "y/a.jpg", 0},
	} {
		if got := sharedDepth(tc.a, tc.b); got != tc.want {
			t.Errorf("sharedDepth(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
	}
}
