package config

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// issueTables is the example of issue 10: the three soft-delete shapes,
// a list of key columns, retentions of their own.
const issueTables = `
tables:
  - name: forum_attachment                 # today's defaults
  - name: blog_image
    columns: {key: [file, cover], is_active: "", is_deleted: is_deleted}
    retention: 168h
  - name: avatar
    columns: {key: photo, is_active: ""}   # deleted_at alone
    retention: 72h
`

// loadDoc loads doc as the file, with a database and a storage root.
func loadDoc(t *testing.T, doc string, args ...string) (*Config, error) {
	t.Helper()
	t.Setenv("RECONCILE_DATABASE_URL", "postgres://forum@db/forum")
	t.Setenv("RECONCILE_STORAGE_LOCAL_ROOT", t.TempDir())
	return Load(writeConfig(t, doc), flags(args...))
}

// sameTables compares tables, a nil list equal to an empty one.
func sameTables(t *testing.T, got, want []TableConfig) {
	t.Helper()
	if fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", want) {
		t.Fatalf("tables =\n  %+v\nwant\n  %+v", got, want)
	}
}

func TestTablesOfTheIssue(t *testing.T) {
	cfg, err := loadDoc(t, issueTables)
	if err != nil {
		t.Fatal(err)
	}
	month := 720 * time.Hour
	sameTables(t, cfg.Tables, []TableConfig{
		{Schema: "public", Name: "forum_attachment", Retention: month, Columns: TableColumns{
			ID: "id", Key: []string{"image"}, OriginalFilename: "original_filename", IsActive: "is_active", DeletedAt: "deleted_at"}},
		{Schema: "public", Name: "blog_image", Retention: 168 * time.Hour, Columns: TableColumns{
			ID: "id", Key: []string{"file", "cover"}, OriginalFilename: "original_filename", IsDeleted: "is_deleted", DeletedAt: "deleted_at"}},
		{Schema: "public", Name: "avatar", Retention: 72 * time.Hour, Columns: TableColumns{
			ID: "id", Key: []string{"photo"}, OriginalFilename: "original_filename", DeletedAt: "deleted_at"}},
	})
	if w := cfg.Warnings(); len(w) != 0 {
		t.Errorf("warnings: %q", w)
	}

	// --days sets the retention of the entries that leave theirs out.
	cfg, err = loadDoc(t, issueTables, "--days", "10")
	if err != nil {
		t.Fatal(err)
	}
	if got := []time.Duration{cfg.Tables[0].Retention, cfg.Tables[1].Retention, cfg.Tables[2].Retention}; !slices.Equal(got, []time.Duration{240 * time.Hour, 168 * time.Hour, 72 * time.Hour}) {
		t.Errorf("retentions with --days 10: %v", got)
	}
}

// Every key of an entry is read, ${VAR} included; a string is a
// comma-separated list, as in the environment.
func TestTableEntryTakesEveryKey(t *testing.T) {
	t.Setenv("BLOG_SCHEMA", "blog")
	cfg, err := loadDoc(t, `
retention: 2d
tables:
  - schema: ${BLOG_SCHEMA}
    name: Image
    columns:
      id: uuid
      key: file
      original_filename: filename
      is_active: ~
      is_deleted: removed
      deleted_at: removed_at
    time_zone: Europe/Paris
    retention: 1d12h
    derived: imagekit,thumbs/{key}
    prefixes: [blog/]
`)
	if err != nil {
		t.Fatal(err)
	}
	sameTables(t, cfg.Tables, []TableConfig{{
		Schema: "blog", Name: "Image", TimeZone: "Europe/Paris", Retention: 36 * time.Hour,
		Columns:  TableColumns{ID: "uuid", Key: []string{"file"}, OriginalFilename: "filename", IsDeleted: "removed", DeletedAt: "removed_at"},
		Derived:  []string{"imagekit", "thumbs/{key}"},
		Prefixes: []string{"blog/"},
	}})
	if cfg.Table.Name != "forum_attachment" {
		t.Errorf("table section = %+v; want its defaults beside tables", cfg.Table)
	}
}

// The table section, from the file or the environment, is the one entry
// of Tables, with the top-level retention.
func TestTableSectionIsOneEntry(t *testing.T) {
	cfg, err := loadDoc(t, `
retention: 48h
table:
  name: attachments
  columns:
    key: file
  derived: [imagekit]
`)
	if err != nil {
		t.Fatal(err)
	}
	sameTables(t, cfg.Tables, []TableConfig{{
		Schema: "public", Name: "attachments", Retention: 48 * time.Hour, Derived: []string{"imagekit"},
		Columns: TableColumns{ID: "id", Key: []string{"file"}, OriginalFilename: "original_filename", IsActive: "is_active", DeletedAt: "deleted_at"},
	}})

	t.Setenv("RECONCILE_TABLE_NAME", "uploads")
	t.Setenv("RECONCILE_TABLE_COLUMNS_KEY", "upload")
	t.Setenv("RECONCILE_TABLE_PREFIXES", "a/,b/")
	cfg, err = loadDoc(t, "", "--days", "3")
	if err != nil {
		t.Fatal(err)
	}
	sameTables(t, cfg.Tables, []TableConfig{{
		Schema: "public", Name: "uploads", Retention: 72 * time.Hour, Prefixes: []string{"a/", "b/"},
		Columns: TableColumns{ID: "id", Key: []string{"upload"}, OriginalFilename: "original_filename", IsActive: "is_active", DeletedAt: "deleted_at"},
	}})
}

// RECONCILE_TABLES holds the list as YAML or JSON, and beats the file's.
func TestTablesFromTheEnvironment(t *testing.T) {
	t.Setenv("RECONCILE_TABLES", `[{"name": "avatar", "columns": {"key": ["photo", "banner"], "is_active": ""}, "retention": "3d"}]`)
	cfg, err := loadDoc(t, issueTables)
	if err != nil {
		t.Fatal(err)
	}
	sameTables(t, cfg.Tables, []TableConfig{{
		Schema: "public", Name: "avatar", Retention: 72 * time.Hour,
		Columns: TableColumns{ID: "id", Key: []string{"photo", "banner"}, OriginalFilename: "original_filename", DeletedAt: "deleted_at"},
	}})

	t.Setenv("RECONCILE_TABLES", "[{name: avatar")
	if _, err := loadDoc(t, ""); err == nil || !strings.Contains(err.Error(), "RECONCILE_TABLES: parse YAML") {
		t.Errorf("unreadable RECONCILE_TABLES: %v", err)
	}
	t.Setenv("RECONCILE_TABLES", "")
	if _, err := loadDoc(t, ""); err == nil || !strings.Contains(err.Error(), "tables: must be a list") {
		t.Errorf("empty RECONCILE_TABLES: %v", err)
	}
}

// tables and the table section, in any source, are refused together,
// naming both.
func TestTablesBesideTableSection(t *testing.T) {
	for _, tc := range []struct {
		name, doc string
		env       map[string]string
		want      string
	}{
		{"both in the file", issueTables + "table:\n  name: forum_attachment\n", nil, "table: (in the file)"},
		{"a table variable", issueTables, map[string]string{"RECONCILE_TABLE_COLUMNS_KEY": "image"}, "table.columns.key (RECONCILE_TABLE_COLUMNS_KEY)"},
		{"an empty table variable", issueTables, map[string]string{"RECONCILE_TABLE_TIME_ZONE": ""}, "table.time_zone (RECONCILE_TABLE_TIME_ZONE)"},
		{"tables variable", "table:\n  name: forum_attachment\n", map[string]string{"RECONCILE_TABLES": "[{name: avatar}]"}, "table: (in the file)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			_, err := loadDoc(t, tc.doc)
			if err == nil || !strings.Contains(err.Error(), "tables: is given with") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v; want it to name tables and %s", err, tc.want)
			}
		})
	}
}

func TestBadTablesNameTheKey(t *testing.T) {
	long := strings.Repeat("x", 64)
	for _, tc := range []struct {
		name, doc string
		env       map[string]string
		want      []string
	}{
		{"empty list", "tables: []", nil, []string{"tables: is empty"}},
		{"not a list", "tables: forum_attachment", nil, []string{`tables: must be a list of tables`, `"forum_attachment"`}},
		{"entry not a map", "tables: [forum_attachment]", nil, []string{`tables[0]: must be a map`}},
		{"typo in an entry", "tables:\n  - name: a\n  - name: b\n    colums: {key: file}\n", nil, []string{"tables[1].colums: is no key of a table"}},
		{"typo in columns", "tables:\n  - name: a\n    columns: {is_activ: x}\n", nil, []string{"tables[0].columns.is_activ: is no column key"}},
		{"columns not a map", "tables:\n  - name: a\n    columns: image\n", nil, []string{"tables[0].columns: must be a map"}},
		{"no name", "tables:\n  - columns: {key: file}\n", nil, []string{"tables[0].name: is required"}},
		{"empty name", "tables:\n  - name: \"\"\n", nil, []string{"tables[0].name: must name a table or column, got an empty name"}},
		{"name not a string", "tables:\n  - name: 12\n", nil, []string{"tables[0].name: must be a name", "got 12"}},
		{"long column", "tables:\n  - name: a\n    columns: {id: " + long + "}\n", nil, []string{"tables[0].columns.id:", "63-byte"}},
		{"empty deleted_at", "tables:\n  - name: a\n    columns: {deleted_at: \"\"}\n", nil, []string{"tables[0].columns.deleted_at: must name a table or column"}},
		{"no key column", "tables:\n  - name: a\n    columns: {key: []}\n", nil, []string{"tables[0].columns.key: must name at least one column"}},
		{"empty key column", "tables:\n  - name: a\n    columns: {key: [file, \"\"]}\n", nil, []string{"tables[0].columns.key[1]: must name a table or column"}},
		{"key column not a string", "tables:\n  - name: a\n    columns: {key: [file, 3]}\n", nil, []string{"tables[0].columns.key[1]: must be a column name"}},
		{"key column twice", "tables:\n  - name: a\n    columns: {key: [file, file]}\n", nil, []string{`tables[0].columns.key[1]: "file" is listed twice`}},
		{"key column is the id", "tables:\n  - name: a\n  - name: b\n    columns: {key: id}\n", nil, []string{`tables[1].columns.key: "id" is also tables[1].columns.id`}},
		{"key column is deleted_at", "tables:\n  - name: a\n    columns: {key: [file, deleted_at]}\n", nil, []string{`tables[0].columns.key[1]: "deleted_at" is also tables[0].columns.deleted_at`}},
		{"key column is the flag", "tables:\n  - name: a\n    columns: {key: removed, is_active: \"\", is_deleted: removed}\n", nil, []string{`tables[0].columns.key: "removed" is also tables[0].columns.is_deleted`}},
		{"both flags", "tables:\n  - name: a\n    columns: {is_deleted: is_deleted}\n", nil, []string{`tables[0].columns.is_deleted: "is_deleted" is set beside tables[0].columns.is_active ("is_active")`, "pick the table's one soft-delete shape"}},
		{"table twice", "tables:\n  - name: a\n  - name: b\n  - {schema: public, name: a}\n", nil, []string{"tables[2].name: public.a is listed twice, as tables[0] too"}},
		{"zero retention", "tables:\n  - name: a\n    retention: 0\n", nil, []string{"tables[0].retention: must be a positive duration"}},
		{"retention without unit", "tables:\n  - name: a\n    retention: 30\n", nil, []string{"tables[0].retention:", "missing a unit", "30d"}},
		{"negative retention", "tables:\n  - name: a\n    retention: -1h\n", nil, []string{`tables[0].retention: "-1h" is negative`}},
		{"empty retention", "tables:\n  - name: a\n    retention:\n", nil, []string{"tables[0].retention: is empty"}},
		{"retention over a century", "tables:\n  - name: a\n    retention: 36501d\n", nil, []string{"tables[0].retention:", "longer than 36500 days"}},
		{"offset for a time zone", "tables:\n  - name: a\n    time_zone: \"+02:00\"\n", nil, []string{"tables[0].time_zone: must be a time zone name"}},
		{"derived owning its source", "tables:\n  - name: a\n  - name: b\n    derived: [imagekit, \"{dir}/\"]\n", nil, []string{"tables[1].derived[1]", "source file itself"}},
		{"derived not a list", "tables:\n  - name: a\n    derived: {a: b}\n", nil, []string{"tables[0].derived: must be a list"}},
		{"prefix that climbs", "tables:\n  - name: a\n    prefixes: [forum/, ../etc/]\n", nil, []string{"tables[0].prefixes[1]", `".." element`}},
		{"trash holding derived files", "tables:\n  - name: a\n  - name: b\n    derived: [imagekit]\n", map[string]string{"RECONCILE_STORAGE_TRASH_PREFIX": "CACHE/"}, []string{"storage.trash.prefix", "tables[1].derived[0]"}},
		{"trash holding a prefix", "tables:\n  - name: a\n  - name: b\n    prefixes: [media/blog/]\n", map[string]string{"RECONCILE_STORAGE_TRASH_PREFIX": "media/"}, []string{"storage.trash.prefix", "tables[1].prefixes[0]"}},
		// The table section keeps its rules: is_active is never empty there.
		{"section without is_active", "", map[string]string{"RECONCILE_TABLE_COLUMNS_IS_ACTIVE": ""}, []string{"table.columns.is_active: must name a table or column"}},
		{"section key column is the id", "", map[string]string{"RECONCILE_TABLE_COLUMNS_KEY": "id"}, []string{`table.columns.key: "id" is also table.columns.id`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			_, err := loadDoc(t, tc.doc)
			if err == nil {
				t.Fatal("Load accepted the configuration")
			}
			for _, want := range tc.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q lacks %q", err, want)
				}
			}
		})
	}
}

// Validate checks Tables also in a Config built without Load.
func TestValidateChecksTables(t *testing.T) {
	cfg, err := loadDoc(t, issueTables)
	if err != nil {
		t.Fatal(err)
	}
	built := *cfg
	built.Tables = append(slices.Clone(cfg.Tables), cfg.Tables[1])
	if err := built.Validate(); err == nil || !strings.Contains(err.Error(), "tables[3].name: public.blog_image is listed twice, as tables[1] too") {
		t.Errorf("Validate: %v", err)
	}
}

// A table's retention under a day is warned of, naming the table; the
// top-level retention only when a table takes it.
func TestShortTableRetentionWarns(t *testing.T) {
	cfg, err := loadDoc(t, "retention: 1h\ntables:\n  - name: a\n    retention: 30d\n  - {schema: blog, name: image, retention: 12h}\n")
	if err != nil {
		t.Fatal(err)
	}
	w := cfg.Warnings()
	if len(w) != 1 || !strings.Contains(w[0], "tables[1].retention (blog.image) is 12h0m0s, under a day") {
		t.Errorf("warnings = %q", w)
	}
	cfg, err = loadDoc(t, "retention: 1h\ntables:\n  - name: a\n")
	if err != nil {
		t.Fatal(err)
	}
	if w := cfg.Warnings(); len(w) != 1 || !strings.Contains(w[0], "tables[0].retention (public.a) is 1h0m0s") {
		t.Errorf("warnings = %q", w)
	}
}

// The example's commented tables block, put in place of the table section,
// loads, and its entries use every key an entry takes.
func TestExampleDocumentsTables(t *testing.T) {
	example := filepath.Join("..", "..", "configs", "reconcile.example.yaml")
	raw, err := os.ReadFile(example)
	if err != nil {
		t.Fatal(err)
	}
	var block []string
	for _, line := range strings.Split(string(raw), "\n") {
		if line == "#tables:" || len(block) > 0 && strings.HasPrefix(line, "#  ") {
			block = append(block, line[1:])
		} else if len(block) > 0 {
			break
		}
	}
	if len(block) == 0 {
		t.Fatal("the example has no commented #tables: block")
	}
	var doc, tables map[string]any
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal([]byte(strings.Join(block, "\n")), &tables); err != nil {
		t.Fatalf("the example's tables block: %v", err)
	}
	delete(doc, "table")
	doc["tables"] = tables["tables"]
	out, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("RECONCILE_DB_PASSWORD", "pw")
	cfg, err := loadDoc(t, string(out))
	if err != nil {
		t.Fatalf("the example with its tables block: %v", err)
	}
	if len(cfg.Tables) < 3 {
		t.Errorf("the example lists %d tables; want the three shapes", len(cfg.Tables))
	}

	documented := map[string]bool{}
	for _, entry := range tables["tables"].([]any) {
		for k, v := range entry.(map[string]any) {
			documented[k] = true
			if columns, ok := v.(map[string]any); ok {
				for c := range columns {
					documented[k+"."+c] = true
				}
			}
		}
	}
	for _, key := range entryKeys {
		if !documented[key] {
			t.Errorf("the example's tables do not document %s", key)
		}
	}
	for _, key := range columnKeys {
		if !documented["columns."+key] {
			t.Errorf("the example's tables do not document columns.%s", key)
		}
	}
}

// Load never panics on a tables list, and what it accepts has for every
// table a name, a key column and a retention in range.
func FuzzTables(f *testing.F) {
	f.Add(issueTables)
	f.Add("tables:\n  - {name: a, columns: {key: [a, b, c]}, retention: 1d}\n")
	f.Add("tables:\n  - name: a\n    columns: {is_active: ~, is_deleted: ~}\n")
	f.Add("tables:\n  - {1: 2}\n  - [a]\n")
	f.Add("tables: {name: a}\n")
	root := f.TempDir()
	f.Fuzz(func(t *testing.T, doc string) {
		t.Setenv("RECONCILE_DATABASE_URL", "postgres://db/forum")
		t.Setenv("RECONCILE_STORAGE_LOCAL_ROOT", root)
		cfg, err := Load(writeConfig(t, doc), flags())
		if err != nil {
			return
		}
		if len(cfg.Tables) == 0 {
			t.Fatal("Load accepted a configuration without tables")
		}
		for i, tc := range cfg.Tables {
			if tc.Name == "" || len(tc.Columns.Key) == 0 || slices.Contains(tc.Columns.Key, "") || tc.Columns.DeletedAt == "" ||
				tc.Retention <= 0 || tc.Retention > MaxDuration || tc.Columns.IsActive != "" && tc.Columns.IsDeleted != "" {
				t.Fatalf("Load accepted tables[%d] = %+v", i, tc)
			}
		}
	})
}
