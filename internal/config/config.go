// Package config loads reconcile's settings from a YAML file, RECONCILE_*
// environment variables and command-line flags (in rising priority), and
// validates them before anything is touched.
package config

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/jackc/pgx/v5"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
	"go.yaml.in/yaml/v3"

	"github.com/reconcile/reconcile/internal/derived"
	"github.com/reconcile/reconcile/internal/storage"
)

// envPrefix starts every environment variable: storage.s3.bucket is read
// from RECONCILE_STORAGE_S3_BUCKET.
const envPrefix = "RECONCILE"

// maxLockTimeout is the largest lock_timeout PostgreSQL takes (2^31-1 ms);
// PostgreSQL counts in milliseconds, so less than one would be 0: forever.
const maxLockTimeout = (1<<31 - 1) * time.Millisecond

// MaxBatchSize bounds batch_size: Postgres takes arrays of any length, but a
// batch holds its row locks until it commits.
const MaxBatchSize = 10000

// Config is everything reconcile needs to run.
type Config struct {
	Database Database `mapstructure:"database"`
	// Table is the table: section, kept for a configuration that names one
	// table; with tables: given it stays at its defaults. Callers read
	// Tables.
	Table Table `mapstructure:"table"`
	// Tables are the file-bearing tables: tables: when given, otherwise the
	// table: section as one entry. Load always fills it.
	Tables []TableConfig `mapstructure:"-"`
	// fromTable says Tables came from the table: section, so its problems
	// are named by that section's keys.
	fromTable bool

	Storage     Storage       `mapstructure:"storage"`
	Index       Index         `mapstructure:"index"`
	Replication Replication   `mapstructure:"replication"`
	Rescan      Rescan        `mapstructure:"rescan"`
	Sweep       Sweep         `mapstructure:"sweep"`
	Safety      Safety        `mapstructure:"safety"`
	Orphans     Orphans       `mapstructure:"orphans"`
	HTTP        HTTP          `mapstructure:"http"`
	Retention   time.Duration `mapstructure:"retention"`
	BatchSize   int           `mapstructure:"batch_size"`
	Concurrency int           `mapstructure:"concurrency"`
	Log         Log           `mapstructure:"log"`
}

// Database says where the attachments live.
type Database struct {
	URL         string        `mapstructure:"url"`
	LockTimeout time.Duration `mapstructure:"lock_timeout"`
}

// Table names the attachment table and its columns.
type Table struct {
	Schema  string  `mapstructure:"schema"`
	Name    string  `mapstructure:"name"`
	Columns Columns `mapstructure:"columns"`
	// TimeZone is Django's TIME_ZONE, for a deleted_at column without time
	// zone (USE_TZ = False): the zone its wall times are in. Empty: the
	// database session's TimeZone.
	TimeZone string `mapstructure:"time_zone"`
	// Derived are the patterns of the files derived from each row's file
	// (thumbnails): see package derived.
	Derived []string `mapstructure:"derived"`
	// Prefixes are the folders of the storage the table owns, for the
	// orphan scan: empty, the folder its keys share and the derived
	// patterns' folders under it; "/" is the whole root or bucket prefix.
	Prefixes []string `mapstructure:"prefixes"`
}

// Orphans tunes what is done with files no row owns.
type Orphans struct {
	// Grace is how old a file must be before it is taken for an orphan (an
	// upload whose row is yet to commit is younger), and how long the
	// service waits after a row is deleted outright.
	Grace time.Duration `mapstructure:"grace"`
}

// Columns names the columns reconcile reads.
type Columns struct {
	ID               string `mapstructure:"id"`
	Key              string `mapstructure:"key"`
	OriginalFilename string `mapstructure:"original_filename"`
	IsActive         string `mapstructure:"is_active"`
	DeletedAt        string `mapstructure:"deleted_at"`
}

// Storage says where the files live.
type Storage struct {
	Backend     string `mapstructure:"backend"`
	Concurrency int    `mapstructure:"concurrency"`
	Local       Local  `mapstructure:"local"`
	S3          S3     `mapstructure:"s3"`
	Trash       Trash  `mapstructure:"trash"`
}

// Trash keeps removed files for a while, for an undo: off while Prefix is
// empty.
type Trash struct {
	// Prefix is the trash's folder, under the root or the S3 prefix, such
	// as .trash/.
	Prefix string `mapstructure:"prefix"`
	// Keep is how long a trashed file stays before the trash is emptied.
	Keep time.Duration `mapstructure:"keep"`
}

// Local is a directory on disk: Django's MEDIA_ROOT.
type Local struct {
	Root string `mapstructure:"root"`
}

// S3 is a bucket on an S3-compatible server.
type S3 struct {
	Endpoint  string `mapstructure:"endpoint"`
	Bucket    string `mapstructure:"bucket"`
	Prefix    string `mapstructure:"prefix"`
	AccessKey string `mapstructure:"access_key"`
	SecretKey string `mapstructure:"secret_key"`
	Region    string `mapstructure:"region"`
	UseSSL    bool   `mapstructure:"use_ssl"`
}

// Index is the local bbolt file.
type Index struct {
	Path string `mapstructure:"path"`
}

// Replication says how the service tails the table.
type Replication struct {
	Slot           string        `mapstructure:"slot"`
	Publication    string        `mapstructure:"publication"`
	StatusInterval time.Duration `mapstructure:"status_interval"`
	Watchdog       time.Duration `mapstructure:"watchdog"`
	MaxBackoff     time.Duration `mapstructure:"max_backoff"`
	// MaxRetainedWAL is the WAL the slot may hold on the server, in bytes,
	// before the service warns: a stuck stream fills the server's disk.
	MaxRetainedWAL Size `mapstructure:"max_retained_wal"`
	// Heartbeat is how long the table may stay quiet before the service
	// writes a heartbeat into the WAL, to keep its lag measured; 0 never.
	Heartbeat time.Duration `mapstructure:"heartbeat"`
}

// Rescan sets the service's periodic rescan.
type Rescan struct {
	Every time.Duration `mapstructure:"every"`
}

// Sweep sets the service's timer.
type Sweep struct {
	MaxWait time.Duration `mapstructure:"max_wait"`
	// OverdueAfter is how long a row may stay due before it counts as
	// overdue: the purge is not keeping up.
	OverdueAfter time.Duration `mapstructure:"overdue_after"`
}

// HTTP is where /metrics, /healthz, /readyz and /status are served.
type HTTP struct {
	// Listen is host:port; empty serves nothing. Left out, the service
	// listens on DefaultListen and the one-shot runs serve nothing.
	Listen string `mapstructure:"listen"`
	given  bool
}

// DefaultListen is the service's address when http.listen is left out:
// loopback only, a port clear of postgres_exporter (9187) and
// node_exporter (9100).
const DefaultListen = "127.0.0.1:9478"

// Address is where to serve, for the service or for a one-shot run.
func (h HTTP) Address(service bool) string {
	if !h.given && service {
		return DefaultListen
	}
	return h.Listen
}

// Safety bounds what one run, or one hour of the service, may delete. Zero
// is no bound.
type Safety struct {
	MaxDeletes        int `mapstructure:"max_deletes"`
	MaxDeletesPerHour int `mapstructure:"max_deletes_per_hour"`
}

// Log sets the structured log output.
type Log struct {
	Level  string `mapstructure:"level"`
	Format string `mapstructure:"format"`
}

// defaults lists every key: viper reads an environment variable only for a
// key it knows.
var defaults = map[string]any{
	"database.url":                    "",
	"database.lock_timeout":           "5s",
	"table.schema":                    "public",
	"table.name":                      "forum_attachment",
	"table.columns.id":                "id",
	"table.columns.key":               "image",
	"table.columns.original_filename": "original_filename",
	"table.columns.is_active":         "is_active",
	"table.columns.deleted_at":        "deleted_at",
	"table.time_zone":                 "",
	"table.derived":                   []string{},
	"table.prefixes":                  []string{},
	"orphans.grace":                   "1h",
	"storage.backend":                 "local",
	"storage.concurrency":             8,
	"storage.local.root":              "",
	"storage.s3.endpoint":             "",
	"storage.s3.bucket":               "",
	"storage.s3.prefix":               "",
	"storage.s3.access_key":           "",
	"storage.s3.secret_key":           "",
	"storage.s3.region":               "",
	"storage.s3.use_ssl":              true,
	"storage.trash.prefix":            "",
	"storage.trash.keep":              "7d",
	"index.path":                      "reconcile-index.db",
	"replication.slot":                "reconcile_attachments",
	"replication.publication":         "reconcile_attachments",
	"replication.status_interval":     "10s",
	"replication.watchdog":            "30s",
	"replication.max_backoff":         "30s",
	"replication.max_retained_wal":    "1GiB",
	"replication.heartbeat":           "1m",
	"rescan.every":                    "24h",
	"sweep.max_wait":                  "1m",
	"sweep.overdue_after":             "1h",
	"http.listen":                     "",
	"safety.max_deletes":              0,
	"safety.max_deletes_per_hour":     0,
	"retention":                       "720h",
	"batch_size":                      100,
	"concurrency":                     4,
	"log.level":                       "info",
	"log.format":                      "text",
}

// flagKeys maps command-line flags to the keys they override.
var flagKeys = map[string]string{
	"batch-size":  "batch_size",
	"max-deletes": "safety.max_deletes",
}

// budgetKeys are the deletion bounds, with the flag that may set them. Their
// zero means no bound, so a zero given on purpose is refused: whoever
// writes `--max-deletes 0` means "delete nothing", which is --dry-run.
var budgetKeys = map[string]string{
	"safety.max_deletes":          "max-deletes",
	"safety.max_deletes_per_hour": "",
}

// Load reads the file at path (none when empty), then the environment, then
// the flags that were set, and validates the result.
func Load(path string, flags *pflag.FlagSet) (*Config, error) {
	v := viper.New()
	for key, value := range defaults {
		v.SetDefault(key, value)
	}
	v.SetEnvPrefix(envPrefix)
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_"))
	v.AutomaticEnv()

	// A variable set to "" means empty, not unset: RECONCILE_STORAGE_S3_PREFIX=""
	// must be able to clear a prefix from the file.
	v.AllowEmptyEnv(true)

	var file map[string]any
	if path != "" {
		raw, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("read config file: %w", err)
		}
		file, err = parseYAML(v, raw)
		if err != nil {
			return nil, fmt.Errorf("config file %s: %w", path, err)
		}
		// An empty variable for a bound is no value at all: it must not
		// lift a bound that the file sets, as viper would have it.
		for key := range budgetKeys {
			if val, ok := os.LookupEnv(envName(key)); ok && strings.TrimSpace(val) == "" {
				if inFile, ok := lookup(file, key); ok {
					v.Set(key, inFile)
				}
			}
		}
	}

	if flags != nil {
		for flag, key := range flagKeys {
			if f := flags.Lookup(flag); f != nil {
				if err := v.BindPFlag(key, f); err != nil {
					return nil, fmt.Errorf("bind flag --%s: %w", flag, err)
				}
			}
		}
		// --days is the cron job's option: whole days of retention.
		if f := flags.Lookup("days"); f != nil && f.Changed {
			days, err := flags.GetInt("days")
			if err != nil {
				return nil, fmt.Errorf("--days: %w", err)
			}
			if days < 1 || days > MaxDays {
				return nil, fmt.Errorf("--days: must be between 1 and %d, got %d", MaxDays, days)
			}
			v.Set("retention", time.Duration(days)*24*time.Hour)
		}
	}

	if err := checkDurations(v); err != nil {
		return nil, err
	}
	if err := checkBudgets(v, flags); err != nil {
		return nil, err
	}
	if err := checkBools(v); err != nil {
		return nil, err
	}
	if err := checkSizes(v); err != nil {
		return nil, err
	}
	_, listenInEnv := os.LookupEnv(envName("http.listen"))
	tables, tablesGiven, err := findTables(file)
	if err != nil {
		return nil, fmt.Errorf("configuration: %w", err)
	}
	if section := tableSectionGiven(v); tablesGiven && len(section) > 0 {
		return nil, invalid([]string{fmt.Sprintf("tables: is given with %s; tables replaces the table section: move those settings into an entry of tables, or leave tables out",
			strings.Join(section, ", "))})
	}

	var cfg Config
	err = v.UnmarshalExact(&cfg, func(dc *mapstructure.DecoderConfig) {
		dc.DecodeHook = mapstructure.ComposeDecodeHookFunc(
			mapstructure.StringToTimeDurationHookFunc(),
			// A list from the environment: comma-separated.
			mapstructure.StringToSliceHookFunc(","),
		)
	})
	if err != nil {
		return nil, fmt.Errorf("configuration: %w", err)
	}
	cfg.HTTP.given = v.InConfig("http.listen") || listenInEnv
	if tablesGiven {
		if cfg.Tables, err = readTables(tables, cfg.Retention); err != nil {
			return nil, err
		}
	} else {
		cfg.Tables, cfg.fromTable = []TableConfig{cfg.Table.resolve(cfg.Retention)}, true
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// checkDurations reads every duration key through ParseDuration and puts
// the result back, so that no source can give one a bare number, a unit
// mapstructure would guess, or a value that overflows.
func checkDurations(v *viper.Viper) error {
	var lines []string
	for _, key := range durationKeys() {
		d, err := durationValue(v.Get(key))
		if err != nil {
			lines = append(lines, fmt.Sprintf("%s: %v; %s", key, err, durationForms))
			continue
		}
		v.Set(key, d)
	}
	return invalid(lines)
}

// checkBudgets reads the deletion bounds that were given (in the file, the
// environment or a flag) as whole numbers, and refuses a zero given on
// purpose, however it is spelt ("0", "00", "-0", 0.0). An empty variable
// leaves the bound unset.
func checkBudgets(v *viper.Viper, flags *pflag.FlagSet) error {
	var lines []string
	for key, flag := range budgetKeys {
		val, inEnv := os.LookupEnv(envName(key))
		inEnv = inEnv && strings.TrimSpace(val) != ""
		inFlag := false
		if flags != nil && flag != "" {
			f := flags.Lookup(flag)
			inFlag = f != nil && f.Changed
		}
		if !v.InConfig(key) && !inEnv && !inFlag {
			continue
		}
		n, err := wholeNumber(v.Get(key))
		switch {
		case err != nil:
			lines = append(lines, fmt.Sprintf("%s: %v; give the most rows to delete, a whole number (at least 1), or leave it out for no bound", key, err))
		case n == nil:
			v.Set(key, 0)
		case *n == 0:
			lines = append(lines, fmt.Sprintf("%s: 0 would mean no bound at all; leave it out for no bound, give the most rows to delete (at least 1), or use --dry-run to delete nothing", key))
		default:
			v.Set(key, *n)
		}
	}
	return invalid(lines)
}

// envName is the environment variable of key.
func envName(key string) string {
	return envPrefix + "_" + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
}

// wholeNumber reads a count as a source gave it; nil when it was given
// empty.
func wholeNumber(raw any) (*int, error) {
	var n int
	switch v := raw.(type) {
	case nil:
		return nil, nil
	case int:
		n = v
	case int64:
		n = int(v)
	case uint64:
		if v > math.MaxInt32 {
			return nil, fmt.Errorf("%d is too large", v)
		}
		n = int(v)
	case float64:
		if v != math.Trunc(v) || math.Abs(v) > math.MaxInt32 {
			return nil, fmt.Errorf("%v is not a whole number", v)
		}
		n = int(v)
	case string:
		s := strings.TrimSpace(v)
		if s == "" {
			return nil, nil
		}
		parsed, err := strconv.Atoi(s)
		if err != nil {
			return nil, fmt.Errorf("%q is not a whole number", v)
		}
		n = parsed
	default:
		return nil, fmt.Errorf("%v is not a whole number", raw)
	}
	return &n, nil
}

// checkBools reads every boolean key strictly: true or false (or 1, 0),
// never an empty string, which would turn use_ssl off unnoticed.
func checkBools(v *viper.Viper) error {
	var lines []string
	for _, key := range keysOf(reflect.TypeFor[bool]()) {
		switch raw := v.Get(key).(type) {
		case bool:
		case string:
			b, err := strconv.ParseBool(strings.TrimSpace(raw))
			if err != nil {
				lines = append(lines, fmt.Sprintf("%s: must be true or false, got %q", key, raw))
				continue
			}
			v.Set(key, b)
		default:
			lines = append(lines, fmt.Sprintf("%s: must be true or false, got %v", key, raw))
		}
	}
	return invalid(lines)
}

// invalid joins configuration problems into one error, nil when there are
// none.
func invalid(lines []string) error {
	if len(lines) == 0 {
		return nil
	}
	return errors.New("invalid configuration:\n  " + strings.Join(lines, "\n  "))
}

// parseYAML reads the document and expands ${VAR} references in its values
// (only that form, so a password holding a bare $ survives; comments are
// not values).
func parseYAML(v *viper.Viper, raw []byte) (map[string]any, error) {
	var doc map[string]any
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return nil, fmt.Errorf("parse YAML: %w", err)
	}
	if doc == nil {
		doc = map[string]any{} // an empty file
	}
	var missing []string
	expanded := expandValues(doc, &missing).(map[string]any)
	if len(missing) > 0 {
		return nil, fmt.Errorf("environment variable %s is referenced but not set", strings.Join(missing, ", "))
	}
	settings := maps.Clone(expanded)
	delete(settings, tablesKey) // read by readTables
	if err := v.MergeConfigMap(settings); err != nil {
		return nil, fmt.Errorf("load YAML: %w", err)
	}
	return expanded, nil
}

// lookup finds the value of a dotted key in a parsed document.
func lookup(doc map[string]any, key string) (any, bool) {
	var node any = doc
	for part := range strings.SplitSeq(key, ".") {
		m, ok := node.(map[string]any)
		if !ok {
			return nil, false
		}
		if node, ok = m[part]; !ok {
			return nil, false
		}
	}
	return node, true
}

// slotName is what PostgreSQL accepts as a replication slot name; the
// publication is held to it too, so it passes unquoted in START_REPLICATION.
var slotName = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

// timeZoneName is what a time zone name is made of (Europe/Paris,
// America/Argentina/Buenos_Aires, Etc/GMT+3, UTC); it reaches SQL as a
// literal, so nothing else passes.
var timeZoneName = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9/_+:.-]{0,63}$`)

var envRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)

func expandValues(node any, missing *[]string) any {
	switch n := node.(type) {
	case map[string]any:
		out := make(map[string]any, len(n))
		for k, v := range n {
			out[k] = expandValues(v, missing)
		}
		return out
	case []any:
		out := make([]any, len(n))
		for i, v := range n {
			out[i] = expandValues(v, missing)
		}
		return out
	case string:
		return envRef.ReplaceAllStringFunc(n, func(ref string) string {
			name := envRef.FindStringSubmatch(ref)[1]
			value, ok := os.LookupEnv(name)
			if !ok {
				*missing = append(*missing, name)
			}
			return value
		})
	default:
		return n
	}
}

// Validate reports every setting that is wrong, each with its key and what
// would be right. It never repeats a secret.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: "+format, append([]any{key}, args...)...))
	}

	if c.Database.URL == "" {
		bad("database.url", "is required (a PostgreSQL URL, e.g. postgres://user@host:5432/forum; env RECONCILE_DATABASE_URL)")
	} else if _, err := pgx.ParseConfig(c.Database.URL); err != nil {
		// The parser's message may quote the URL, password included.
		bad("database.url", "is not a valid PostgreSQL URL or key=value connection string")
	}
	if lt := c.Database.LockTimeout; lt != 0 && (lt < time.Millisecond || lt > maxLockTimeout) {
		bad("database.lock_timeout", "must be 0 (wait forever) or between 1ms and %s (PostgreSQL's bound), such as 5s, got %s", maxLockTimeout, lt)
	}

	tables, section := c.checkedTables()
	listed := map[[2]string]int{}
	for i, t := range tables {
		at := tableAt(section, i)
		checkTable(bad, at, t, section)
		if j, ok := listed[[2]string{t.Schema, t.Name}]; ok {
			bad(at+".name", "%s.%s is listed twice, as %s too; list each table once", t.Schema, t.Name, tableAt(section, j))
			continue
		}
		listed[[2]string{t.Schema, t.Name}] = i
	}

	switch c.Storage.Backend {
	case "local":
		if c.Storage.Local.Root == "" {
			bad("storage.local.root", "is required with storage.backend local (the directory Django calls MEDIA_ROOT)")
		} else if st, err := os.Stat(c.Storage.Local.Root); err != nil {
			bad("storage.local.root", "%q cannot be used: %v", c.Storage.Local.Root, errors.Unwrap(err))
		} else if !st.IsDir() {
			bad("storage.local.root", "%q is not a directory", c.Storage.Local.Root)
		}
	case "s3":
		if c.Storage.S3.Endpoint == "" {
			bad("storage.s3.endpoint", "is required with storage.backend s3 (host[:port], e.g. s3.amazonaws.com)")
		} else if strings.Contains(c.Storage.S3.Endpoint, "://") {
			bad("storage.s3.endpoint", "must be host[:port] without a scheme; set storage.s3.use_ssl for https")
		}
		if c.Storage.S3.Bucket == "" {
			bad("storage.s3.bucket", "is required with storage.backend s3")
		}
	default:
		bad("storage.backend", "must be local or s3, got %q", c.Storage.Backend)
	}
	if p := c.Storage.Trash.Prefix; p != "" {
		if dir := strings.TrimRight(p, "/"); dir == "" {
			bad("storage.trash.prefix", "must name a folder under the root or the S3 prefix, such as .trash/, or be empty for no trash, got %q", p)
		} else if err := storage.ValidateKey(dir); err != nil {
			bad("storage.trash.prefix", "must be a relative folder such as .trash/: %v", err)
		}
		trash := strings.TrimRight(p, "/") + "/"
		for ti, t := range tables {
			at := tableAt(section, ti)
			for i, text := range t.Derived {
				if d, err := derived.Parse(text); err == nil {
					if lead := d.Prefix(""); lead != "" && strings.HasPrefix(lead, trash) {
						bad("storage.trash.prefix", "%q would hold the files of %s.derived[%d] (%s), which reconcile then refuses to touch: put the trash beside them, such as .trash/", p, at, i, d)
					}
				}
			}
			for i, prefix := range t.Prefixes {
				if strings.HasPrefix(strings.TrimRight(prefix, "/")+"/", trash) {
					bad("storage.trash.prefix", "%q would hold %s.prefixes[%d] (%s), the table's own files: put the trash beside them, such as .trash/", p, at, i, prefix)
				}
			}
		}
		if c.Storage.Trash.Keep <= 0 {
			bad("storage.trash.keep", "must be a positive duration such as 7d while storage.trash.prefix is set, got %s", c.Storage.Trash.Keep)
		}
	}
	if c.Storage.Concurrency < 1 || c.Storage.Concurrency > 256 {
		bad("storage.concurrency", "must be between 1 and 256, got %d", c.Storage.Concurrency)
	}

	if c.Index.Path == "" {
		bad("index.path", "is required (a file path for the local bbolt index)")
	}
	for _, n := range []struct{ key, name string }{
		{"replication.slot", c.Replication.Slot},
		{"replication.publication", c.Replication.Publication},
	} {
		if !slotName.MatchString(n.name) {
			bad(n.key, "must be 1 to 63 lower-case letters, digits or underscores, got %q", n.name)
		}
	}
	if c.Replication.StatusInterval < 10*time.Millisecond || c.Replication.StatusInterval > 30*time.Second {
		bad("replication.status_interval", "must be a duration between 10ms and 30s (half the server's default wal_sender_timeout of 60s), got %s", c.Replication.StatusInterval)
	}
	if c.Replication.Watchdog < 2*c.Replication.StatusInterval {
		bad("replication.watchdog", "must be at least twice replication.status_interval (%s): the server answers each status report, got %s",
			c.Replication.StatusInterval, c.Replication.Watchdog)
	}
	if c.Replication.MaxBackoff <= 0 {
		bad("replication.max_backoff", "must be a positive duration such as 30s, got %s", c.Replication.MaxBackoff)
	}
	if c.Rescan.Every != 0 && c.Rescan.Every < time.Minute {
		bad("rescan.every", "must be a minute or more, such as 24h, or 0 for never, got %s", c.Rescan.Every)
	}
	if c.Sweep.MaxWait <= 0 {
		bad("sweep.max_wait", "must be a positive duration such as 1m, got %s", c.Sweep.MaxWait)
	}
	if c.Sweep.OverdueAfter <= 0 {
		bad("sweep.overdue_after", "must be a positive duration such as 1h, got %s", c.Sweep.OverdueAfter)
	}
	if hb := c.Replication.Heartbeat; hb != 0 && hb < time.Second {
		bad("replication.heartbeat", "must be 0 (none) or a second or more, such as 1m, got %s", hb)
	}
	if c.Replication.MaxRetainedWAL <= 0 {
		bad("replication.max_retained_wal", "must be a positive size such as 1GiB or 512MiB, got %d bytes", c.Replication.MaxRetainedWAL)
	}
	if l := c.HTTP.Listen; l != "" {
		if err := checkListen(l); err != nil {
			bad("http.listen", "%v; give host:port such as 127.0.0.1:9478, or \"\" to serve nothing", err)
		}
	}
	if c.Retention <= 0 || c.Retention > MaxDuration {
		bad("retention", "must be a positive duration such as 30d or 720h, at most %dd, got %s", MaxDays, c.Retention)
	}
	if c.Safety.MaxDeletes < 0 {
		bad("safety.max_deletes", "must be a number of rows (at least 1), or left out for no bound, got %d", c.Safety.MaxDeletes)
	}
	if c.Safety.MaxDeletesPerHour < 0 {
		bad("safety.max_deletes_per_hour", "must be a number of rows (at least 1), or left out for no bound, got %d", c.Safety.MaxDeletesPerHour)
	}
	if c.Orphans.Grace < time.Second {
		bad("orphans.grace", "must be a second or more, such as 1h: an upload whose row has yet to commit must never look orphaned, got %s", c.Orphans.Grace)
	}
	if c.BatchSize < 1 || c.BatchSize > MaxBatchSize {
		bad("batch_size", "must be between 1 and %d, got %d", MaxBatchSize, c.BatchSize)
	}
	if c.Concurrency < 1 || c.Concurrency > 64 {
		bad("concurrency", "must be between 1 and 64 batches in flight, got %d", c.Concurrency)
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		bad("log.level", "must be debug, info, warn or error, got %q", c.Log.Level)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		bad("log.format", "must be text or json, got %q", c.Log.Format)
	}
	lines := make([]string, len(errs))
	for i, e := range errs {
		lines[i] = e.Error()
	}
	return invalid(lines)
}

// shortRetention is the retention under which a start is warned: a row
// soft-deleted by mistake must be restored within it.
const shortRetention = 24 * time.Hour

// Warnings lists settings that are accepted but that an operator should
// see at start.
func (c *Config) Warnings() []string {
	var w []string
	// With tables:, the top-level retention counts only as the default of
	// the entries that leave theirs out.
	if tables, section := c.checkedTables(); section {
		if c.Retention < shortRetention {
			w = append(w, fmt.Sprintf("retention is %s, under a day: an attachment deleted by mistake is purged, file and row, %s after its deletion", c.Retention, c.Retention))
		}
	} else {
		for i, t := range tables {
			if t.Retention < shortRetention {
				w = append(w, fmt.Sprintf("%s.retention (%s.%s) is %s, under a day: an attachment of that table deleted by mistake is purged, file and row, %s after its deletion",
					tableAt(section, i), t.Schema, t.Name, t.Retention, t.Retention))
			}
		}
	}
	if c.Orphans.Grace < time.Minute {
		w = append(w, fmt.Sprintf("orphans.grace is %s, under a minute: an upload whose row commits later than that, or a row put back later than that after its deletion, loses its file", c.Orphans.Grace))
	}
	return w
}
