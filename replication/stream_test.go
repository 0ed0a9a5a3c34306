package replication

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/reconcile/reconcile/index"
	"github.com/reconcile/reconcile/internal/retry"
	"github.com/reconcile/reconcile/internal/testdb"
)

// A session that fails before it moves the acknowledged position counts
// as a failed try however long it lasted (a rescan cut by a statement
// timeout, a connection silent until the watchdog): Run gives up after
// sessionTries of them instead of trying for ever.
func TestRunGivesUpOnSessionsThatNeverStream(t *testing.T) {
	url, _ := testdb.NewDjango(t)
	idx, err := index.Open(filepath.Join(t.TempDir(), "index.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer idx.Close()
	failing := errors.New("canceling statement due to statement timeout")
	rescans := 0
	s := New(Config{
		URL: url, Slot: strings.ToLower("t_gives_up_" + strings.ReplaceAll(uuid.NewString()[:8], "-", "")), Publication: "reconcile_attachments",
		Schema: "public", Table: "forum_attachment", ID: "id", Key: "image", IsActive: "is_active", DeletedAt: "deleted_at",
		StatusInterval: 10 * time.Millisecond, Watchdog: time.Second, MaxBackoff: 20 * time.Millisecond,
	}, idx, func(ctx context.Context) error {
		rescans++
		time.Sleep(50 * time.Millisecond) // longer than MaxBackoff
		return failing
	}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = s.Run(ctx)
	if !errors.Is(err, retry.ErrGaveUp) || !errors.Is(err, failing) {
		t.Fatalf("Run = %v after %d rescans; want it to give up with the rescan's error", err, rescans)
	}
	if rescans != sessionTries {
		t.Fatalf("%d sessions, want %d", rescans, sessionTries)
	}
}
