package reconciler

import (
	"context"
	"fmt"
	"hash/fnv"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"

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
}

// derivedIndexName names the index of a derived pattern's locations after
// the expression it indexes: an index of another expression, which the
// queries would not use, never passes for it.
func (t Table) derivedIndexName(table string, p derived.Pattern) string {
	h := fnv.New32a()
	_, _ = h.Write([]byte(p.SQL(quote(t.Key))))
	return objectName(table, fmt.Sprintf("derived_%08x_idx", h.Sum32()))
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
	return []column{
		{"table.columns.id", t.ID, nil},
		{"table.columns.key", t.Key, text},
		{"table.columns.original_filename", t.OriginalFilename, text},
		{"table.columns.is_active", t.IsActive, []string{"bool"}},
		{"table.columns.deleted_at", t.DeletedAt, []string{"timestamptz", "timestamp"}},
	}
}

// columnTypes are what the statements need to know of the table.
type columnTypes struct {
	id        string // the id column's type, which id parameters are cast to
	naiveTime bool   // deleted_at is a timestamp without time zone
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
