package main

import (
	"crypto/md5"
	"encoding/hex"
	"math/rand/v2"
	"path"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
)

const (
	day = 24 * time.Hour

	// retention is the age at which a soft-deleted row falls due; it must
	// match duePredicate and the RECONCILE_RETENTION given to reconcile.
	retention = 30 * day

	// margin keeps every generated deletion at least this far from the
	// cutoff, so that the rows due when seeding are the rows due when
	// checking, however long a run takes (up to the margin).
	margin = time.Hour

	// randomSeed makes every seeding of a size produce the same rows, keys and
	// file sizes.
	randomSeed = 20251004
)

// duePredicate selects the due rows, as the cron job and reconcile do.
const duePredicate = "is_active = false AND deleted_at <= now() - interval '30 days'"

// attachment is one generated row; times are ages, taken back from the
// moment of each seeding.
type attachment struct {
	id          pgtype.UUID
	key         string
	name        string
	deleted     bool
	deletedAge  time.Duration
	uploadedAge time.Duration
	size        int // bytes of its file
	due         bool
}

type dataset struct {
	rows    []attachment
	due     int
	content []byte // file contents; each file is a prefix of it

	// derived gives every row a file per imagekit spec (derivedSpecs),
	// stored beside its own: the table is then configured with
	// table.derived: [imagekit].
	derived bool
	// orphans are files that no row names: stored, never copied.
	orphans []attachment
}

// derivedSpecs are the imagekit specs each row has a file of, with -derived.
var derivedSpecs = []string{"thumbnail", "medium", "large"}

// derivedKeys are where django-imagekit's default namer puts the files of
// key: CACHE/images/<key without ext>/<32 hex>.jpg, one per spec.
func derivedKeys(key string) []string {
	folder := "CACHE/images/" + strings.TrimSuffix(key, path.Ext(key)) + "/"
	out := make([]string, len(derivedSpecs))
	for i, spec := range derivedSpecs {
		sum := md5.Sum([]byte(spec + "\x00" + key))
		out[i] = folder + hex.EncodeToString(sum[:]) + ".jpg"
	}
	return out
}

// storedFile is one file of a dataset: a row's own, one derived from it,
// or an orphan.
type storedFile struct {
	key         string
	size        int
	uploadedAge time.Duration
}

// rowFiles are the keys of a row's files: its own, then its derived ones.
func (ds *dataset) rowFiles(r *attachment) []string {
	if !ds.derived {
		return []string{r.key}
	}
	return append([]string{r.key}, derivedKeys(r.key)...)
}

// files lists every file the dataset stores.
func (ds *dataset) files() []storedFile {
	out := make([]storedFile, 0, len(ds.rows)+len(ds.orphans))
	for i := range ds.rows {
		r := &ds.rows[i]
		for _, key := range ds.rowFiles(r) {
			out = append(out, storedFile{key: key, size: r.size, uploadedAge: r.uploadedAge})
		}
	}
	for _, o := range ds.orphans {
		out = append(out, storedFile{key: o.key, size: o.size, uploadedAge: o.uploadedAge})
	}
	return out
}

// mixedDataset returns n rows, every other one soft-deleted at an age spread
// uniformly over the last 90 days, so about a third of the rows are due.
func mixedDataset(n int) *dataset {
	return generate(n, func(i int, rng *rand.Rand) (bool, time.Duration) {
		if i%2 == 0 {
			return false, 0
		}
		age := time.Duration(rng.Int64N(int64(90 * day)))
		if d := age - retention; d > -margin && d < margin {
			if d < 0 {
				age -= margin
			} else {
				age += margin
			}
		}
		return true, age
	})
}

// dueDataset returns n rows, all soft-deleted 31 to 90 days ago: all due.
func dueDataset(n int) *dataset {
	return generate(n, func(_ int, rng *rand.Rand) (bool, time.Duration) {
		return true, retention + day + time.Duration(rng.Int64N(int64(59*day)))
	})
}

func generate(n int, deletion func(i int, rng *rand.Rand) (deleted bool, age time.Duration)) *dataset {
	rng := rand.New(rand.NewPCG(randomSeed, uint64(n)))
	ds := &dataset{rows: make([]attachment, n), content: make([]byte, 4096)}
	for i := range ds.content {
		ds.content[i] = byte(rng.Uint32())
	}
	// Keys carry the upload date, as Django's upload_to does; dates are
	// fixed at generation so every seeding has the same keys.
	ref := time.Now().UTC()
	for i := range ds.rows {
		r := &ds.rows[i]
		r.id = randomUUID(rng)
		r.deleted, r.deletedAge = deletion(i, rng)
		if r.deleted {
			r.uploadedAge = r.deletedAge + time.Duration(rng.Int64N(int64(365*day)))
			r.due = r.deletedAge > retention
		} else {
			r.uploadedAge = time.Duration(rng.Int64N(int64(730 * day)))
		}
		r.key = uploadKey(ref, r)
		r.name = "IMG_" + uuidString(r.id.Bytes)[:8] + ".jpg"
		r.size = 1024 + rng.IntN(3*1024+1)
		if r.due {
			ds.due++
		}
	}
	return ds
}

// orphanFolders is how many day folders the orphan scan's dataset spreads
// its files over.
const orphanFolders = 1000

// orphanDataset returns n rows, uploaded over the last orphanFolders days
// (every other one soft-deleted within the retention: none due), and n/100
// orphans: files in the same folders that no row names. Every file is a day
// old or more, older than the scan's grace.
func orphanDataset(n int) *dataset {
	rng := rand.New(rand.NewPCG(randomSeed, uint64(n)))
	ds := &dataset{rows: make([]attachment, n), orphans: make([]attachment, n/100), content: make([]byte, 1024)}
	for i := range ds.content {
		ds.content[i] = byte(rng.Uint32())
	}
	ref := time.Now().UTC()
	upload := func(r *attachment) {
		r.id = randomUUID(rng)
		r.uploadedAge = day + time.Duration(rng.Int64N(int64((orphanFolders-1)*day)))
		r.key = uploadKey(ref, r)
		r.name = "IMG_" + uuidString(r.id.Bytes)[:8] + ".jpg"
		r.size = 64 + rng.IntN(len(ds.content)-64+1)
	}
	for i := range ds.rows {
		r := &ds.rows[i]
		upload(r)
		if i%2 == 1 {
			r.deleted = true
			r.deletedAge = min(r.uploadedAge, time.Duration(rng.Int64N(int64(retention-day))))
		}
	}
	for i := range ds.orphans {
		upload(&ds.orphans[i])
	}
	return ds
}

// uploadKey is where Django's upload_to "forum/attachments/%Y/%m/%d/" puts
// a row's file: its upload date, taken back from ref.
func uploadKey(ref time.Time, r *attachment) string {
	return "forum/attachments/" + ref.Add(-r.uploadedAge).Format("2006/01/02") + "/" + uuidString(r.id.Bytes) + ".jpg"
}

func randomUUID(rng *rand.Rand) pgtype.UUID {
	var u pgtype.UUID
	for i := 0; i < 16; i += 8 {
		v := rng.Uint64()
		for j := range 8 {
			u.Bytes[i+j] = byte(v >> (8 * j))
		}
	}
	u.Bytes[6] = u.Bytes[6]&0x0f | 0x40 // version 4
	u.Bytes[8] = u.Bytes[8]&0x3f | 0x80 // RFC 4122 variant
	u.Valid = true
	return u
}

func uuidString(b [16]byte) string {
	var s [36]byte
	hex.Encode(s[0:8], b[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], b[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], b[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], b[8:10])
	s[23] = '-'
	hex.Encode(s[24:], b[10:])
	return string(s[:])
}
