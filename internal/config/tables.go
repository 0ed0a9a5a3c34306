package config

import (
	"fmt"
	"maps"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/spf13/viper"
	"go.yaml.in/yaml/v3"

	"github.com/reconcile/reconcile/internal/derived"
	"github.com/reconcile/reconcile/internal/storage"
)

// TableConfig is one entry of `tables:` (or today's `table:` section), resolved.
type TableConfig struct {
	Schema, Name string
	Columns      TableColumns
	// TimeZone is Table.TimeZone for this table.
	TimeZone  string
	Retention time.Duration // resolved: never 0
	// Derived and Prefixes are Table.Derived and Table.Prefixes for this
	// table.
	Derived  []string
	Prefixes []string
}

// TableColumns names the columns reconcile reads in one table. The
// soft-delete shape is IsActive = false, IsDeleted = true, or, with both
// empty, DeletedAt set.
type TableColumns struct {
	ID               string
	Key              []string // at least one
	OriginalFilename string
	IsActive         string // "" : no such flag
	IsDeleted        string // "" : no such flag
	DeletedAt        string
}

// tablesKey is the list of tables, read apart from viper: viper merges a
// list of maps whole, and cannot tell a key left out of an entry (which
// takes the default) from one given empty (`is_active: ""`: no such flag).
const tablesKey = "tables"

// entryKeys are the keys an entry of tables: takes: those of the table:
// section, plus its own retention and an is_deleted flag.
var entryKeys = []string{"schema", "name", "columns", "time_zone", "retention", "derived", "prefixes"}

// columnKeys are the keys of an entry's columns.
var columnKeys = []string{"id", "key", "original_filename", "is_active", "is_deleted", "deleted_at"}

// resolve is the table: section as the one entry of Tables.
func (t Table) resolve(retention time.Duration) TableConfig {
	return TableConfig{
		Schema: t.Schema,
		Name:   t.Name,
		Columns: TableColumns{
			ID:               t.Columns.ID,
			Key:              []string{t.Columns.Key},
			OriginalFilename: t.Columns.OriginalFilename,
			IsActive:         t.Columns.IsActive,
			DeletedAt:        t.Columns.DeletedAt,
		},
		TimeZone:  t.TimeZone,
		Retention: retention,
		Derived:   t.Derived,
		Prefixes:  t.Prefixes,
	}
}

// findTables finds tables: in the environment (RECONCILE_TABLES, YAML or
// JSON), which beats the file, or in the file; ok is false when neither
// gives it.
func findTables(file map[string]any) (raw any, ok bool, err error) {
	if text, inEnv := os.LookupEnv(envName(tablesKey)); inEnv {
		if err := yaml.Unmarshal([]byte(text), &raw); err != nil {
			return nil, false, fmt.Errorf("%s: parse YAML: %w", envName(tablesKey), err)
		}
		return raw, true, nil
	}
	raw, ok = file[tablesKey]
	return raw, ok, nil
}

// tableSectionGiven lists where the table: section is given, in the file
// or the environment, for the error that refuses it beside tables:.
func tableSectionGiven(v *viper.Viper) []string {
	var given []string
	if v.InConfig("table") {
		given = append(given, "table: (in the file)")
	}
	for key := range defaults {
		if !strings.HasPrefix(key, "table.") {
			continue
		}
		if _, ok := os.LookupEnv(envName(key)); ok {
			given = append(given, fmt.Sprintf("%s (%s)", key, envName(key)))
		}
	}
	sort.Strings(given)
	return given
}

// readTables decodes the tables: list. A key left out of an entry takes
// the table: section's default (retention the top-level one, is_deleted
// none); a name is required.
func readTables(raw any, retention time.Duration) ([]TableConfig, error) {
	list, ok := raw.([]any)
	if !ok {
		return nil, invalid([]string{fmt.Sprintf("tables: must be a list of tables, such as [{name: forum_attachment}], got %s", describe(raw))})
	}
	if len(list) == 0 {
		return nil, invalid([]string{"tables: is empty; list at least one table, or leave tables out for the table section"})
	}
	var lines []string
	tables := make([]TableConfig, len(list))
	for i, entry := range list {
		tables[i] = readTable(fmt.Sprintf("tables[%d]", i), entry, retention, &lines)
	}
	return tables, invalid(lines)
}

// readTable decodes one entry, adding what is wrong with it to lines.
func readTable(at string, raw any, retention time.Duration, lines *[]string) TableConfig {
	bad := func(key, format string, args ...any) {
		*lines = append(*lines, fmt.Sprintf("%s%s: %s", at, key, fmt.Sprintf(format, args...)))
	}
	entry, ok := raw.(map[string]any)
	if !ok {
		bad("", "must be a map of the table's keys, such as {name: forum_attachment}, got %s", describe(raw))
		return TableConfig{}
	}
	unknown(entry, entryKeys, func(k string) {
		bad("."+k, "is no key of a table; an entry takes %s", strings.Join(entryKeys, ", "))
	})
	columns := map[string]any{}
	if c, ok := entry["columns"]; ok {
		if columns, ok = c.(map[string]any); !ok {
			bad(".columns", "must be a map of column names, such as {key: image}, got %s", describe(c))
			columns = map[string]any{}
		}
	}
	unknown(columns, columnKeys, func(k string) {
		bad(".columns."+k, "is no column key; columns takes %s", strings.Join(columnKeys, ", "))
	})

	// name reads the name at path (m holds its last element), or the
	// table: section's default when it is left out.
	name := func(m map[string]any, path string) string {
		raw, ok := m[path[strings.LastIndexByte(path, '.')+1:]]
		if !ok {
			d, _ := defaults["table."+path].(string) // none for is_deleted
			return d
		}
		switch v := raw.(type) {
		case nil:
			return ""
		case string:
			return v
		}
		bad("."+path, "must be a name (a string), got %s", describe(raw))
		return ""
	}
	// list reads a list of strings; one string is a comma-separated list,
	// as in the environment.
	list := func(key string) []string {
		switch v := entry[key].(type) {
		case nil:
			return nil
		case string:
			if v == "" {
				return nil
			}
			return strings.Split(v, ",")
		case []any:
			out := make([]string, len(v))
			for i, item := range v {
				s, ok := item.(string)
				if !ok {
					bad(fmt.Sprintf(".%s[%d]", key, i), "must be a string, got %s", describe(item))
				}
				out[i] = s
			}
			return out
		default:
			bad("."+key, "must be a list of strings, got %s", describe(v))
			return nil
		}
	}

	t := TableConfig{
		Schema: name(entry, "schema"),
		Name:   name(entry, "name"),
		Columns: TableColumns{
			ID:               name(columns, "columns.id"),
			OriginalFilename: name(columns, "columns.original_filename"),
			IsActive:         name(columns, "columns.is_active"),
			IsDeleted:        name(columns, "columns.is_deleted"),
			DeletedAt:        name(columns, "columns.deleted_at"),
		},
		TimeZone:  name(entry, "time_zone"),
		Retention: retention,
		Derived:   list("derived"),
		Prefixes:  list("prefixes"),
	}
	if _, ok := entry["name"]; !ok {
		bad(".name", "is required: the table's name, such as forum_attachment")
	}
	switch key := columns["key"].(type) {
	case []any:
		t.Columns.Key = make([]string, len(key))
		for i, item := range key {
			switch s := item.(type) {
			case nil:
			case string:
				t.Columns.Key[i] = s
			default:
				bad(fmt.Sprintf(".columns.key[%d]", i), "must be a column name, got %s", describe(item))
			}
		}
	default:
		t.Columns.Key = []string{name(columns, "columns.key")}
	}
	if r, ok := entry["retention"]; ok {
		if r == nil {
			r = ""
		}
		d, err := durationValue(r)
		if err != nil {
			bad(".retention", "%v; %s", err, durationForms)
		}
		t.Retention = d
	}
	return t
}

// unknown calls report with every key of m that is not in known, in order.
func unknown(m map[string]any, known []string, report func(key string)) {
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if !slices.Contains(known, k) {
			report(k)
		}
	}
}

// describe writes a value a source gave, for a message.
func describe(v any) string {
	switch v := v.(type) {
	case nil:
		return "nothing"
	case string:
		return fmt.Sprintf("%q", v)
	case []any:
		return "a list"
	case map[string]any:
		return "a map"
	default:
		return fmt.Sprint(v)
	}
}

// checkedTables are the tables Validate and Warnings look at, and whether
// they are the table: section's, whose keys name them (also in a Config
// built without Load, whose Tables is empty).
func (c *Config) checkedTables() (tables []TableConfig, section bool) {
	if len(c.Tables) == 0 {
		return []TableConfig{c.Table.resolve(c.Retention)}, true
	}
	return c.Tables, c.fromTable
}

// tableAt is the key of the i-th table in messages.
func tableAt(section bool, i int) string {
	if section {
		return "table"
	}
	return fmt.Sprintf("tables[%d]", i)
}

// checkTable reports what is wrong with one table, each problem under its
// key below at.
func checkTable(bad func(key, format string, args ...any), at string, t TableConfig, section bool) {
	type identifier struct {
		key, name string
		optional  bool
	}
	ids := []identifier{
		{at + ".schema", t.Schema, false},
		{at + ".name", t.Name, false},
		{at + ".columns.id", t.Columns.ID, false},
	}
	keyAt := at + ".columns.key"
	keys := make([]string, len(t.Columns.Key)) // each key column's key
	for i, name := range t.Columns.Key {
		keys[i] = keyAt
		if len(t.Columns.Key) > 1 {
			keys[i] = fmt.Sprintf("%s[%d]", keyAt, i)
		}
		ids = append(ids, identifier{keys[i], name, false})
	}
	ids = append(ids,
		identifier{at + ".columns.original_filename", t.Columns.OriginalFilename, false},
		// The table section's is_active is never empty: an empty variable
		// must not turn the soft-delete shape to deleted_at alone unseen.
		identifier{at + ".columns.is_active", t.Columns.IsActive, !section},
		identifier{at + ".columns.is_deleted", t.Columns.IsDeleted, true},
		identifier{at + ".columns.deleted_at", t.Columns.DeletedAt, false},
	)
	for _, id := range ids {
		switch {
		case id.name == "" && id.optional:
		case id.name == "":
			bad(id.key, "must name a table or column, got an empty name")
		case strings.ContainsRune(id.name, 0):
			bad(id.key, "must not contain a NUL byte")
		case len(id.name) > 63:
			bad(id.key, "%q is longer than PostgreSQL's 63-byte identifier limit", id.name)
		}
	}

	if len(t.Columns.Key) == 0 {
		bad(keyAt, "must name at least one column: the column, or list of columns, holding each row's storage key")
	}
	others := []struct{ key, name string }{
		{"columns.id", t.Columns.ID},
		{"columns.deleted_at", t.Columns.DeletedAt},
		{"columns.is_active", t.Columns.IsActive},
		{"columns.is_deleted", t.Columns.IsDeleted},
	}
	for i, name := range t.Columns.Key {
		if name == "" {
			continue
		}
		if j := slices.Index(t.Columns.Key, name); j < i {
			bad(keys[i], "%q is listed twice in %s; list each key column once", name, keyAt)
		}
		for _, o := range others {
			if name == o.name {
				bad(keys[i], "%q is also %s.%s; a key column holds a storage key and nothing else", name, at, o.key)
			}
		}
	}
	if t.Columns.IsActive != "" && t.Columns.IsDeleted != "" {
		bad(at+".columns.is_deleted", "%q is set beside %s.columns.is_active (%q); pick the table's one soft-delete shape: is_active (false = deleted) with is_deleted \"\", is_deleted (true = deleted) with is_active \"\", or both \"\" (deleted_at set = deleted)",
			t.Columns.IsDeleted, at, t.Columns.IsActive)
	}
	// The table section's retention is the top-level one, checked as such.
	if !section && (t.Retention <= 0 || t.Retention > MaxDuration) {
		bad(at+".retention", "must be a positive duration such as 30d or 720h, at most %dd, or left out for the top-level retention, got %s", MaxDays, t.Retention)
	}
	if tz := t.TimeZone; tz != "" && !timeZoneName.MatchString(tz) {
		bad(at+".time_zone", "must be a time zone name such as Europe/Paris (Django's TIME_ZONE), not an offset, got %q", tz)
	}
	for i, text := range t.Derived {
		if _, err := derived.Parse(text); err != nil {
			bad(fmt.Sprintf("%s.derived[%d]", at, i), "%v", err)
		}
	}
	for i, prefix := range t.Prefixes {
		if prefix == "/" {
			continue // the whole root, said on purpose
		}
		if err := storage.ValidateKey(strings.TrimSuffix(prefix, "/")); err != nil {
			bad(fmt.Sprintf("%s.prefixes[%d]", at, i), "must be a folder relative to the storage root such as forum/attachments/, or \"/\" for the whole root: %v", err)
		}
	}
}

// TableList returns the tables to serve, and the key that names each one
// in messages: "table", or "tables[2]".
func (c *Config) TableList() (tables []TableConfig, sections []string) {
	tables, section := c.checkedTables()
	for i := range tables {
		sections = append(sections, tableAt(section, i))
	}
	return tables, sections
}
