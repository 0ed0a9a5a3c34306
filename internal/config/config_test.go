package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
)

func writeConfig(t *testing.T, yaml string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "reconcile.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func flags(args ...string) *pflag.FlagSet {
	fs := pflag.NewFlagSet("reconcile", pflag.ContinueOnError)
	fs.Int("days", 30, "")
	fs.Int("batch-size", 100, "")
	fs.Int("max-deletes", 0, "")
	if err := fs.Parse(args); err != nil {
		panic(err)
	}
	return fs
}

func TestDefaultsAreDjangos(t *testing.T) {
	t.Setenv("RECONCILE_DATABASE_URL", "postgres://forum@db/forum")
	t.Setenv("RECONCILE_STORAGE_LOCAL_ROOT", t.TempDir())
	cfg, err := Load("", flags())
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Retention != 30*24*time.Hour || cfg.BatchSize != 100 || cfg.Table.Name != "forum_attachment" ||
		cfg.Table.Columns != (Columns{"id", "image", "original_filename", "is_active", "deleted_at"}) || cfg.Storage.Backend != "local" {
		t.Fatalf("defaults = %+v", cfg)
	}
}

// Flags beat the environment, which beats the file; ${VAR} is expanded in
// the file and a bare $ is left alone.
func TestPrecedenceFileEnvFlags(t *testing.T) {
	root := t.TempDir()
	t.Setenv("DB_PASSWORD", "pa$$word")
	path := writeConfig(t, `
database:
  url: postgres://forum:${DB_PASSWORD}@db/forum
retention: 48h
batch_size: 50
storage:
  backend: local
  local:
    root: `+root+`
table:
  name: attachments
  columns:
    key: file
`)
	t.Setenv("RECONCILE_BATCH_SIZE", "70")
	t.Setenv("RECONCILE_TABLE_COLUMNS_KEY", "upload")

	cfg, err := Load(path, flags())
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Database.URL != "postgres://forum:pa$$word@db/forum" || cfg.Retention != 48*time.Hour || cfg.BatchSize != 70 ||
		cfg.Table.Name != "attachments" || cfg.Table.Columns.Key != "upload" {
		t.Fatalf("file+env = %+v", cfg)
	}

	cfg, err = Load(path, flags("--batch-size", "25", "--days", "45"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.BatchSize != 25 || cfg.Retention != 45*24*time.Hour {
		t.Fatalf("flags: batch_size=%d retention=%s", cfg.BatchSize, cfg.Retention)
	}

	t.Setenv("RECONCILE_RETENTION", "5s")
	cfg, err = Load(path, flags())
	if err != nil || cfg.Retention != 5*time.Second {
		t.Fatalf("RECONCILE_RETENTION=5s: %v, %v", cfg, err)
	}
}

func TestBadConfigurationNamesTheKey(t *testing.T) {
	root := t.TempDir()
	base := map[string]string{
		"RECONCILE_DATABASE_URL":       "postgres://forum:hunter2@db/forum",
		"RECONCILE_STORAGE_LOCAL_ROOT": root,
	}
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want []string
	}{
		{"unknown backend", map[string]string{"RECONCILE_STORAGE_BACKEND": "gcs"}, nil, []string{`storage.backend: must be local or s3, got "gcs"`}},
		{"missing bucket", map[string]string{"RECONCILE_STORAGE_BACKEND": "s3", "RECONCILE_STORAGE_S3_ENDPOINT": "s3.local:9000"}, nil, []string{"storage.s3.bucket: is required"}},
		{"endpoint with scheme", map[string]string{"RECONCILE_STORAGE_BACKEND": "s3", "RECONCILE_STORAGE_S3_ENDPOINT": "https://s3", "RECONCILE_STORAGE_S3_BUCKET": "b"}, nil, []string{"storage.s3.endpoint: must be host[:port]"}},
		{"zero retention", map[string]string{"RECONCILE_RETENTION": "0s"}, nil, []string{"retention: must be a positive duration"}},
		{"negative retention", map[string]string{"RECONCILE_RETENTION": "-5m"}, nil, []string{`retention: "-5m" is negative`}},
		{"retention without unit", map[string]string{"RECONCILE_RETENTION": "720"}, nil, []string{"retention", "missing a unit", "30d"}},
		{"zero days", nil, []string{"--days", "0"}, []string{"--days: must be between 1 and 36500, got 0"}},
		{"days that overflow", nil, []string{"--days", "213504"}, []string{"--days: must be between 1 and 36500, got 213504"}},
		{"retention over a century", map[string]string{"RECONCILE_RETENTION": "36501d"}, nil, []string{"retention", "longer than 36500 days"}},
		{"retention that overflows", map[string]string{"RECONCILE_RETENTION": "9999999h"}, nil, []string{"retention", "or is longer than 36500 days"}},
		{"lock timeout without unit", map[string]string{"RECONCILE_DATABASE_LOCK_TIMEOUT": "5"}, nil, []string{"database.lock_timeout", "missing a unit"}},
		{"explicit zero budget", map[string]string{"RECONCILE_SAFETY_MAX_DELETES": "0"}, nil, []string{"safety.max_deletes: 0 would mean no bound"}},
		{"zero budget flag", nil, []string{"--max-deletes", "0"}, []string{"safety.max_deletes: 0 would mean no bound"}},
		{"negative hourly budget", map[string]string{"RECONCILE_SAFETY_MAX_DELETES_PER_HOUR": "-3"}, nil, []string{"safety.max_deletes_per_hour: must be a number of rows"}},
		{"zero budget spelt 00", map[string]string{"RECONCILE_SAFETY_MAX_DELETES": "00"}, nil, []string{"safety.max_deletes: 0 would mean no bound"}},
		{"zero budget spelt -0", map[string]string{"RECONCILE_SAFETY_MAX_DELETES_PER_HOUR": "-0"}, nil, []string{"safety.max_deletes_per_hour: 0 would mean no bound"}},
		{"budget not a whole number", map[string]string{"RECONCILE_SAFETY_MAX_DELETES": "0.4"}, nil, []string{`safety.max_deletes: "0.4" is not a whole number`}},
		{"empty use_ssl", map[string]string{"RECONCILE_STORAGE_S3_USE_SSL": ""}, nil, []string{`storage.s3.use_ssl: must be true or false, got ""`}},
		{"lock timeout under a millisecond", map[string]string{"RECONCILE_DATABASE_LOCK_TIMEOUT": "500us"}, nil, []string{"database.lock_timeout: must be 0 (wait forever) or between 1ms and"}},
		{"lock timeout over PostgreSQL's bound", map[string]string{"RECONCILE_DATABASE_LOCK_TIMEOUT": "30d"}, nil, []string{"database.lock_timeout: must be 0 (wait forever) or between 1ms and"}},
		{"batch too small", nil, []string{"--batch-size", "0"}, []string{"batch_size: must be between 1 and 10000, got 0"}},
		{"batch too large", map[string]string{"RECONCILE_BATCH_SIZE": "20000"}, nil, []string{"batch_size: must be between 1 and 10000, got 20000"}},
		{"no database", map[string]string{"RECONCILE_DATABASE_URL": ""}, nil, []string{"database.url: is required"}},
		{"bad database url", map[string]string{"RECONCILE_DATABASE_URL": "postgres://forum:hunter2@db:notaport/forum"}, nil, []string{"database.url: is not a valid"}},
		{"missing root", map[string]string{"RECONCILE_STORAGE_LOCAL_ROOT": filepath.Join(root, "nope")}, nil, []string{"storage.local.root:", "cannot be used"}},
		{"empty column", map[string]string{"RECONCILE_TABLE_COLUMNS_DELETED_AT": ""}, nil, []string{"table.columns.deleted_at: must name a table or column"}},
		{"trash prefix of slashes", map[string]string{"RECONCILE_STORAGE_TRASH_PREFIX": "/"}, nil, []string{`storage.trash.prefix: must name a folder under the root or the S3 prefix, such as .trash/, or be empty for no trash, got "/"`}},
		{"trash prefix that climbs", map[string]string{"RECONCILE_STORAGE_TRASH_PREFIX": "../trash/"}, nil, []string{"storage.trash.prefix: must be a relative folder", `".." element`}},
		{"absolute trash prefix", map[string]string{"RECONCILE_STORAGE_TRASH_PREFIX": "/var/trash"}, nil, []string{"storage.trash.prefix: must be a relative folder", "is absolute"}},
		{"zero trash keep", map[string]string{"RECONCILE_STORAGE_TRASH_PREFIX": ".trash/", "RECONCILE_STORAGE_TRASH_KEEP": "0"}, nil, []string{"storage.trash.keep: must be a positive duration such as 7d while storage.trash.prefix is set, got 0s"}},
		{"trash keep without unit", map[string]string{"RECONCILE_STORAGE_TRASH_KEEP": "7"}, nil, []string{"storage.trash.keep", "missing a unit"}},
		{"derived pattern owning its source", map[string]string{"RECONCILE_TABLE_DERIVED": "imagekit,{dir}/"}, nil, []string{"table.derived[1]", "source file itself"}},
		{"derived pattern without the key", map[string]string{"RECONCILE_TABLE_DERIVED": "thumbs/{name}"}, nil, []string{"table.derived[0]", "must hold {key}"}},
		{"prefix that climbs", map[string]string{"RECONCILE_TABLE_PREFIXES": "forum/,../etc/"}, nil, []string{"table.prefixes[1]", `".." element`}},
		{"zero grace", map[string]string{"RECONCILE_ORPHANS_GRACE": "0s"}, nil, []string{"orphans.grace: must be a second or more"}},
		{"trash holding derived files", map[string]string{"RECONCILE_TABLE_DERIVED": "imagekit", "RECONCILE_STORAGE_TRASH_PREFIX": "CACHE/"}, nil, []string{"storage.trash.prefix", "table.derived[0]"}},
		{"trash holding the table's prefix", map[string]string{"RECONCILE_TABLE_PREFIXES": "media/forum/", "RECONCILE_STORAGE_TRASH_PREFIX": "media/"}, nil, []string{"storage.trash.prefix", "table.prefixes[0]"}},
		{"two problems", map[string]string{"RECONCILE_CONCURRENCY": "0", "RECONCILE_LOG_FORMAT": "xml"}, nil, []string{"concurrency: must be between", "log.format: must be text or json"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range base {
				t.Setenv(k, v)
			}
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			_, err := Load("", flags(tc.args...))
			if err == nil {
				t.Fatal("Load accepted the configuration")
			}
			for _, want := range tc.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q lacks %q", err, want)
				}
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("error %q shows the password", err)
			}
		})
	}
}

// The trash is off by default, and keeps a week once it has a prefix.
func TestTrashDefaults(t *testing.T) {
	t.Setenv("RECONCILE_DATABASE_URL", "postgres://db/forum")
	t.Setenv("RECONCILE_STORAGE_LOCAL_ROOT", t.TempDir())
	cfg, err := Load("", flags())
	if err != nil || cfg.Storage.Trash != (Trash{Keep: 7 * 24 * time.Hour}) {
		t.Fatalf("trash = %+v, %v; want off, keep 7d", cfg, err)
	}
	t.Setenv("RECONCILE_STORAGE_TRASH_PREFIX", "media-trash/")
	t.Setenv("RECONCILE_STORAGE_TRASH_KEEP", "36h")
	cfg, err = Load("", flags())
	if err != nil || cfg.Storage.Trash != (Trash{Prefix: "media-trash/", Keep: 36 * time.Hour}) {
		t.Fatalf("trash = %+v, %v", cfg, err)
	}
}

// A budget given as an empty variable is no budget; one written in the
// file as false or 0.0 is refused.
func TestBudgetsAreWholeNumbers(t *testing.T) {
	t.Setenv("RECONCILE_DATABASE_URL", "postgres://db/forum")
	t.Setenv("RECONCILE_STORAGE_LOCAL_ROOT", t.TempDir())
	t.Setenv("RECONCILE_SAFETY_MAX_DELETES", "")
	cfg, err := Load("", flags())
	if err != nil || cfg.Safety.MaxDeletes != 0 {
		t.Fatalf("empty variable: %v, %+v", err, cfg)
	}
	os.Unsetenv("RECONCILE_SAFETY_MAX_DELETES")
	for doc, want := range map[string]string{
		"safety:\n  max_deletes: false\n":           "is not a whole number",
		"safety:\n  max_deletes: 0.0\n":             "0 would mean no bound",
		"safety:\n  max_deletes_per_hour: \"00\"\n": "0 would mean no bound",
		"safety:\n  max_deletes: 2.5\n":             "2.5 is not a whole number",
	} {
		if _, err := Load(writeConfig(t, doc), flags()); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v; want %q", doc, err, want)
		}
	}
	cfg, err = Load(writeConfig(t, "safety:\n  max_deletes: 500\n  max_deletes_per_hour: \"1200\"\n"), flags())
	if err != nil || cfg.Safety.MaxDeletes != 500 || cfg.Safety.MaxDeletesPerHour != 1200 {
		t.Fatalf("%v, %+v", err, cfg.Safety)
	}
}

func TestConfigFileErrors(t *testing.T) {
	t.Setenv("RECONCILE_DATABASE_URL", "postgres://db/forum")
	t.Setenv("RECONCILE_STORAGE_LOCAL_ROOT", t.TempDir())
	for yaml, want := range map[string]string{
		"retention: 48h\nbatchsize: 10\n":         "batchsize",
		"database:\n  url: ${NOT_SET_ANYWHERE}\n": "NOT_SET_ANYWHERE is referenced but not set",
		"retention: [1, 2\n":                      "parse YAML",
	} {
		if _, err := Load(writeConfig(t, yaml), flags()); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("config %q: error %v, want it to mention %q", yaml, err, want)
		}
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml"), flags()); err == nil || !strings.Contains(err.Error(), "read config file") {
		t.Errorf("missing file: %v", err)
	}
}

// The parser never panics, never lets an invalid configuration through,
// and never takes a bare number for a duration.
func FuzzLoad(f *testing.F) {
	f.Add("retention: 48h\nbatch_size: 50\n")
	f.Add("storage:\n  backend: s3\n  s3:\n    bucket: b\n    endpoint: e\n")
	f.Add("database:\n  url: ${HOME}\n")
	f.Add("retention: -1s\n")
	f.Add("retention: 30\n")
	f.Add("retention: 30d\nsweep:\n  max_wait: 60\n")
	f.Add("database:\n  lock_timeout: 5\n")
	f.Add("rescan:\n  every: 0\n")
	f.Add("safety:\n  max_deletes: 0\n")
	f.Add(": : :\n\t-")
	root := f.TempDir()
	f.Fuzz(func(t *testing.T, doc string) {
		t.Setenv("RECONCILE_DATABASE_URL", "postgres://db/forum")
		t.Setenv("RECONCILE_STORAGE_LOCAL_ROOT", root)
		cfg, err := Load(writeConfig(t, doc), flags())
		if err != nil {
			return
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("Load returned a configuration that fails Validate: %v", err)
		}
		if cfg.Retention <= 0 || cfg.Retention > MaxDuration || cfg.BatchSize < 1 || cfg.BatchSize > MaxBatchSize {
			t.Fatalf("Load accepted %+v", cfg)
		}
		var parsed map[string]any
		if yaml.Unmarshal([]byte(doc), &parsed) != nil {
			return
		}
		for _, key := range durationKeys() {
			var v any = parsed
			for part := range strings.SplitSeq(key, ".") {
				m, ok := v.(map[string]any)
				if !ok {
					v = nil
					break
				}
				v = m[part]
			}
			switch n := v.(type) {
			case int:
				if n != 0 {
					t.Fatalf("%s: %d accepted as a duration", key, n)
				}
			case float64:
				if n != 0 {
					t.Fatalf("%s: %v accepted as a duration", key, n)
				}
			}
		}
	})
}

// The example configuration documents every key, by its full path, and
// loads as it is.
func TestExampleConfigLoads(t *testing.T) {
	t.Setenv("RECONCILE_DB_PASSWORD", "pw")
	t.Setenv("RECONCILE_STORAGE_LOCAL_ROOT", t.TempDir())
	example := filepath.Join("..", "..", "configs", "reconcile.example.yaml")
	cfg, err := Load(example, flags())
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Database.URL != "postgres://reconcile:pw@127.0.0.1:5432/forum" || cfg.Retention != 720*time.Hour {
		t.Fatalf("example = %+v", cfg)
	}
	raw, err := os.ReadFile(example)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{}
	var walk func(prefix string, m map[string]any)
	walk = func(prefix string, m map[string]any) {
		for k, v := range m {
			if sub, ok := v.(map[string]any); ok {
				walk(prefix+k+".", sub)
				continue
			}
			documented[prefix+k] = true
		}
	}
	walk("", doc)
	for key := range defaults {
		if !documented[key] {
			t.Errorf("the example does not document %s", key)
		}
	}
	for key := range documented {
		if _, ok := defaults[key]; !ok {
			t.Errorf("the example documents %s, which is no key", key)
		}
	}
}
