package inventory_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"go.uber.org/goleak"

	"github.com/reconcile/reconcile/internal/inventory"
	"github.com/reconcile/reconcile/internal/inventory/inventorytest"
	"github.com/reconcile/reconcile/internal/storage"
	"github.com/reconcile/reconcile/internal/tests3"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var (
	created = time.Date(2025, 10, 4, 1, 0, 0, 123e6, time.UTC)
	old     = time.Date(2025, 9, 1, 12, 0, 7, 0, time.UTC)
)

// oddRows are keys an encoding or a CSV reader could get wrong, in two files.
var oddRows = [][]inventorytest.Row{
	{
		{Key: "forum/attachments/plain.jpg", Size: 1, LastModified: old},
		{Key: "forum/a b.jpg", Size: 2, LastModified: old.Add(time.Second)},
		{Key: "forum/a+b.jpg", Size: 3, LastModified: old.Add(2 * time.Second)},
		{Key: "forum/a%2Bb 100%.jpg", Size: 4, LastModified: old},
	},
	{
		{Key: "forum/ünïcödé 日本 🐘.png", Size: 5, LastModified: old},
		{Key: `forum/comma, "quoted", 'single'.jpg`, Size: 6, LastModified: old},
		{Key: " leading and trailing ", Size: 0, LastModified: old},
		{Key: "forum/line\nbreak.jpg", Size: 7, LastModified: old},
	},
}

// minimalEncoding escapes no more than decoding needs, so that commas,
// quotes and line breaks reach the CSV as they are.
var minimalEncoding = strings.NewReplacer("%", "%25", "+", "%2B", " ", "+").Replace

func want(files [][]inventorytest.Row) []inventory.Object {
	var objs []inventory.Object
	for _, rows := range files {
		for _, r := range rows {
			if !r.NotLatest && !r.DeleteMarker {
				objs = append(objs, inventory.Object{Key: r.Key, Size: r.Size, LastModified: r.LastModified})
			}
		}
	}
	return objs
}

func readAll(t *testing.T, r *inventory.Report) []inventory.Object {
	t.Helper()
	var objs []inventory.Object
	if err := r.Each(t.Context(), func(o inventory.Object) error {
		objs = append(objs, o)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return objs
}

func checkObjects(t *testing.T, got, want []inventory.Object) {
	t.Helper()
	if !slices.EqualFunc(got, want, func(a, b inventory.Object) bool {
		return a.Key == b.Key && a.Size == b.Size && a.LastModified.Equal(b.LastModified)
	}) {
		t.Errorf("Each gave\n%+v\nwant\n%+v", got, want)
	}
}

func checkReport(t *testing.T, r *inventory.Report, source string) {
	t.Helper()
	if !r.Created.Equal(created) || r.SourceBucket != source {
		t.Errorf("report created %v of bucket %q, want %v and %q", r.Created, r.SourceBucket, created, source)
	}
}

func TestInventoryLocal(t *testing.T) {
	for name, encode := range map[string]func(string) string{"aws": nil, "minimal": minimalEncoding} {
		t.Run(name, func(t *testing.T) {
			rep := inventorytest.Report{Prefix: "inventories/media", Created: created, EncodeKey: encode, Files: oddRows}
			manifest := rep.WriteDir(t, t.TempDir())
			r, err := inventory.Open(t.Context(), manifest, nil)
			if err != nil {
				t.Fatal(err)
			}
			checkReport(t, r, "forum-media")
			checkObjects(t, readAll(t, r), want(oddRows))
		})
	}
}

// s3Fetcher is a store over the bucket media, as the service configures it,
// which fetches from any bucket.
func s3Fetcher(t *testing.T, media *tests3.Bucket) *storage.S3 {
	t.Helper()
	s, err := storage.NewS3(t.Context(), storage.S3Config{
		Endpoint: media.Endpoint, Bucket: media.Name, Prefix: "media",
		AccessKey: media.AccessKey, SecretKey: media.SecretKey, Region: media.Region,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// noTempFiles points os.TempDir at a folder of its own, and checks at the
// end of the test that every temporary file was removed.
func noTempFiles(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("TMPDIR", dir)
	t.Cleanup(func() {
		if left, _ := os.ReadDir(dir); len(left) > 0 {
			t.Errorf("temporary files left: %v", left)
		}
	})
}

func TestInventoryS3(t *testing.T) {
	noTempFiles(t)
	media, dest := tests3.New(t), tests3.New(t)
	rep := inventorytest.Report{SourceBucket: media.Name, Prefix: "inv", Created: created, Files: oddRows}
	manifest := rep.Upload(t, dest)
	r, err := inventory.Open(t.Context(), manifest, s3Fetcher(t, media))
	if err != nil {
		t.Fatal(err)
	}
	checkReport(t, r, media.Name)
	checkObjects(t, readAll(t, r), want(oddRows))
}

func TestInventoryVersioned(t *testing.T) {
	files := [][]inventorytest.Row{{
		{Key: "a.jpg", Size: 1, LastModified: old},
		{Key: "a.jpg", Size: 9, LastModified: old.Add(-time.Hour), NotLatest: true},
		{Key: "gone.jpg", LastModified: old, DeleteMarker: true},
		{Key: "gone.jpg", Size: 2, LastModified: old.Add(-time.Hour), NotLatest: true},
		{Key: "b.jpg", Size: 3, LastModified: old},
	}}
	rep := inventorytest.Report{Schema: inventorytest.VersionedSchema, Created: created, Files: files}
	r, err := inventory.Open(t.Context(), rep.WriteDir(t, t.TempDir()), nil)
	if err != nil {
		t.Fatal(err)
	}
	checkObjects(t, readAll(t, r), want(files))
}

// A report without a Size column gives -1.
func TestInventoryNoSize(t *testing.T) {
	files := [][]inventorytest.Row{{{Key: "a.jpg", Size: 1, LastModified: old}}}
	rep := inventorytest.Report{Schema: "Bucket, Key, LastModifiedDate", Files: files}
	r, err := inventory.Open(t.Context(), rep.WriteDir(t, t.TempDir()), nil)
	if err != nil {
		t.Fatal(err)
	}
	files[0][0].Size = -1
	checkObjects(t, readAll(t, r), want(files))
}

// dataFiles returns the paths of a local report's data files, in the
// manifest's order.
func dataFiles(t *testing.T, manifest string) []string {
	t.Helper()
	data, err := os.ReadFile(manifest)
	if err != nil {
		t.Fatal(err)
	}
	var m struct{ Files []struct{ Key string } }
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, f := range m.Files {
		paths = append(paths, filepath.Join(filepath.Dir(manifest), "..", "data", filepath.Base(f.Key)))
	}
	return paths
}

// flipByte changes the last byte of data, keeping its size: part of the
// gzip trailer, which a reader would only check at the end.
func flipByte(data []byte) []byte {
	data = bytes.Clone(data)
	data[len(data)-1] ^= 0xff
	return data
}

// A corrupt file is refused before any of its rows is given; the rows of
// the files before it have been.
func TestInventoryCorrupt(t *testing.T) {
	for name, corrupt := range map[string]func([]byte) []byte{
		"md5":  flipByte,
		"size": func(data []byte) []byte { return append(bytes.Clone(data), 0) },
	} {
		t.Run(name, func(t *testing.T) {
			rep := inventorytest.Report{Created: created, Files: oddRows}
			manifest := rep.WriteDir(t, t.TempDir())
			second := dataFiles(t, manifest)[1]
			data, err := os.ReadFile(second)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(second, corrupt(data), 0o644); err != nil {
				t.Fatal(err)
			}
			checkCorrupt(t, manifest, nil)
		})
	}
	t.Run("s3", func(t *testing.T) {
		noTempFiles(t)
		media, dest := tests3.New(t), tests3.New(t)
		rep := inventorytest.Report{Created: created, Files: oddRows}
		rep.DestinationBucket = dest.Name
		key, objects := rep.Objects(t)
		var m struct{ Files []struct{ Key string } }
		if err := json.Unmarshal(objects[key], &m); err != nil {
			t.Fatal(err)
		}
		second := m.Files[1].Key
		objects[second] = flipByte(objects[second])
		for k, data := range objects {
			if _, err := dest.Client.PutObject(t.Context(), dest.Name, k, bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		checkCorrupt(t, "s3://"+dest.Name+"/"+key, s3Fetcher(t, media))
	})
}

func checkCorrupt(t *testing.T, manifest string, fetch inventory.Fetcher) {
	t.Helper()
	r, err := inventory.Open(t.Context(), manifest, fetch)
	if err != nil {
		t.Fatal(err)
	}
	var got []inventory.Object
	err = r.Each(t.Context(), func(o inventory.Object) error {
		got = append(got, o)
		return nil
	})
	t.Log(err)
	if !errors.Is(err, inventory.ErrCorrupt) {
		t.Errorf("Each = %v, want ErrCorrupt", err)
	}
	checkObjects(t, got, want(oddRows[:1]))
}

func TestInventoryUnsupported(t *testing.T) {
	for name, rep := range map[string]inventorytest.Report{
		"ORC":           {Format: "ORC"},
		"Parquet":       {Format: "Parquet"},
		"Key":           {Schema: "Bucket, Size, LastModifiedDate"},
		"LastModified":  {Schema: "Bucket, Key, Size, ETag"},
		"Key, LastMod.": {Schema: "Bucket, Size"},
	} {
		t.Run(name, func(t *testing.T) {
			rep.Files = oddRows
			_, err := inventory.Open(t.Context(), rep.WriteDir(t, t.TempDir()), nil)
			t.Log(err)
			if !errors.Is(err, inventory.ErrUnsupported) {
				t.Errorf("Open = %v, want ErrUnsupported", err)
			}
			if rep.Format != "" && !strings.Contains(fmt.Sprint(err), rep.Format) {
				t.Errorf("Open = %v, does not name the format", err)
			}
		})
	}
}

func TestInventoryS3NeedsFetcher(t *testing.T) {
	_, err := inventory.Open(t.Context(), "s3://inventories/forum-media/daily/2025-10-04T01-00Z/manifest.json", nil)
	if err == nil || !strings.Contains(err.Error(), "storage.backend s3") {
		t.Errorf("Open = %v, want an error saying storage.backend must be s3", err)
	}
}

// A local copy is read by the layout below its config folder, whatever the
// folders are called and however deep the copy starts.
func TestInventoryLocalCopyOfConfigFolder(t *testing.T) {
	rep := inventorytest.Report{Prefix: "a/b", Created: created, Files: oddRows}
	key, objects := rep.Objects(t)
	dir := t.TempDir()
	for k, data := range objects {
		// `aws s3 sync s3://inventories/a/b/forum-media/daily/ my-copy/`
		p := filepath.Join(dir, "my-copy", strings.TrimPrefix(k, "a/b/forum-media/daily/"))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Chdir(filepath.Join(dir, "my-copy", filepath.Base(filepath.Dir(key))))
	r, err := inventory.Open(t.Context(), "manifest.json", nil)
	if err != nil {
		t.Fatal(err)
	}
	checkObjects(t, readAll(t, r), want(oddRows))
}

func TestInventoryLocalMissingFile(t *testing.T) {
	manifest := inventorytest.Report{Files: oddRows}.WriteDir(t, t.TempDir())
	if err := os.Remove(dataFiles(t, manifest)[1]); err != nil {
		t.Fatal(err)
	}
	r, err := inventory.Open(t.Context(), manifest, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = r.Each(t.Context(), func(inventory.Object) error { return nil })
	t.Log(err)
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Each = %v, want ErrNotExist", err)
	}
}

// writeRaw writes a local report of one data file holding csvText, and
// returns the path of its manifest.
func writeRaw(t *testing.T, schema, fileKey, csvText string) string {
	t.Helper()
	dir := t.TempDir()
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte(csvText))
	zw.Close()
	sum := md5.Sum(gz.Bytes())
	m, _ := json.Marshal(map[string]any{
		"sourceBucket": "forum-media", "destinationBucket": "arn:aws:s3:::inventories",
		"version": "2016-11-30", "creationTimestamp": "1759539600000",
		"fileFormat": "CSV", "fileSchema": schema,
		"files": []map[string]any{{"key": fileKey, "size": gz.Len(), "MD5checksum": hex.EncodeToString(sum[:])}},
	})
	for p, data := range map[string][]byte{
		"forum-media/daily/2025-10-04T01-00Z/manifest.json": m,
		"forum-media/daily/data/x.csv.gz":                   gz.Bytes(),
	} {
		p = filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return filepath.Join(dir, "forum-media/daily/2025-10-04T01-00Z/manifest.json")
}

const goodRow = `"forum-media","a.jpg","1","2025-09-01T12:00:07.000Z"` + "\n"

func TestInventoryMalformed(t *testing.T) {
	const schema = "Bucket, Key, Size, LastModifiedDate"
	for name, csvText := range map[string]string{
		"date":    `"forum-media","b.jpg","1","yesterday"`,
		"no date": `"forum-media","b.jpg","1",""`,
		"escape":  `"forum-media","b%zz.jpg","1","2025-09-01T12:00:07.000Z"`,
		"no key":  `"forum-media","","1","2025-09-01T12:00:07.000Z"`,
		"size":    `"forum-media","b.jpg","-1","2025-09-01T12:00:07.000Z"`,
		"fields":  `"forum-media","b.jpg","1"`,
		"quotes":  `"forum-media","b"c.jpg","1","2025-09-01T12:00:07.000Z"`,
		"bucket":  `"other-bucket","b.jpg","1","2025-09-01T12:00:07.000Z"`,
	} {
		t.Run(name, func(t *testing.T) {
			r, err := inventory.Open(t.Context(), writeRaw(t, schema, "forum-media/daily/data/x.csv.gz", goodRow+csvText+"\n"), nil)
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			err = r.Each(t.Context(), func(inventory.Object) error { n++; return nil })
			t.Log(err)
			if err == nil || !strings.Contains(err.Error(), "line 2") {
				t.Errorf("Each = %v, want an error at line 2", err)
			}
			if n != 1 {
				t.Errorf("Each gave %d objects before the bad row, want 1", n)
			}
		})
	}
}

func TestInventoryBadManifest(t *testing.T) {
	for name, fileKey := range map[string]string{
		"not in data/": "forum-media/daily/x.csv.gz",
		"dot dot":      "forum-media/daily/data/..",
	} {
		t.Run(name, func(t *testing.T) {
			_, err := inventory.Open(t.Context(), writeRaw(t, "Key, LastModifiedDate", fileKey, ""), nil)
			t.Log(err)
			if err == nil {
				t.Error("Open succeeded")
			}
		})
	}
}

func TestInventoryStopsOnFnError(t *testing.T) {
	r, err := inventory.Open(t.Context(), inventorytest.Report{Files: oddRows}.WriteDir(t, t.TempDir()), nil)
	if err != nil {
		t.Fatal(err)
	}
	stop := errors.New("stop")
	n := 0
	err = r.Each(t.Context(), func(inventory.Object) error {
		if n++; n == 3 {
			return stop
		}
		return nil
	})
	if err != stop || n != 3 {
		t.Errorf("Each = %v after %d objects, want fn's error as it is after 3", err, n)
	}

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := r.Each(ctx, func(inventory.Object) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Errorf("Each with a done context = %v, want context.Canceled", err)
	}
}

// A large report is streamed file by file, row by row.
func TestInventoryManyRows(t *testing.T) {
	const rows, files = 100_000, 4
	rep := inventorytest.Report{Schema: "Bucket, Key, Size, LastModifiedDate", Files: make([][]inventorytest.Row, files)}
	for i := range rows {
		f := i % files
		rep.Files[f] = append(rep.Files[f], inventorytest.Row{
			Key: fmt.Sprintf("forum/attachments/2025/10/%02d/%07d image.jpg", i%31+1, i), Size: int64(i), LastModified: old,
		})
	}
	r, err := inventory.Open(t.Context(), rep.WriteDir(t, t.TempDir()), nil)
	if err != nil {
		t.Fatal(err)
	}
	var n, sum int64
	if err := r.Each(t.Context(), func(o inventory.Object) error {
		n++
		sum += o.Size
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if n != rows || sum != rows*(rows-1)/2 {
		t.Errorf("Each gave %d objects of %d bytes, want %d of %d", n, sum, rows, rows*(rows-1)/2)
	}
}
