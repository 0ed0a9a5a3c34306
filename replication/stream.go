// Package replication tails the attachment tables through a logical
// replication slot (pgoutput) into the index. It creates the slot and the
// publication when they are missing, rebuilds the index through a rescan
// when the index cannot be trusted to continue from the slot, and tells the
// server only what the index has committed, so that after any crash the
// stream replays what the index lacks.
package replication

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/reconcile/reconcile/index"
	"github.com/reconcile/reconcile/internal/retry"
)

// ErrSetup means the server or the configuration must be changed before
// the stream can run; retrying would not help.
var ErrSetup = errors.New("replication not possible")

// Config says what to stream and how.
type Config struct {
	URL         string // the database, as for every other connection
	Slot        string
	Publication string
	// Tables are the tables to tail; when empty, the one the fields
	// below name.
	Tables    []Table
	Schema    string
	Table     string
	ID        string // column names
	Key       string
	IsActive  string
	DeletedAt string
	// StatusInterval is how often the committed position is reported, and
	// a reply asked for, while the stream is quiet.
	StatusInterval time.Duration
	// Watchdog is how long a connection may stay silent before it is taken
	// for dead and dialled again.
	Watchdog time.Duration
	// RescanEvery rebuilds the index from the database this often, to
	// repair any drift; 0 never.
	RescanEvery time.Duration
	// MaxBackoff caps the wait between reconnection attempts.
	MaxBackoff time.Duration
	// Temporary makes the slot one that goes with the connection: for the
	// dry run, which must leave nothing holding WAL behind.
	Temporary bool
	// Heartbeat is how long the table may stay quiet before a heartbeat
	// goes through the WAL, to keep the lag measured; 0 sends none.
	Heartbeat time.Duration
	// Observer hears what the stream does; nil hears nothing.
	Observer Observer
	// Deleted hears of the rows deleted outright whose DELETE carries the
	// key (REPLICA IDENTITY FULL), before the index records the position
	// of their transaction: an error ends the session, which replays them.
	// nil: nobody listens.
	Deleted func(ctx context.Context, rows []DeletedRow) error
}

// DeletedRow is a row deleted outright, as its DELETE's old image shows it:
// one for each file it names.
type DeletedRow struct {
	Table   string // the table's IndexName
	ID, Key string
	// SoftDeleted: the row was soft-deleted, deleted at DeletedAt (as the
	// index holds such times).
	SoftDeleted bool
	DeletedAt   time.Time
	// At is when the DELETE committed.
	At time.Time
}

// Observer hears what the stream does, for metrics. Its methods are called
// from the stream's goroutine and must not block.
type Observer interface {
	Connected(up bool)
	Reconnected()
	// Rescanned counts a rebuild of the index, by one of the Rescan* reasons.
	Rescanned(reason string)
	// Applied is the commit time of the last transaction the index holds,
	// or the send time of a heartbeat after it.
	Applied(at time.Time)
}

// The reasons a rescan is counted under.
const (
	RescanNewSlot          = "new_slot"
	RescanIndexEmpty       = "index_empty"
	RescanIndexMismatch    = "index_mismatch"
	RescanIndexBehind      = "index_behind"
	RescanPeriodic         = "periodic"
	RescanTruncate         = "truncate"
	RescanLargeTransaction = "large_transaction"
)

type noObserver struct{}

func (noObserver) Connected(bool)    {}
func (noObserver) Reconnected()      {}
func (noObserver) Rescanned(string)  {}
func (noObserver) Applied(time.Time) {}

// Index is where the changes go; *index.Index has it.
type Index interface {
	State() (index.State, error)
	Apply(changes []index.Change, checkpoint uint64) error
	Rescanned(origin string, checkpoint uint64, at time.Time) error
}

// RescanFunc rebuilds the index from every table (it empties it first).
type RescanFunc func(ctx context.Context) error

// Stream tails the tables into the index.
type Stream struct {
	cfg    Config
	idx    Index
	rescan RescanFunc
	log    *slog.Logger
	// replace says why the slot must be dropped and created anew at the
	// next session; empty when it can be used.
	replace string
	// progressed says the last session moved the acknowledged position:
	// it ran, and its failure starts a new count of tries.
	progressed bool
	// lastCommit is when the stream last brought a transaction of the
	// table (Unix nanoseconds): no heartbeat is needed until Heartbeat after.
	lastCommit atomic.Int64
}

const (
	// applyChunk bounds the changes one index transaction writes, and so
	// the memory a large database transaction takes.
	applyChunk = 4096
	// rescanOver is the size of a transaction that is cheaper to read back
	// from the table than to apply change by change: bbolt rewrites a page
	// for each row of random ids, where a rescan appends in order. Its
	// changes are then only counted, and the index rebuilt at its commit.
	rescanOver = 20000
	// flushDelay lets a burst of small transactions share one index commit.
	flushDelay = 20 * time.Millisecond
	// pollEvery bounds how long a read waits before the loop looks at its
	// timers and at shutdown again.
	pollEvery = time.Second
	// minBackoff is the first wait before dialling again.
	minBackoff = 500 * time.Millisecond
	// sessionTries is how many sessions in a row may fail without moving
	// the acknowledged position before Run gives up: a few minutes of
	// backoff, then the service ends for its supervisor to restart it.
	sessionTries = 10
)

// tables are the tables to tail: Tables, or the one the flat fields name.
func (c Config) tables() []Table {
	if len(c.Tables) > 0 {
		return c.Tables
	}
	return []Table{{Schema: c.Schema, Name: c.Table, ID: c.ID, Keys: []string{c.Key}, IsActive: c.IsActive, DeletedAt: c.DeletedAt}}
}

// checkTables refuses tables the stream could not read.
func checkTables(tables []Table) error {
	for _, t := range tables {
		if len(t.Keys) == 0 {
			return fmt.Errorf("table %s has no key column: %w", t.IndexName(), ErrSetup)
		}
		if t.IsActive != "" && t.IsDeleted != "" {
			return fmt.Errorf("table %s has both an is_active and an is_deleted column: one flag says a row is soft-deleted: %w", t.IndexName(), ErrSetup)
		}
	}
	return nil
}

// New returns a stream; Run starts it.
func New(cfg Config, idx Index, rescan RescanFunc, log *slog.Logger) *Stream {
	if log == nil {
		log = slog.Default()
	}
	if cfg.Observer == nil {
		cfg.Observer = noObserver{}
	}
	return &Stream{cfg: cfg, idx: idx, rescan: rescan, log: log.With("component", "replication")}
}

// Run streams until ctx ends, dialling again with capped backoff after any
// connection error. It returns nil when ctx ends, an ErrSetup error when
// the server or the configuration must change, and the last error once
// sessionTries sessions in a row have failed.
func (s *Stream) Run(ctx context.Context) error {
	backoff := retry.Backoff{Min: minBackoff, Max: s.cfg.MaxBackoff, Tries: sessionTries}
	for {
		err := s.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, ErrSetup) {
			return err
		}
		if s.progressed {
			backoff.Succeeded() // it had been streaming: start the count over
		}
		if why := slotUnusable(err, s.cfg.Publication); why != "" {
			// Decoding reads the catalog as it was when each change was
			// written: a publication created or renamed after the slot's
			// position is missing there, and stays missing for as long as
			// the slot replays that WAL. Only a new slot gets past it; a
			// rescan covers what the old one held.
			s.replace = why
		}
		s.log.Warn("replication interrupted; reconnecting", "error", err, "retry_in", backoff.Next())
		s.cfg.Observer.Reconnected()
		if err := backoff.Failed(ctx, err); err != nil {
			return fmt.Errorf("replication: %w", err)
		}
		if ctx.Err() != nil {
			return nil
		}
	}
}

// errStreamEnded marks an error the server sent while streaming.
var errStreamEnded = errors.New("the server ended the stream")

// slotUnusable says why the slot cannot go on after err, or nothing: while
// streaming, the server could not find an object it needed, the
// publication as it decodes (its message is in the server's language: the
// code says it).
func slotUnusable(err error, publication string) string {
	var pgErr *pgconn.PgError
	if errors.Is(err, errStreamEnded) && errors.As(err, &pgErr) && pgErr.Code == pgerrcode.UndefinedObject {
		return fmt.Sprintf("the slot cannot decode its WAL with publication %q (%s): dropped and created again", publication, pgErr.Message)
	}
	return ""
}

// session is one connection: checks, setup, an optional rescan, then the
// stream until an error.
func (s *Stream) session(ctx context.Context) error {
	s.progressed = false
	cat, err := pgx.Connect(ctx, s.cfg.URL)
	if err != nil {
		return fmt.Errorf("connect to database: %w", err)
	}
	defer closeWithin(cat.Close, ctx)
	if err := s.checkServer(ctx, cat); err != nil {
		return err
	}
	if err := EnsurePublication(ctx, cat, s.cfg, s.log); err != nil {
		return err
	}

	rc, err := pgconn.ParseConfig(s.cfg.URL)
	if err != nil {
		return fmt.Errorf("database.url: %w: %w", err, ErrSetup)
	}
	rc.RuntimeParams["replication"] = "database"
	// Named after the slot, so pg_stat_replication tells which it is.
	rc.RuntimeParams["application_name"] = s.cfg.Slot
	// Timestamps arrive as text in the sending session's style.
	rc.RuntimeParams["DateStyle"] = "ISO"
	rc.RuntimeParams["TimeZone"] = "UTC"
	conn, err := pgconn.ConnectConfig(ctx, rc)
	if err != nil {
		return fmt.Errorf("open replication connection: %w", err)
	}
	defer closeWithin(conn.Close, ctx)

	sys, err := pglogrepl.IdentifySystem(ctx, conn)
	if err != nil {
		return fmt.Errorf("identify system: %w", err)
	}
	// The tables are not part of it: the index keeps each table's entries
	// apart, and a table added to the configuration is no other origin.
	origin := fmt.Sprintf("%s/%s/%s", sys.SystemID, sys.DBName, s.cfg.Slot)

	fresh, confirmed, err := s.ensureSlot(ctx, cat, conn, sys.DBName)
	if err != nil {
		return err
	}
	st, err := s.idx.State()
	if err != nil {
		return err
	}
	start := st.Checkpoint
	var reason, kind string
	if s.cfg.Temporary {
		fresh = "the dry run's slot is new on every connection"
	}
	switch {
	case fresh != "":
		reason, kind = fresh, RescanNewSlot
	case st.Origin == "":
		reason, kind = "the index is new or was never filled", RescanIndexEmpty
	case st.Origin != origin:
		reason, kind = "the index was filled from another database, slot or table", RescanIndexMismatch
	case uint64(confirmed) > st.Checkpoint:
		reason = fmt.Sprintf("the index (at %s) is behind the slot (at %s)", pglogrepl.LSN(st.Checkpoint), confirmed)
		kind = RescanIndexBehind
	case s.cfg.RescanEvery > 0 && time.Since(st.RescannedAt) >= s.cfg.RescanEvery:
		reason, kind = "periodic rescan", RescanPeriodic
	}
	if reason != "" {
		// The rescan reads the table after the slot's position: replaying
		// the stream from there over it converges on the table's state.
		keep := st.Origin == origin && fresh == "" && uint64(confirmed) <= st.Checkpoint
		if !keep {
			start = uint64(confirmed)
		}
		s.log.Info("rescanning the table into the index", "reason", reason)
		s.cfg.Observer.Rescanned(kind)
		if err := s.rescan(ctx); err != nil {
			return err
		}
		st.RescannedAt = time.Now()
		if err := s.idx.Rescanned(origin, start, st.RescannedAt); err != nil {
			return err
		}
	}

	// messages: the heartbeats below come through the stream. pgoutput
	// has them from PostgreSQL 14; before, no heartbeat is written.
	var version int
	if err := cat.QueryRow(ctx, `SELECT current_setting('server_version_num')::int`).Scan(&version); err != nil {
		return fmt.Errorf("read server_version_num: %w", err)
	}
	messages := version >= 140000
	args := []string{"proto_version '1'", fmt.Sprintf("publication_names '%s'", s.cfg.Publication)}
	if messages {
		args = append(args, "messages 'true'")
	}
	err = pglogrepl.StartReplication(ctx, conn, s.cfg.Slot, pglogrepl.LSN(start), pglogrepl.StartReplicationOptions{PluginArgs: args})
	if err != nil {
		return fmt.Errorf("start replication from %s: %w", pglogrepl.LSN(start), err)
	}
	s.log.Info("streaming changes", "slot", s.cfg.Slot, "from", pglogrepl.LSN(start))
	s.cfg.Observer.Connected(true)
	defer s.cfg.Observer.Connected(false)
	if s.cfg.Heartbeat > 0 && messages && !s.cfg.Temporary { // the dry run writes nothing, not even WAL
		beat, stopBeat := context.WithCancel(ctx)
		beating := make(chan struct{})
		go func() { defer close(beating); s.heartbeat(beat, cat) }()
		defer func() { stopBeat(); <-beating }()
	}
	send := func(pos pglogrepl.LSN, askReply bool) error {
		return pglogrepl.SendStandbyStatusUpdate(context.Background(), conn,
			pglogrepl.StandbyStatusUpdate{WALWritePosition: pos, WALFlushPosition: pos, WALApplyPosition: pos, ReplyRequested: askReply})
	}
	l := s.newLoop(ctx, send, origin, start, st.RescannedAt)
	l.conn = conn
	err = l.run()
	s.progressed = l.ack.committed > start
	return err
}

// heartbeatPrefix marks the messages heartbeat writes.
const heartbeatPrefix = "reconcile_heartbeat"

// heartbeat writes a message into the WAL when the table has been quiet
// for the Heartbeat interval, carrying this host's clock: its arrival on
// the stream tells how far behind the stream is even then. Only then: on
// an idle server every write of WAL makes archive_timeout switch segments.
// A role that may not write one only loses the lag's freshness.
func (s *Stream) heartbeat(ctx context.Context, cat *pgx.Conn) {
	tick := time.NewTicker(s.cfg.Heartbeat)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if time.Since(time.Unix(0, s.lastCommit.Load())) < s.cfg.Heartbeat {
			continue
		}
		_, err := cat.Exec(ctx, `SELECT pg_logical_emit_message(false, $1, $2::text)`, heartbeatPrefix, strconv.FormatInt(time.Now().UnixNano(), 10))
		if err != nil {
			if ctx.Err() == nil {
				s.log.Warn("write a heartbeat into the WAL; replication lag is measured only when the table changes", "error", err)
			}
			return
		}
	}
}

// closeWithin closes a connection, giving up after a few seconds: a dead
// server must not hold up a reconnection or the shutdown.
func closeWithin(close func(context.Context) error, ctx context.Context) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_ = close(ctx)
}

// checkServer makes the checks that need a person to fix something.
func (s *Stream) checkServer(ctx context.Context, cat *pgx.Conn) error {
	var walLevel string
	if err := cat.QueryRow(ctx, "SHOW wal_level").Scan(&walLevel); err != nil {
		return fmt.Errorf("read wal_level: %w", err)
	}
	if walLevel != "logical" {
		return fmt.Errorf("the server's wal_level is %q: set wal_level = logical in postgresql.conf and restart PostgreSQL: %w", walLevel, ErrSetup)
	}
	var user string
	var canReplicate bool
	err := cat.QueryRow(ctx, `SELECT current_user, rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user`).Scan(&user, &canReplicate)
	if err != nil {
		return fmt.Errorf("read role attributes: %w", err)
	}
	if !canReplicate {
		return fmt.Errorf("role %q lacks the REPLICATION attribute: run ALTER ROLE %s REPLICATION as a superuser: %w",
			user, pgx.Identifier{user}.Sanitize(), ErrSetup)
	}
	// A walsender that synchronous_standby_names matches is waited for by
	// every commit: the forum would stall behind reconcile's index.
	var syncNames string
	if err := cat.QueryRow(ctx, "SHOW synchronous_standby_names").Scan(&syncNames); err != nil {
		return fmt.Errorf("read synchronous_standby_names: %w", err)
	}
	if matchesStandbyNames(syncNames, s.cfg.Slot) {
		return fmt.Errorf("synchronous_standby_names (%q) matches reconcile's replication connection (application_name %q): every commit would wait for reconcile; list the standbys by name: %w",
			syncNames, s.cfg.Slot, ErrSetup)
	}
	for _, t := range s.cfg.tables() {
		if err := checkTable(ctx, cat, t); err != nil {
			return err
		}
	}
	return nil
}

// checkTable checks that a table exists and that its DELETEs carry its id.
func checkTable(ctx context.Context, cat *pgx.Conn, t Table) error {
	// Publishing a table without a replica identity makes every UPDATE and
	// DELETE on it fail, and without the id in it a DELETE cannot be told.
	// A partitioned table's rows live in its partitions, each with its own
	// replica identity: every one is checked (pg_partition_tree lists a
	// plain table alone).
	var exists bool
	err := cat.QueryRow(ctx, `
		SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		               WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p'))`,
		t.Schema, t.Name).Scan(&exists)
	if err != nil {
		return fmt.Errorf("look for table %s: %w", t.IndexName(), err)
	}
	if !exists {
		return fmt.Errorf("table %s.%s does not exist: %w", t.Schema, t.Name, ErrSetup)
	}
	table := pgx.Identifier{t.Schema, t.Name}.Sanitize()
	rows, err := cat.Query(ctx, `
		SELECT c.oid::regclass::text
		FROM pg_partition_tree($1::regclass) AS t
		JOIN pg_class c ON c.oid = t.relid
		WHERE t.isleaf AND c.relreplident <> 'f'
		  AND NOT EXISTS (SELECT 1 FROM pg_index i
		                  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
		                  WHERE i.indrelid = c.oid AND a.attname = $2
		                    AND ((c.relreplident = 'd' AND i.indisprimary) OR (c.relreplident = 'i' AND i.indisreplident)))
		ORDER BY 1`, table, t.ID)
	if err != nil {
		return fmt.Errorf("read the replica identity of %s: %w", t.IndexName(), err)
	}
	lacking, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("read the replica identity of %s: %w", t.IndexName(), err)
	}
	if len(lacking) > 0 {
		return fmt.Errorf("the replica identity of %s does not include %q: give it that primary key, or ALTER TABLE ... REPLICA IDENTITY FULL: %w",
			strings.Join(lacking, ", "), t.ID, ErrSetup)
	}
	return nil
}

// matchesStandbyNames tells whether synchronous_standby_names could pick
// application name: '*' or the name itself, in any of its forms.
func matchesStandbyNames(setting, name string) bool {
	for _, word := range strings.FieldsFunc(strings.ToLower(setting), func(r rune) bool {
		return !(r == '*' || r == '_' || r == '$' || unicode.IsLetter(r) || unicode.IsDigit(r))
	}) {
		if word == "*" || word == strings.ToLower(name) {
			return true
		}
	}
	return false
}

// Catalog is what EnsurePublication needs of a connection; *pgx.Conn and
// *pgxpool.Pool have it.
type Catalog interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// EnsurePublication makes the publication publish the configured tables,
// and only them: it creates it when missing, adds the tables it lacks and
// drops those no longer configured. It refuses one that does not publish
// every change and column of a table. The changes of a partitioned table's
// partitions are published as the table's own (publish_via_partition_root),
// so the stream knows them by its name. Only the tables' owner can create
// or alter it: `reconcile migrate` does, and the stream, run by a role of
// fewer rights, finds it ready.
func EnsurePublication(ctx context.Context, cat Catalog, cfg Config, log *slog.Logger) error {
	exists, missing, err := CheckPublication(ctx, cat, cfg)
	if err != nil {
		return err
	}
	owner := "the table's owner"
	if len(cfg.tables()) > 1 {
		owner = "the tables' owner"
	}
	if cfg.Temporary && (!exists || len(missing) > 0) {
		// The dry run changes nothing, the publication included.
		return fmt.Errorf("publication %q lacks %s: run `reconcile migrate` as %s first: %w",
			cfg.Publication, strings.Join(missing, ", "), owner, ErrSetup)
	}
	pub := pgx.Identifier{cfg.Publication}.Sanitize()
	if !exists {
		sql := fmt.Sprintf("CREATE PUBLICATION %s FOR TABLE %s WITH (publish_via_partition_root = true)", pub, strings.Join(missing, ", "))
		if _, err := cat.Exec(ctx, sql); err != nil {
			return fmt.Errorf("publication %q is missing and cannot be created by this role (%w): run `reconcile migrate` as %s, which creates it: %w",
				cfg.Publication, err, owner, ErrSetup)
		}
		log.Info("created publication", "publication", cfg.Publication, "tables", strings.Join(missing, ", "))
		return nil
	}
	// Tables the publication holds beyond these are left: it may serve
	// another consumer too. Those reconcile served are dropped by
	// Unpublish.
	if len(missing) == 0 {
		return nil
	}
	sql := fmt.Sprintf("ALTER PUBLICATION %s ADD TABLE %s", pub, strings.Join(missing, ", "))
	if _, err := cat.Exec(ctx, sql); err != nil {
		return fmt.Errorf("publication %q must add %s, and this role cannot alter it (%w): run `reconcile migrate` as %s, which does: %w",
			cfg.Publication, strings.Join(missing, ", "), err, owner, ErrSetup)
	}
	for _, t := range missing {
		log.Info("added a table to the publication", "publication", cfg.Publication, "table", t)
	}
	return nil
}

// CheckPublication reads, changing nothing, whether the publication exists
// and which of the configured tables (quoted, schema-qualified) it lacks:
// every one when it does not exist. A publication that would hide changes
// of a table it holds (an operation it does not publish, a row filter, a
// column list without one of reconcile's columns, a partitioned table not
// published through its root) is an ErrSetup error: that cannot be mended
// by adding tables.
func CheckPublication(ctx context.Context, cat Catalog, cfg Config) (exists bool, missing []string, err error) {
	tables := cfg.tables()
	if err := checkTables(tables); err != nil {
		return false, nil, err
	}
	names := make([]string, len(tables))
	for i, t := range tables {
		names[i] = pgx.Identifier{t.Schema, t.Name}.Sanitize()
	}
	var all, viaRoot bool
	err = cat.QueryRow(ctx, `
		SELECT count(*) > 0,
		       coalesce(bool_and(pubinsert AND pubupdate AND pubdelete AND pubtruncate), false),
		       coalesce(bool_and(pubviaroot), false)
		FROM pg_publication WHERE pubname = $1`, cfg.Publication).Scan(&exists, &all, &viaRoot)
	if err != nil {
		return false, nil, fmt.Errorf("look for publication %q: %w", cfg.Publication, err)
	}
	if !exists {
		return false, names, nil
	}
	// Every table is checked before anything is altered: a publication
	// that hides changes is refused as it stands.
	for i, t := range tables {
		var published, partitioned, filtered bool
		// A row filter, or a column list without one of reconcile's
		// columns (PostgreSQL 15 and later; to_jsonb reads the columns
		// where they exist).
		err := cat.QueryRow(ctx, `
			SELECT EXISTS (SELECT 1 FROM pg_publication_tables t WHERE t.pubname = $1 AND t.schemaname = $2 AND t.tablename = $3),
			       EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
			               WHERE n.nspname = $2 AND c.relname = $3 AND c.relkind = 'p'),
			       EXISTS (
				SELECT 1 FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid
				WHERE p.pubname = $1 AND r.prrelid = $4::regclass
				  AND (to_jsonb(r) ->> 'prqual' IS NOT NULL OR
				       (to_jsonb(r) ->> 'prattrs' IS NOT NULL AND NOT
				        (SELECT array_agg(a.attnum) FROM pg_attribute a WHERE a.attrelid = $4::regclass AND a.attname = ANY ($5::text[]))
				        <@ ARRAY(SELECT jsonb_array_elements_text(to_jsonb(r) -> 'prattrs'))::int2[])))`,
			cfg.Publication, t.Schema, t.Name, names[i], t.columns()).Scan(&published, &partitioned, &filtered)
		if err != nil {
			return false, nil, fmt.Errorf("read publication %q: %w", cfg.Publication, err)
		}
		if !all || filtered || (partitioned && !viaRoot) {
			return false, nil, fmt.Errorf("publication %q exists but does not publish every change and column of %s under its own name: set replication.publication to a new name and run `reconcile migrate`, which creates it: %w",
				cfg.Publication, names[i], ErrSetup)
		}
		if !published {
			missing = append(missing, names[i])
		}
	}
	return true, missing, nil
}

// Unpublish drops from the publication the tables, named schema.name
// (Table.IndexName), that it lists by name: tables reconcile no longer
// serves. One that a whole schema's publication holds stays, and its
// changes are dropped by the stream.
func Unpublish(ctx context.Context, cat Catalog, publication string, tables []string, log *slog.Logger) error {
	var listed []string
	err := cat.QueryRow(ctx, `
		SELECT coalesce(array_agg(format('%I.%I', n.nspname, c.relname) ORDER BY 1), '{}')
		FROM pg_publication_rel r
		JOIN pg_publication p ON p.oid = r.prpubid
		JOIN pg_class c ON c.oid = r.prrelid
		JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE p.pubname = $1 AND n.nspname || '.' || c.relname = ANY ($2::text[])`,
		publication, tables).Scan(&listed)
	if err != nil {
		return fmt.Errorf("read the tables of publication %q: %w", publication, err)
	}
	if len(listed) == 0 {
		return nil
	}
	sql := fmt.Sprintf("ALTER PUBLICATION %s DROP TABLE %s", pgx.Identifier{publication}.Sanitize(), strings.Join(listed, ", "))
	if _, err := cat.Exec(ctx, sql); err != nil {
		return fmt.Errorf("drop %s from publication %q: its changes are decoded and dropped meanwhile; run as the publication's owner: %s; (%w)", strings.Join(listed, ", "), publication, sql, err)
	}
	for _, t := range listed {
		log.Info("dropped a table no longer configured from the publication", "publication", publication, "table", t)
	}
	return nil
}

// ensureSlot makes sure the slot exists, can be used and has kept its WAL.
// fresh says why the slot is new (then the index needs a rescan); confirmed
// is the slot's confirmed position.
func (s *Stream) ensureSlot(ctx context.Context, cat *pgx.Conn, conn *pgconn.PgConn, dbName string) (fresh string, confirmed pglogrepl.LSN, err error) {
	var (
		plugin, database, walStatus string
		active                      bool
		pid                         *int32
		flushed                     *string
	)
	err = cat.QueryRow(ctx, `
		SELECT coalesce(plugin, ''), coalesce(database, ''), active, active_pid, coalesce(wal_status, ''), confirmed_flush_lsn::text
		FROM pg_replication_slots WHERE slot_name = $1`, s.cfg.Slot).Scan(&plugin, &database, &active, &pid, &walStatus, &flushed)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return s.createSlot(ctx, conn, "the replication slot was created")
	case err == nil && s.cfg.Temporary:
		return "", 0, fmt.Errorf("replication slot %q already exists: is another dry run reading it? Stop it, or set replication.slot to another name", s.cfg.Slot)
	case err != nil:
		return "", 0, fmt.Errorf("look for replication slot %q: %w", s.cfg.Slot, err)
	}
	if plugin != "pgoutput" || database != dbName {
		return "", 0, fmt.Errorf("replication slot %q belongs to another database or output plugin (%s, %s): set replication.slot to another name: %w",
			s.cfg.Slot, database, plugin, ErrSetup)
	}
	if active {
		who := "another process"
		if pid != nil {
			who = fmt.Sprintf("process %d", *pid)
		}
		return "", 0, fmt.Errorf("replication slot %q is in use by %s: stop the other consumer, or set replication.slot to another name", s.cfg.Slot, who)
	}
	if walStatus == "lost" {
		s.log.Warn("the replication slot lost WAL it needed (wal_status lost); dropping and recreating it, then rescanning", "slot", s.cfg.Slot)
		if err := pglogrepl.DropReplicationSlot(ctx, conn, s.cfg.Slot, pglogrepl.DropReplicationSlotOptions{}); err != nil {
			return "", 0, fmt.Errorf("drop lost replication slot %q: %w", s.cfg.Slot, err)
		}
		return s.createSlot(ctx, conn, "the replication slot had lost WAL and was recreated")
	}
	if why := s.replace; why != "" {
		s.log.Warn("the replication slot cannot go on; dropping and recreating it, then rescanning", "slot", s.cfg.Slot, "reason", why)
		if err := pglogrepl.DropReplicationSlot(ctx, conn, s.cfg.Slot, pglogrepl.DropReplicationSlotOptions{}); err != nil {
			return "", 0, fmt.Errorf("drop replication slot %q: %w", s.cfg.Slot, err)
		}
		s.replace = ""
		return s.createSlot(ctx, conn, why)
	}
	if flushed != nil {
		if confirmed, err = pglogrepl.ParseLSN(*flushed); err != nil {
			return "", 0, fmt.Errorf("read the slot's position: %w", err)
		}
	}
	return "", confirmed, nil
}

func (s *Stream) createSlot(ctx context.Context, conn *pgconn.PgConn, why string) (string, pglogrepl.LSN, error) {
	res, err := pglogrepl.CreateReplicationSlot(ctx, conn, s.cfg.Slot, "pgoutput",
		pglogrepl.CreateReplicationSlotOptions{Mode: pglogrepl.LogicalReplication, SnapshotAction: "NOEXPORT_SNAPSHOT", Temporary: s.cfg.Temporary})
	if err != nil {
		return "", 0, fmt.Errorf("create replication slot %q: %w", s.cfg.Slot, err)
	}
	at, err := pglogrepl.ParseLSN(res.ConsistentPoint)
	if err != nil {
		return "", 0, fmt.Errorf("read the new slot's position: %w", err)
	}
	s.log.Info("created replication slot", "slot", s.cfg.Slot, "at", at)
	s.replace = ""
	return why, at, nil
}

// loop reads one replication connection and wires what it reads: the
// decoder tells what each message means, the applier brings it into the
// index, the acker tells the server what the index holds.
type loop struct {
	s     *Stream
	conn  *pgconn.PgConn
	ctx   context.Context
	dec   *decoder
	apply *applier
	ack   *acker

	lastMsg    time.Time // when the server last sent anything, for the watchdog
	nextStatus time.Time // when the committed position is reported next
}

// newLoop reads a connection from start, reporting through send; the
// index was last rescanned at rescannedAt.
func (s *Stream) newLoop(ctx context.Context, send func(pglogrepl.LSN, bool) error, origin string, start uint64, rescannedAt time.Time) *loop {
	ack := &acker{send: send, complete: start, committed: start}
	return &loop{
		s: s, ctx: ctx, ack: ack,
		dec: newDecoder(s.cfg.tables(), s.cfg.Deleted != nil, s.log),
		apply: &applier{
			idx: s.idx, rescan: s.rescan, deliver: s.cfg.Deleted, observer: s.cfg.Observer, log: s.log,
			ack: ack, origin: origin, statusEvery: s.cfg.StatusInterval, ctx: ctx, rescannedAt: rescannedAt,
		},
	}
}

func (l *loop) run() error {
	stop := context.AfterFunc(l.ctx, func() { _ = l.conn.Conn().SetReadDeadline(time.Now()) })
	defer stop()
	defer l.apply.abandonRescan()
	l.lastMsg = time.Now()
	l.nextStatus = time.Now() // report at once: the server then knows where we stand
	// The read deadline moves only when a timer does, not with every
	// message: the watchdog is checked at the next poll.
	pollAt := time.Now().Add(pollEvery)
	var deadline time.Time
	for {
		now := time.Now()
		if l.ctx.Err() != nil {
			return l.shutdown()
		}
		if err := l.timers(now); err != nil {
			return err
		}
		if !now.Before(pollAt) {
			pollAt = now.Add(pollEvery)
		}
		want := earliest(l.nextStatus, pollAt, l.apply.flushAt)
		if !want.Equal(deadline) {
			if err := l.conn.Conn().SetReadDeadline(want); err != nil {
				return fmt.Errorf("set read deadline: %w", err)
			}
			deadline = want
		}
		msg, err := l.conn.ReceiveMessage(context.Background())
		if pgconn.Timeout(err) {
			deadline = time.Time{}
			continue
		}
		if err != nil {
			return fmt.Errorf("receive: %w", err)
		}
		l.lastMsg = time.Now()
		switch msg := msg.(type) {
		case *pgproto3.CopyData:
			if err := l.handle(msg.Data); err != nil {
				return err
			}
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("%w: %w", errStreamEnded, pgconn.ErrorResponseToPgError(msg))
		case *pgproto3.CopyDone:
			return errors.New("the server ended replication")
		}
	}
}

// timers does what is due at now: a status report, the watchdog, a flush
// of the pending changes, a periodic rescan.
func (l *loop) timers(now time.Time) error {
	cfg := l.s.cfg
	if !now.Before(l.nextStatus) {
		if err := l.apply.report(true); err != nil {
			return err
		}
		l.nextStatus = now.Add(cfg.StatusInterval)
	}
	if now.Sub(l.lastMsg) > cfg.Watchdog {
		return fmt.Errorf("no message from the server for %s: taking the connection for dead", cfg.Watchdog)
	}
	if !l.apply.flushAt.IsZero() && !now.Before(l.apply.flushAt) {
		if err := l.apply.flush(); err != nil {
			return err
		}
	}
	if !l.ack.inTx && cfg.RescanEvery > 0 && now.Sub(l.apply.rescannedAt) >= cfg.RescanEvery {
		l.apply.startRescan("periodic rescan", RescanPeriodic)
		if err := l.apply.finishRescan(l.ack.complete); err != nil {
			return err
		}
		l.lastMsg = time.Now() // the connection was not read meanwhile: the silence was ours
	}
	return nil
}

// earliest returns the earliest of times that are set.
func earliest(times ...time.Time) time.Time {
	var first time.Time
	for _, t := range times {
		if !t.IsZero() && (first.IsZero() || t.Before(first)) {
			first = t
		}
	}
	return first
}

// handle takes the data of one CopyData message.
func (l *loop) handle(data []byte) error {
	if len(data) == 0 {
		return nil
	}
	switch data[0] {
	case pglogrepl.PrimaryKeepaliveMessageByteID:
		k, err := pglogrepl.ParsePrimaryKeepaliveMessage(data[1:])
		if err != nil {
			return fmt.Errorf("parse keepalive: %w", err)
		}
		l.ack.keepalive(uint64(k.ServerWALEnd))
		if k.ReplyRequested {
			return l.apply.report(false)
		}
	case pglogrepl.XLogDataByteID:
		xld, err := pglogrepl.ParseXLogData(data[1:])
		if err != nil {
			return fmt.Errorf("parse WAL data: %w", err)
		}
		m, err := l.dec.decode(xld.WALData, l.apply.skipping)
		if err != nil {
			return err
		}
		switch m.kind {
		case msgBegin:
			l.ack.begin()
			l.apply.begin(m.at)
		case msgRow:
			return l.apply.row(m)
		case msgTruncate:
			l.apply.truncate()
		case msgHeartbeat:
			l.apply.heartbeat(m.at)
		case msgCommit:
			l.ack.commit(m.end)
			l.s.lastCommit.Store(time.Now().UnixNano())
			err := l.apply.commit(m.at)
			l.lastMsg = time.Now() // a rescan waited for did not read the connection: the silence was ours
			return err
		}
	}
	return nil
}

// shutdown writes what was received and reports it, so a restart does not
// replay it.
func (l *loop) shutdown() error {
	_ = l.conn.Conn().SetDeadline(time.Now().Add(5 * time.Second))
	if err := l.apply.stop(); err != nil {
		return err
	}
	if err := l.ack.status(false); err != nil {
		l.s.log.Warn("report the last position at shutdown", "error", err)
	}
	l.s.log.Info("replication stopped", "confirmed", pglogrepl.LSN(l.ack.committed))
	return nil
}
