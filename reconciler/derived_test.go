package reconciler_test

import (
	"crypto/md5"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/reconcile/reconcile/internal/derived"
	"github.com/reconcile/reconcile/reconciler"
)

// withDerived gives the bundle a reconciler of the table with derived
// patterns, migrated.
func (b *bundle) withDerived(patterns ...string) {
	b.t.Helper()
	table := djangoTable
	for _, text := range patterns {
		p, err := derived.Parse(text)
		if err != nil {
			b.t.Fatal(err)
		}
		table.Derived = append(table.Derived, p)
	}
	cfg := reconciler.Config{Retention: retention, BatchSize: 10, Concurrency: 3, RemoveConcurrency: 2}
	r, err := reconciler.New(b.ctx, b.pool, b.store, b.index, table, cfg, testLogger(b.t))
	if err != nil {
		b.t.Fatal(err)
	}
	if err := r.CheckSetup(b.ctx); !errors.Is(err, reconciler.ErrSetup) {
		b.t.Fatalf("CheckSetup before the derived index is built = %v, want ErrSetup", err)
	}
	if err := r.Migrate(b.ctx); err != nil {
		b.t.Fatal(err)
	}
	if err := r.CheckSetup(b.ctx); err != nil {
		b.t.Fatal(err)
	}
	b.r = r
}

// imagekitFiles are the cache files django-imagekit's default namer writes
// for key, one per spec: CACHE/images/<key without ext>/<32 hex>.<ext>.
func imagekitFiles(key string, specs ...string) []string {
	base := "CACHE/images/" + strings.TrimSuffix(key, key[strings.LastIndexByte(key, '.'):]) + "/"
	var files []string
	for _, spec := range specs {
		sum := md5.Sum([]byte(key + spec))
		files = append(files, base+hex.EncodeToString(sum[:])+".jpg")
	}
	return files
}

var specs = []string{"thumbnail", "medium", "large"}

func TestPurgeRemovesImagekitFilesOnceNoRowMapsToThem(t *testing.T) {
	b := setup(t)
	b.withDerived("imagekit")
	const day = "forum/attachments/2025/10/04/"
	jpg, png, other := day+"leaf.jpg", day+"leaf.png", day+"other.jpg"
	// leaf.jpg and leaf.png share imagekit's folder .../leaf/; "leaf"
	// is also a folder of uploads, whose cache folder lies inside it.
	nested := day + "leaf/inner.jpg"
	jpgID := b.seed(due(jpg))[0]
	pngID := b.seed(row{key: png, active: true})[0]
	b.seed(due(other), row{key: nested, active: true})
	shared := append(imagekitFiles(jpg, specs...), imagekitFiles(png, "thumbnail")...)
	otherFiles := imagekitFiles(other, specs...)
	nestedFiles := imagekitFiles(nested, specs...)
	stranger := "CACHE/images/" + day + "leafy/0123456789abcdef0123456789abcdef.jpg"
	for _, f := range append(append(append(append([]string{}, shared...), otherFiles...), nestedFiles...), stranger) {
		b.writeFile(f)
	}

	s := b.run()
	if s.Purged != 2 || b.rowExists(jpgID) || b.fileExists(jpg) || b.fileExists(other) {
		t.Fatalf("purge: %+v; leaf.jpg's row or file, or other.jpg's, left", s)
	}
	for _, f := range otherFiles {
		if b.fileExists(f) {
			t.Errorf("derived file %s of a purged row is left", f)
		}
	}
	for _, f := range append(append(append([]string{}, shared...), nestedFiles...), stranger) {
		if !b.fileExists(f) {
			t.Errorf("%s removed: leaf.png still maps to its folder, or it belongs to a live row, or to no purged row", f)
		}
	}
	if s.DerivedRemoved != 3 || s.DerivedKept != len(shared)+len(nestedFiles) {
		t.Errorf("derived removed %d, kept %d; want 3 and %d", s.DerivedRemoved, s.DerivedKept, len(shared)+len(nestedFiles))
	}
	if n := b.count(`SELECT count(*) FROM reconcile_forum_attachment_outbox`); n != 0 {
		t.Errorf("outbox holds %d keys after the purge", n)
	}

	// The last row of the shared folder goes: its files go with it, but
	// not those of the live upload in the folder "leaf".
	if _, err := b.pool.Exec(b.ctx, `UPDATE forum_attachment SET is_active = false, deleted_at = now() - interval '3 hours' WHERE id = $1`, pngID); err != nil {
		t.Fatal(err)
	}
	s = b.run()
	if s.Purged != 1 || b.fileExists(png) || s.DerivedRemoved != len(shared) {
		t.Fatalf("second purge: %+v, want leaf.png and the %d files of the shared folder gone", s, len(shared))
	}
	for _, f := range shared {
		if b.fileExists(f) {
			t.Errorf("%s left once no row maps to it", f)
		}
	}
	for _, f := range append(nestedFiles, nested, stranger) {
		if !b.fileExists(f) {
			t.Errorf("%s of a live row, or of no row, removed", f)
		}
	}
}

func TestPurgeRemovesEasyThumbnailsButNeverALiveRowsFile(t *testing.T) {
	b := setup(t)
	b.withDerived("easy-thumbnails")
	const key = "uploads/photo.jpg"
	// A live row whose file happens to start like photo.jpg's thumbnails.
	live := "uploads/photo.jpg.original.jpg"
	b.seed(due(key), row{key: live, active: true})
	thumbs := []string{key + ".100x100_q85_crop.jpg", key + ".800x600_q85.jpg"}
	for _, f := range thumbs {
		b.writeFile(f)
	}
	b.writeFile("uploads/photo.jpg.d/x.jpg") // not a name in the folder: not owned
	s := b.run()
	if s.Purged != 1 || s.DerivedRemoved != 2 || s.DerivedKept != 1 {
		t.Fatalf("purge: %+v, want 1 row, 2 thumbnails removed and the live file kept", s)
	}
	for _, f := range thumbs {
		if b.fileExists(f) {
			t.Errorf("thumbnail %s left", f)
		}
	}
	if !b.fileExists(live) || !b.fileExists("uploads/photo.jpg.d/x.jpg") {
		t.Error("a live row's file, or a file in a subfolder, was removed")
	}
}

// A derived file written after its source's removal was queued belongs to
// a new upload under the freed name: it stays.
func TestPurgeKeepsADerivedFileWrittenAfterItsSourceWasQueued(t *testing.T) {
	b := setup(t)
	b.withDerived("imagekit")
	const key = "forum/attachments/2025/10/04/leaf.jpg"
	b.seed(due(key))
	files := imagekitFiles(key, "thumbnail", "medium")
	for _, f := range files {
		b.writeFile(f)
	}
	// The new upload's thumbnail, written after the purge will queue the
	// source.
	later := time.Now().Add(time.Minute)
	if err := os.Chtimes(filepath.Join(b.root, files[1]), later, later); err != nil {
		t.Fatal(err)
	}
	s := b.run()
	if s.Purged != 1 || s.DerivedRemoved != 1 || s.DerivedKept != 1 || b.fileExists(files[0]) || !b.fileExists(files[1]) {
		t.Fatalf("%+v: want the old thumbnail removed and the new one kept", s)
	}
}
