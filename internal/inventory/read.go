package inventory

import (
	"compress/gzip"
	"context"
	"crypto/md5"
	"encoding/csv"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// ErrCorrupt marks a data file whose size or MD5 checksum is not the one
// its manifest gives.
var ErrCorrupt = errors.New("the file does not match the manifest")

// Object is an object a report lists.
type Object struct {
	Key          string // in the source bucket, URL-decoded
	Size         int64  // bytes; -1 when the report has no Size column
	LastModified time.Time
}

// Each calls fn for every object the report lists, file by file in the
// manifest's order and row by row in each file: not in the order of keys.
// Rows of a versioned report that are not the latest version of their key,
// or are delete markers, are skipped. A file is checked against the size
// and checksum its manifest gives before any of its rows reaches fn (see
// ErrCorrupt). A malformed row or a file that cannot be read ends Each with
// an error naming the file; an error of fn stops it and is returned as it
// is.
func (r *Report) Each(ctx context.Context, fn func(Object) error) error {
	for _, f := range r.files {
		if err := r.eachIn(ctx, f, fn); err != nil {
			return err
		}
	}
	return nil
}

// ctxEvery is how many rows are read between looks at the context.
const ctxEvery = 1024

func (r *Report) eachIn(ctx context.Context, f file, fn func(Object) error) error {
	where := r.where(f)
	gz, err := r.open(ctx, f)
	if err != nil {
		return fmt.Errorf("inventory file %s: %w", where, err)
	}
	defer gz.Close()
	zr, err := gzip.NewReader(gz)
	if err != nil {
		return fmt.Errorf("read inventory file %s: %w", where, err)
	}
	rows := csv.NewReader(zr)
	rows.FieldsPerRecord = r.columns.n
	rows.ReuseRecord = true
	for n := 0; ; n++ {
		if n%ctxEvery == 0 {
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("read inventory file %s: %w", where, err)
			}
		}
		row, err := rows.Read()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil { // a csv.ParseError tells the line
			return fmt.Errorf("read inventory file %s: %w", where, err)
		}
		obj, current, err := r.columns.object(row, r.SourceBucket)
		if err != nil {
			line, _ := rows.FieldPos(0)
			return fmt.Errorf("inventory file %s line %d: %w", where, line, err)
		}
		if !current {
			continue
		}
		if err := fn(obj); err != nil {
			return err
		}
	}
}

// open returns the gzipped data file f at its start, checked against the
// manifest. A local file is read twice; a fetched one is copied to a
// temporary file while it is checked, rather than fetched twice.
func (r *Report) open(ctx context.Context, f file) (io.ReadCloser, error) {
	var (
		gz   io.ReadSeekCloser
		data io.Reader // gz's bytes, as they are checked
	)
	if r.fetch == nil {
		p, _ := r.localPath(f) // checked by fill
		file, err := os.Open(p)
		if pathErr := (*fs.PathError)(nil); errors.As(err, &pathErr) {
			return nil, pathErr.Err // the caller names the file
		}
		if err != nil {
			return nil, err
		}
		gz, data = file, file
	} else {
		body, err := r.fetch.Fetch(ctx, r.bucket, f.Key)
		if err != nil {
			return nil, err
		}
		defer body.Close()
		tmp, err := os.CreateTemp("", "reconcile-inventory-*.csv.gz")
		if err != nil {
			return nil, err
		}
		gz, data = tempFile{tmp}, io.TeeReader(body, tmp)
	}
	err := check(f, data)
	if err == nil {
		_, err = gz.Seek(0, io.SeekStart)
	}
	if err != nil {
		gz.Close()
		return nil, err
	}
	return gz, nil
}

// tempFile is removed once closed.
type tempFile struct{ *os.File }

func (t tempFile) Close() error {
	return errors.Join(t.File.Close(), os.Remove(t.Name()))
}

// check reads data, the file f, to its end and compares its size and MD5
// checksum with those the manifest gives, when it gives them.
func check(f file, data io.Reader) error {
	h := md5.New()
	n, err := io.Copy(h, data)
	switch sum := hex.EncodeToString(h.Sum(nil)); {
	case err != nil:
		return err
	case f.Size != nil && n != *f.Size:
		return fmt.Errorf("%w: %d bytes, the manifest says %d", ErrCorrupt, n, *f.Size)
	case f.MD5 != "" && !strings.EqualFold(sum, f.MD5):
		return fmt.Errorf("%w: MD5 %s, the manifest says %s", ErrCorrupt, sum, f.MD5)
	}
	return nil
}

// columns tells where each field a row carries is: its index, or -1.
type columns struct {
	n                                                     int
	bucket, key, size, modified, isLatest, isDeleteMarker int
}

// parseSchema reads the manifest's fileSchema, the names of the columns
// ("Bucket, Key, Size, LastModifiedDate, ETag"). Key and LastModifiedDate
// are required.
func parseSchema(schema string) (columns, error) {
	c := columns{bucket: -1, key: -1, size: -1, modified: -1, isLatest: -1, isDeleteMarker: -1}
	known := map[string]*int{
		"Bucket": &c.bucket, "Key": &c.key, "Size": &c.size, "LastModifiedDate": &c.modified,
		"IsLatest": &c.isLatest, "IsDeleteMarker": &c.isDeleteMarker,
	}
	for i, name := range strings.Split(schema, ",") {
		name = strings.TrimSpace(name)
		if at, ok := known[name]; ok {
			if *at >= 0 {
				return c, fmt.Errorf("fileSchema %q: two %s columns", schema, name)
			}
			*at = i
		}
		c.n++
	}
	var missing []string
	if c.key < 0 {
		missing = append(missing, "Key")
	}
	if c.modified < 0 {
		missing = append(missing, "LastModifiedDate")
	}
	if len(missing) > 0 {
		return c, fmt.Errorf("%w: fileSchema %q has no %s column: the report must tell each object's key and last modification (add the Last modified field to the inventory configuration)",
			ErrUnsupported, schema, strings.Join(missing, " or "))
	}
	return c, nil
}

// object reads a row of the report of bucket; current is false for a row
// that is not the current object of its key.
func (c columns) object(row []string, bucket string) (obj Object, current bool, err error) {
	for _, flag := range []struct {
		name string
		at   int
		skip bool // a row whose flag has this value is skipped
	}{{"IsLatest", c.isLatest, false}, {"IsDeleteMarker", c.isDeleteMarker, true}} {
		if flag.at < 0 {
			continue
		}
		v, err := strconv.ParseBool(row[flag.at])
		if err != nil {
			return obj, false, fmt.Errorf("the %s column is %q, not true or false", flag.name, row[flag.at])
		}
		if v == flag.skip {
			return obj, false, nil
		}
	}
	if c.bucket >= 0 && row[c.bucket] != bucket {
		return obj, false, fmt.Errorf("the Bucket column is %q, not the report's source bucket %q", row[c.bucket], bucket)
	}
	// AWS writes keys URL-encoded as HTML forms are: a space as '+', a '+' as %2B.
	if obj.Key, err = url.QueryUnescape(row[c.key]); err != nil || obj.Key == "" {
		return obj, false, fmt.Errorf("the Key column is %q, not a URL-encoded key", row[c.key])
	}
	if obj.LastModified, err = time.Parse(time.RFC3339Nano, row[c.modified]); err != nil {
		return obj, false, fmt.Errorf("the LastModifiedDate column is %q, not a time such as 2025-10-04T12:00:07.000Z", row[c.modified])
	}
	obj.Size = -1
	if c.size >= 0 {
		if obj.Size, err = strconv.ParseInt(row[c.size], 10, 64); err != nil || obj.Size < 0 {
			return obj, false, fmt.Errorf("the Size column is %q, not a size", row[c.size])
		}
	}
	return obj, true, nil
}
