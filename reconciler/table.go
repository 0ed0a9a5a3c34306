package reconciler

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"

	"github.com/reconcile/reconcile/index"
	"github.com/reconcile/reconcile/internal/derived"
)

// Table names the attachment table and the columns reconcile reads.
type Table struct {
	Schema           string
	Name             string
	ID               string
	Key              string
	OriginalFilename string
	IsActive         string
	DeletedAt        string
	// TimeZone is the zone of a deleted_at without time zone (Django's
	// TIME_ZONE); empty: the database session's.
	TimeZone string
	// Derived name the files derived from each row's file (thumbnails).
	Derived []derived.Pattern
	// Keys are every storage key column, when a row has several files (an
	// image and a document); empty: Key alone.
	Keys []string
	// IsDeleted is the flag whose true marks a soft-deleted row, for a
	// table without IsActive; with neither, a row is soft-deleted when
	// DeletedAt is set.
	IsDeleted string
	// Section names the table's configuration in messages ("tables[2]");
	// empty: "table".
	Section string
	// Prefixes are the folders the table owns, for Tables.ScanOrphans;
	// empty: the default ones.
	Prefixes []string
}

// keyColumns are the storage key columns.
func (t Table) keyColumns() []string {
	if len(t.Keys) > 0 {
		return t.Keys
	}
	return []string{t.Key}
}

// IndexName names the table's part of the index, as the stream names its
// changes.
func (t Table) IndexName() string { return t.Schema + "." + t.Name }

// description is what a fingerprint holds of a table: enough to drain
// its outbox once the table has left the configuration.
type description struct {
	Schema, Name, ID string
	Keys             []string
	OriginalFilename string
	IsActive         string
	IsDeleted        string
	DeletedAt        string
	TimeZone         string
	Derived          []string
}

// Fingerprint describes the table its part of the index is filled from:
// another fingerprint (a flag, a key column changed) calls for a rescan,
// and ParseFingerprint reads the table back.
func (t Table) Fingerprint() string {
	d := description{Schema: t.Schema, Name: t.Name, ID: t.ID, Keys: t.keyColumns(), OriginalFilename: t.OriginalFilename,
		IsActive: t.IsActive, IsDeleted: t.IsDeleted, DeletedAt: t.DeletedAt, TimeZone: t.TimeZone}
	for _, p := range t.Derived {
		d.Derived = append(d.Derived, p.String())
	}
	b, err := json.Marshal(d)
	if err != nil {
		panic(fmt.Sprintf("describe table %s: %v", t.qualified(), err)) // strings only
	}
	return string(b)
}

// ParseFingerprint reads back the table a Fingerprint describes.
func ParseFingerprint(fingerprint string) (Table, error) {
	var d description
	if err := json.Unmarshal([]byte(fingerprint), &d); err != nil || d.Name == "" || len(d.Keys) == 0 {
		return Table{}, fmt.Errorf("the index describes a table as %q: not a table reconcile wrote", fingerprint)
	}
	t := Table{Schema: d.Schema, Name: d.Name, ID: d.ID, Key: d.Keys[0], Keys: d.Keys, OriginalFilename: d.OriginalFilename,
		IsActive: d.IsActive, IsDeleted: d.IsDeleted, DeletedAt: d.DeletedAt, TimeZone: d.TimeZone}
	for _, text := range d.Derived {
		p, err := derived.Parse(text)
		if err != nil {
			return Table{}, fmt.Errorf("the index describes table %s with derived pattern %q: %w", t.qualified(), text, err)
		}
		t.Derived = append(t.Derived, p)
	}
	return t, nil
}

// softDeleted is the predicate of a soft-deleted row, its columns
// qualified by alias ("" or "t.").
func (t Table) softDeleted(alias string) string {
	switch {
	case t.IsActive != "":
		return alias + quote(t.IsActive) + " = false"
	case t.IsDeleted != "":
		return alias + quote(t.IsDeleted) + " = true"
	}
	return alias + quote(t.DeletedAt) + " IS NOT NULL"
}

// joinedKeys is the row's keys as the index holds them: the key, or the
// keys joined by index.KeySeparator; NULL is ”.
func (t Table) joinedKeys(alias string) string {
	var parts []string
	for _, k := range t.keyColumns() {
		parts = append(parts, "coalesce("+alias+quote(k)+"::text, '')")
	}
	return strings.Join(parts, " || chr(31) || ")
}

// keyArray is the row's keys as an array, NULL as ”.
func (t Table) keyArray(alias string) string {
	var parts []string
	for _, k := range t.keyColumns() {
		parts = append(parts, "coalesce("+alias+quote(k)+"::text, '')")
	}
	return "ARRAY[" + strings.Join(parts, ", ") + "]"
}

// splitKeys are the storage keys of an index entry's Key, without the
// empty ones.
func (t Table) splitKeys(joined string) []string {
	if len(t.keyColumns()) == 1 {
		if joined == "" {
			return nil
		}
		return []string{joined}
	}
	var out []string
	for _, k := range strings.Split(joined, index.KeySeparator) {
		if k != "" {
			out = append(out, k)
		}
	}
	return out
}

// derivedIndexName names the index of a derived pattern's locations for
// the key column key after the expression it indexes: an index of another
// expression, which the queries would not use, never passes for it.
func (t Table) derivedIndexName(table, key string, p derived.Pattern) string {
	h := fnv.New32a()
	_, _ = h.Write([]byte(p.SQL(quote(key))))
	return objectName(table, fmt.Sprintf("derived_%08x_idx", h.Sum32()))
}

// keyIndexName names the index of the key column number i: the first
// keeps the name it had before tables had several.
func keyIndexName(table string, i int) string {
	if i == 0 {
		return objectName(table, "key_idx")
	}
	return objectName(table, fmt.Sprintf("key%d_idx", i+1))
}

// objectName names what reconcile creates for a table, within Postgres's 63
// bytes: one outbox and its indexes per table, so that two tables in one
// schema, each with its own storage, never drain each other's keys.
func objectName(table, what string) string {
	prefix, suffix := "reconcile_"+table, "_"+what
	if len(prefix)+len(suffix) <= 63 {
		return prefix + suffix
	}
	// Too long: cut on a character boundary and add a hash of the whole
	// table name, so two long names that start alike stay apart.
	h := fnv.New32a()
	_, _ = h.Write([]byte(table))
	suffix = fmt.Sprintf("_%08x%s", h.Sum32(), suffix)
	for len(prefix)+len(suffix) > 63 || !utf8.ValidString(prefix) {
		prefix = prefix[:len(prefix)-1]
	}
	return prefix + suffix
}

func quote(parts ...string) string { return pgx.Identifier(parts).Sanitize() }

func (t Table) qualified() string { return quote(t.Schema, t.Name) }
func (t Table) outbox() string    { return quote(t.Schema, objectName(t.Name, "outbox")) }

// lockName names the advisory lock of the process that purges the table.
func (t Table) lockName() string { return "reconcile:" + t.qualified() }

// column pairs a configured column with its configuration key, so errors
// name what the user has to change.
type column struct {
	key, name string
	types     []string // accepted type names (pg_type.typname); none: any
}

func (t Table) columns() []column {
	text := []string{"text", "varchar", "bpchar"}
	section := t.Section
	if section == "" {
		section = "table"
	}
	cols := []column{{section + ".columns.id", t.ID, nil}}
	for _, k := range t.keyColumns() {
		cols = append(cols, column{section + ".columns.key", k, text})
	}
	cols = append(cols, column{section + ".columns.original_filename", t.OriginalFilename, text})
	if t.IsActive != "" {
		cols = append(cols, column{section + ".columns.is_active", t.IsActive, []string{"bool"}})
	}
	if t.IsDeleted != "" {
		cols = append(cols, column{section + ".columns.is_deleted", t.IsDeleted, []string{"bool"}})
	}
	return append(cols, column{section + ".columns.deleted_at", t.DeletedAt, []string{"timestamptz", "timestamp"}})
}

// columnTypes are what the statements need to know of the table.
type columnTypes struct {
	id        string // the id column's type, which id parameters are cast to
	naiveTime bool   // deleted_at is a timestamp without time zone
	// unusedFlags are boolean columns named as soft-delete flags
	// (is_active, is_deleted) that the configuration does not name.
	unusedFlags []string
}

// check compares the configuration with the catalog and returns the column
// types the statements depend on.
func (t Table) check(ctx context.Context, db DB) (columnTypes, error) {
	rows, err := db.Query(ctx, `
		SELECT a.attname, ty.typname, format_type(a.atttypid, a.atttypmod)
		FROM pg_attribute a
		JOIN pg_class c ON c.oid = a.attrelid
		JOIN pg_namespace n ON n.oid = c.relnamespace
		JOIN pg_type ty ON ty.oid = a.atttypid
		WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')
		  AND a.attnum > 0 AND NOT a.attisdropped`, t.Schema, t.Name)
	if err != nil {
		return columnTypes{}, fmt.Errorf("read columns of %s: %w", t.qualified(), err)
	}
	type colType struct{ typname, formatted string }
	found := map[string]colType{}
	var names []string
	for rows.Next() {
		var name string
		var ct colType
		if err := rows.Scan(&name, &ct.typname, &ct.formatted); err != nil {
			rows.Close()
			return columnTypes{}, fmt.Errorf("read columns of %s: %w", t.qualified(), err)
		}
		found[name] = ct
		names = append(names, name)
	}
	if err := rows.Err(); err != nil {
		return columnTypes{}, fmt.Errorf("read columns of %s: %w", t.qualified(), err)
	}
	if len(found) == 0 {
		return columnTypes{}, fmt.Errorf("table.schema, table.name: no table %s in the database: %w", t.qualified(), ErrSetup)
	}
	slices.Sort(names)
	var problems []string
	for _, c := range t.columns() {
		ct, ok := found[c.name]
		switch {
		case !ok:
			problems = append(problems, fmt.Sprintf("%s: column %q does not exist in %s (its columns: %s)", c.key, c.name, t.qualified(), strings.Join(names, ", ")))
		case c.types != nil && !slices.Contains(c.types, ct.typname):
			problems = append(problems, fmt.Sprintf("%s: column %q is %s, want one of %s", c.key, c.name, ct.formatted, strings.Join(c.types, ", ")))
		}
	}
	if len(problems) > 0 {
		return columnTypes{}, fmt.Errorf("%s: %w", strings.Join(problems, "; "), ErrSetup)
	}
	types := columnTypes{id: found[t.ID].formatted, naiveTime: found[t.DeletedAt].typname == "timestamp"}
	for _, flag := range []string{"is_active", "is_deleted"} {
		if found[flag].typname == "bool" && flag != t.IsActive && flag != t.IsDeleted {
			types.unusedFlags = append(types.unusedFlags, flag)
		}
	}
	if t.TimeZone != "" {
		// Only names: PostgreSQL reads an offset ("+02:00", "UTC+2") as a
		// POSIX zone, west of Greenwich for a plus, the opposite of Django.
		// Nor a name that is also an abbreviation with an offset (CET,
		// EET): AT TIME ZONE takes the abbreviation's fixed offset, where
		// the zone of that name changes to summer time.
		var known, abbrev bool
		if err := db.QueryRow(ctx, `
			SELECT EXISTS (SELECT 1 FROM pg_timezone_names WHERE name = $1),
			       EXISTS (SELECT 1 FROM pg_timezone_abbrevs WHERE abbrev = upper($1) AND utc_offset <> interval '0')`,
			t.TimeZone).Scan(&known, &abbrev); err != nil {
			return columnTypes{}, fmt.Errorf("read time zone names: %w", err)
		}
		switch {
		case !known:
			return columnTypes{}, fmt.Errorf("table.time_zone: %q is not a time zone name PostgreSQL knows (pg_timezone_names): give Django's TIME_ZONE, such as Europe/Paris, not an offset: %w", t.TimeZone, ErrSetup)
		case abbrev:
			return columnTypes{}, fmt.Errorf("table.time_zone: %q is also an abbreviation, which PostgreSQL reads as a fixed offset, without summer time: give the region's name, such as Europe/Paris: %w", t.TimeZone, ErrSetup)
		}
	}
	return types, nil
}

// shapeWarnings say when the table has a soft-delete flag the
// configuration does not name: a row it marks restored, or never deleted,
// is purged all the same when the configured shape says so.
func (t Table) shapeWarnings(types columnTypes) []string {
	section := cmp.Or(t.Section, "table")
	var out []string
	for _, flag := range types.unusedFlags {
		out = append(out, fmt.Sprintf("%s has a boolean column %q that %s.columns does not name: a row is taken for soft-deleted when %s, whatever %s holds; if %s marks deletion or restoration, name it in %s.columns",
			t.qualified(), flag, section, t.softDeleted(""), flag, flag, section))
	}
	return out
}

// timeWarning says what an operator should know of how deleted_at is read,
// or nothing.
func (t Table) timeWarning(ctx context.Context, db DB, types columnTypes) string {
	switch {
	case types.naiveTime && t.TimeZone == "":
		var zone string
		if err := db.QueryRow(ctx, `SHOW TimeZone`).Scan(&zone); err != nil {
			zone = "unknown"
		}
		return fmt.Sprintf("table.columns.deleted_at (%s) is a timestamp without time zone: its times are taken as wall times of the database session's TimeZone (%s); if Django's TIME_ZONE differs (USE_TZ = False), set table.time_zone to it, or rows are purged early or late by the difference", t.DeletedAt, zone)
	case !types.naiveTime && t.TimeZone != "":
		return fmt.Sprintf("table.time_zone (%s) is ignored: table.columns.deleted_at (%s) is a timestamp with time zone, which needs none", t.TimeZone, t.DeletedAt)
	}
	return ""
}

// literal writes a configuration value that config has held to letters,
// digits and / _ + : . - as a SQL string literal.
func literal(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
