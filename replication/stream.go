// Package replication tails the attachment table through a logical
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
	Schema      string
	Table       string
	ID          string // column names
	Key         string
	IsActive    string
	DeletedAt   string
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

// DeletedRow is a row deleted outright, as its DELETE's old image shows it.
type DeletedRow struct {
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

// RescanFunc rebuilds the index from the database (it empties it first).
type RescanFunc func(ctx context.Context) error

// Stream tails the table into the index.
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
	origin := fmt.Sprintf("%s/%s/%s/%s.%s", sys.SystemID, sys.DBName, s.cfg.Slot, s.cfg.Schema, s.cfg.Table)

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
	l := &loop{s: s, conn: conn, origin: origin, committed: start, complete: start, rels: map[uint32]*relation{}, rescannedAt: st.RescannedAt}
	err = l.run(ctx)
	s.progressed = l.committed > start
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
	// Publishing a table without a replica identity makes every UPDATE and
	// DELETE on it fail, and without the id in it a DELETE cannot be told.
	// A partitioned table's rows live in its partitions, each with its own
	// replica identity: every one is checked (pg_partition_tree lists a
	// plain table alone).
	var exists bool
	err = cat.QueryRow(ctx, `
		SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		               WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p'))`,
		s.cfg.Schema, s.cfg.Table).Scan(&exists)
	if err != nil {
		return fmt.Errorf("look for the table: %w", err)
	}
	if !exists {
		return fmt.Errorf("table %s.%s does not exist: %w", s.cfg.Schema, s.cfg.Table, ErrSetup)
	}
	table := pgx.Identifier{s.cfg.Schema, s.cfg.Table}.Sanitize()
	rows, err := cat.Query(ctx, `
		SELECT c.oid::regclass::text
		FROM pg_partition_tree($1::regclass) AS t
		JOIN pg_class c ON c.oid = t.relid
		WHERE t.isleaf AND c.relreplident <> 'f'
		  AND NOT EXISTS (SELECT 1 FROM pg_index i
		                  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
		                  WHERE i.indrelid = c.oid AND a.attname = $2
		                    AND ((c.relreplident = 'd' AND i.indisprimary) OR (c.relreplident = 'i' AND i.indisreplident)))
		ORDER BY 1`, table, s.cfg.ID)
	if err != nil {
		return fmt.Errorf("read the table's replica identity: %w", err)
	}
	lacking, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("read the table's replica identity: %w", err)
	}
	if len(lacking) > 0 {
		return fmt.Errorf("the replica identity of %s does not include %q: give it that primary key, or ALTER TABLE ... REPLICA IDENTITY FULL: %w",
			strings.Join(lacking, ", "), s.cfg.ID, ErrSetup)
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

// EnsurePublication creates the publication of the table alone when it is
// missing, and refuses one that does not publish the table's changes. The
// changes of a partitioned table's partitions are published as the table's
// own (publish_via_partition_root), so the stream knows them by its name.
// Only the table's owner can create it: `reconcile migrate` does, and the
// stream, run by a role of fewer rights, finds it there.
func EnsurePublication(ctx context.Context, cat Catalog, cfg Config, log *slog.Logger) error {
	var exists, all, hasTable, viaRoot, partitioned bool
	err := cat.QueryRow(ctx, `
		SELECT count(*) > 0,
		       coalesce(bool_and(p.pubinsert AND p.pubupdate AND p.pubdelete AND p.pubtruncate), false),
		       EXISTS (SELECT 1 FROM pg_publication_tables t WHERE t.pubname = $1 AND t.schemaname = $2 AND t.tablename = $3),
		       coalesce(bool_and(p.pubviaroot), false),
		       EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		               WHERE n.nspname = $2 AND c.relname = $3 AND c.relkind = 'p')
		FROM pg_publication p WHERE p.pubname = $1`, cfg.Publication, cfg.Schema, cfg.Table).Scan(&exists, &all, &hasTable, &viaRoot, &partitioned)
	if err != nil {
		return fmt.Errorf("look for publication %q: %w", cfg.Publication, err)
	}
	table := pgx.Identifier{cfg.Schema, cfg.Table}.Sanitize()
	if !exists {
		sql := fmt.Sprintf("CREATE PUBLICATION %s FOR TABLE %s WITH (publish_via_partition_root = true)", pgx.Identifier{cfg.Publication}.Sanitize(), table)
		if _, err := cat.Exec(ctx, sql); err != nil {
			return fmt.Errorf("publication %q is missing and cannot be created by this role (%w): run `reconcile migrate` as the table's owner, which creates it: %w",
				cfg.Publication, err, ErrSetup)
		}
		log.Info("created publication", "publication", cfg.Publication, "table", table)
		return nil
	}
	// A row filter, or a column list without one of reconcile's columns
	// (PostgreSQL 15 and later; to_jsonb reads the columns where they
	// exist).
	var filtered bool
	err = cat.QueryRow(ctx, `
		SELECT EXISTS (
			SELECT 1 FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid
			WHERE p.pubname = $1 AND r.prrelid = $2::regclass
			  AND (to_jsonb(r) ->> 'prqual' IS NOT NULL OR
			       (to_jsonb(r) ->> 'prattrs' IS NOT NULL AND NOT
			        (SELECT array_agg(a.attnum) FROM pg_attribute a WHERE a.attrelid = $2::regclass AND a.attname = ANY ($3::text[]))
			        <@ ARRAY(SELECT jsonb_array_elements_text(to_jsonb(r) -> 'prattrs'))::int2[])))`,
		cfg.Publication, table, []string{cfg.ID, cfg.Key, cfg.IsActive, cfg.DeletedAt}).Scan(&filtered)
	if err != nil {
		return fmt.Errorf("read publication %q: %w", cfg.Publication, err)
	}
	if !hasTable || !all || filtered || (partitioned && !viaRoot) {
		return fmt.Errorf("publication %q exists but does not publish every change and column of %s under its own name: set replication.publication to a new name and run `reconcile migrate`, which creates it: %w",
			cfg.Publication, table, ErrSetup)
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

// loop reads one replication connection.
type loop struct {
	s      *Stream
	conn   *pgconn.PgConn
	origin string
	rels   map[uint32]*relation // per connection: cleared on reconnect

	ctx       context.Context
	pending   []index.Change // not yet in the index
	deleted   []DeletedRow   // rows deleted outright, not yet handed to Config.Deleted
	txAt      time.Time      // commit time of the transaction being received
	inTx      bool
	complete  uint64    // the end of the last whole transaction seen, or a keepalive's position between transactions
	committed uint64    // what the index holds: the only position reported
	seenAt    time.Time // commit time of the last whole transaction seen, or a heartbeat's time after it
	flushAt   time.Time

	lastMsg     time.Time  // when the server last sent anything, for the watchdog
	txChanges   int        // changes of the table in the transaction being received
	skipping    bool       // the transaction is too large to apply: a rescan covers it
	rescanning  chan error // a rescan running in the background, when not nil
	stopRescan  context.CancelFunc
	truncated   bool // the transaction truncated the table: rescan at its commit
	rescannedAt time.Time
}

func (l *loop) run(ctx context.Context) error {
	l.ctx = ctx
	stop := context.AfterFunc(ctx, func() { _ = l.conn.Conn().SetReadDeadline(time.Now()) })
	defer stop()
	defer l.abandonRescan()
	cfg := l.s.cfg
	l.lastMsg = time.Now()
	nextStatus := time.Now() // report at once: the server then knows where we stand
	// The read deadline moves only when a timer does, not with every
	// message: the watchdog is checked at the next poll.
	pollAt := time.Now().Add(pollEvery)
	var deadline time.Time
	for {
		now := time.Now()
		if ctx.Err() != nil {
			return l.shutdown()
		}
		if !now.Before(nextStatus) {
			if err := l.report(true); err != nil {
				return err
			}
			nextStatus = now.Add(cfg.StatusInterval)
		}
		if now.Sub(l.lastMsg) > cfg.Watchdog {
			return fmt.Errorf("no message from the server for %s: taking the connection for dead", cfg.Watchdog)
		}
		if !l.flushAt.IsZero() && !now.Before(l.flushAt) {
			if err := l.flush(); err != nil {
				return err
			}
		}
		if !l.inTx && cfg.RescanEvery > 0 && now.Sub(l.rescannedAt) >= cfg.RescanEvery {
			l.startRescan(ctx, "periodic rescan", RescanPeriodic)
			if err := l.finishRescan(l.complete); err != nil {
				return err
			}
		}

		if !now.Before(pollAt) {
			pollAt = now.Add(pollEvery)
		}
		want := earliest(nextStatus, pollAt, l.flushAt)
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
			if err := l.handle(ctx, msg.Data); err != nil {
				return err
			}
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("%w: %w", errStreamEnded, pgconn.ErrorResponseToPgError(msg))
		case *pgproto3.CopyDone:
			return errors.New("the server ended replication")
		}
	}
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

func (l *loop) handle(ctx context.Context, data []byte) error {
	if len(data) == 0 {
		return nil
	}
	switch data[0] {
	case pglogrepl.PrimaryKeepaliveMessageByteID:
		k, err := pglogrepl.ParsePrimaryKeepaliveMessage(data[1:])
		if err != nil {
			return fmt.Errorf("parse keepalive: %w", err)
		}
		// Between transactions the server has sent everything before this
		// position that concerns the table: it can be acknowledged, once
		// the index has it as its checkpoint, so the slot lets WAL go.
		if !l.inTx && uint64(k.ServerWALEnd) > l.complete {
			l.complete = uint64(k.ServerWALEnd)
		}
		if k.ReplyRequested {
			return l.report(false)
		}
		return nil
	case pglogrepl.XLogDataByteID:
		xld, err := pglogrepl.ParseXLogData(data[1:])
		if err != nil {
			return fmt.Errorf("parse WAL data: %w", err)
		}
		if l.skipping && len(xld.WALData) > 0 {
			switch pglogrepl.MessageType(xld.WALData[0]) {
			case pglogrepl.MessageTypeInsert, pglogrepl.MessageTypeUpdate:
				return nil // the rescan covers it
			case pglogrepl.MessageTypeDelete:
				if l.s.cfg.Deleted == nil {
					return nil
				}
			}
		}
		m, err := parseMessage(xld.WALData)
		if err != nil {
			return fmt.Errorf("parse logical message: %w", err)
		}
		if d, ok := m.(*pglogrepl.DeleteMessage); ok && l.skipping {
			// The rescan covers the index, not the files of rows gone.
			return l.noteDeleted(d)
		}
		return l.apply(ctx, m)
	}
	return nil
}

func (l *loop) apply(ctx context.Context, m pglogrepl.Message) error {
	var (
		c   index.Change
		err error
		ok  bool
	)
	switch m := m.(type) {
	case *pglogrepl.RelationMessage:
		if m.Namespace != l.s.cfg.Schema || m.RelationName != l.s.cfg.Table {
			l.rels[m.RelationID] = nil // another table: its changes are dropped
			return nil
		}
		rel, err := l.s.newRelation(m)
		if err != nil {
			return err
		}
		l.rels[m.RelationID] = rel
		return nil
	case *pglogrepl.BeginMessage:
		l.inTx, l.txChanges, l.txAt = true, 0, m.CommitTime
		return nil
	case *pglogrepl.LogicalDecodingMessage:
		if !m.Transactional && m.Prefix == heartbeatPrefix {
			if nanos, err := strconv.ParseInt(string(m.Content), 10, 64); err == nil {
				l.seenAt = time.Unix(0, nanos)
			}
		}
		return nil
	case *pglogrepl.CommitMessage:
		l.inTx = false
		l.seenAt = m.CommitTime
		l.s.lastCommit.Store(time.Now().UnixNano())
		l.complete = max(l.complete, uint64(m.TransactionEndLSN))
		if l.truncated && l.rescanning == nil {
			l.startRescan(ctx, "the table was truncated (the files of its rows stay until `reconcile orphans`)", RescanTruncate)
		}
		l.truncated, l.skipping = false, false
		if l.rescanning != nil {
			return l.finishRescan(l.complete)
		}
		if len(l.pending) > 0 && l.flushAt.IsZero() {
			l.flushAt = time.Now().Add(flushDelay)
		}
		return nil
	case *pglogrepl.InsertMessage:
		if rel := l.rels[m.RelationID]; rel != nil {
			c, err = rel.rowChange(m.Tuple)
			ok = true
		}
	case *pglogrepl.UpdateMessage:
		if rel := l.rels[m.RelationID]; rel != nil {
			c, err = rel.rowChange(m.NewTuple)
			ok = true
			// An update of the id itself carries the old one: forget it.
			if m.OldTuple != nil && (err == nil || errors.Is(err, errUnreadable)) {
				if old, oerr := rel.removal(m.OldTuple); oerr == nil && old.Entry.ID != c.Entry.ID {
					l.pending = append(l.pending, old)
				}
			}
		}
	case *pglogrepl.DeleteMessage:
		if rel := l.rels[m.RelationID]; rel != nil {
			c, err = rel.removal(m.OldTuple)
			ok = true
			if err == nil {
				err = l.noteDeleted(m)
			}
		}
	case *pglogrepl.TruncateMessage:
		for _, id := range m.RelationIDs {
			if l.rels[id] != nil {
				l.truncated = true
			}
		}
	}
	if errors.Is(err, errUnreadable) {
		// It would stop the stream for good, replaying the same change:
		// the row is left out of the index instead, and never purged.
		l.s.log.Warn("a soft-deleted row's deleted_at cannot be read; the row is left alone", "error", err)
		err = nil
	}
	if err != nil {
		return fmt.Errorf("decode change: %w", err)
	}
	if !ok {
		return nil
	}
	if l.txChanges++; l.txChanges > rescanOver {
		// The server sends a transaction only once it has committed: the
		// table already holds all of it, and a rescan can start now,
		// while the rest of it is received and dropped.
		l.skipping = true
		if l.rescanning == nil {
			l.startRescan(ctx, fmt.Sprintf("a transaction changes more than %d rows", rescanOver), RescanLargeTransaction)
		}
		return nil
	}
	l.pending = append(l.pending, c)
	if len(l.pending) >= applyChunk {
		return l.flush()
	}
	return nil
}

// noteDeleted keeps a row deleted outright for Config.Deleted, when its
// DELETE carries its key.
func (l *loop) noteDeleted(m *pglogrepl.DeleteMessage) error {
	rel := l.rels[m.RelationID]
	if rel == nil || l.s.cfg.Deleted == nil {
		return nil
	}
	if m.OldTupleType == pglogrepl.DeleteMessageTupleTypeKey && !rel.keyOnlyWarned {
		// A partition made after `migrate` has the default identity.
		rel.keyOnlyWarned = true
		l.s.log.Warn("a DELETE of the table carries only its primary key (its replica identity, or a partition's, is not FULL): the files of rows deleted outright there stay until `reconcile orphans`; run `reconcile migrate`")
	}
	d, ok := rel.deleted(m.OldTuple)
	if !ok {
		return nil
	}
	d.At = l.txAt
	l.deleted = append(l.deleted, d)
	if len(l.deleted) >= applyChunk {
		return l.handDeleted()
	}
	return nil
}

// handDeleted hands the rows deleted outright to Config.Deleted. It comes
// before the index records any position past their transaction.
func (l *loop) handDeleted() error {
	if len(l.deleted) == 0 {
		return nil
	}
	if err := l.s.cfg.Deleted(l.ctx, l.deleted); err != nil {
		return fmt.Errorf("hand over rows deleted outright: %w", err)
	}
	clear(l.deleted)
	l.deleted = l.deleted[:0]
	return nil
}

// flush commits the pending changes to the index and reports the new
// position at once, so the server can let go of their WAL.
func (l *loop) flush() error {
	wrote, err := l.commit()
	if err != nil || !wrote {
		return err
	}
	return l.send(false)
}

// commit writes the pending changes and the checkpoint of the last whole
// transaction among them in one index transaction. Changes of a
// transaction not yet complete go in too: the checkpoint stays before it,
// so after a crash it is replayed, and replaying is harmless.
func (l *loop) commit() (bool, error) {
	l.flushAt = time.Time{}
	if err := l.handDeleted(); err != nil {
		return false, err
	}
	if l.rescanning != nil {
		// The changes dropped for the rescan are only covered once it is
		// done: until then the checkpoint stays where it is.
		return false, nil
	}
	if len(l.pending) == 0 && l.complete == l.committed {
		l.s.cfg.Observer.Applied(l.seenAt)
		return false, nil
	}
	if err := l.s.idx.Apply(l.pending, l.complete); err != nil {
		return false, err
	}
	clear(l.pending)
	l.pending = l.pending[:0]
	l.committed = l.complete
	l.s.cfg.Observer.Applied(l.seenAt)
	return true, nil
}

// report tells the server what the index holds, after committing what can
// be committed without splitting a transaction.
func (l *loop) report(askReply bool) error {
	// An index set aside meanwhile (corrupt pages met by the timer) is
	// empty: on a quiet table no change would bring that to light.
	if l.rescanning == nil {
		st, err := l.s.idx.State()
		if err != nil {
			return err
		}
		if st.Origin == "" {
			return fmt.Errorf("the index was emptied while streaming: %w", index.ErrNotFilled)
		}
	}
	if !l.inTx {
		if _, err := l.commit(); err != nil {
			return err
		}
	}
	return l.send(askReply)
}

// send reports the committed position: the only one the server ever hears.
func (l *loop) send(askReply bool) error {
	pos := pglogrepl.LSN(l.committed)
	err := pglogrepl.SendStandbyStatusUpdate(context.Background(), l.conn,
		pglogrepl.StandbyStatusUpdate{WALWritePosition: pos, WALFlushPosition: pos, WALApplyPosition: pos, ReplyRequested: askReply})
	if err != nil {
		return fmt.Errorf("send standby status: %w", err)
	}
	return nil
}

// startRescan starts rebuilding the index from the table in the
// background. The changes received so far are dropped: the table holds
// them (the rescan waits until every committed transaction is visible to
// it).
func (l *loop) startRescan(ctx context.Context, reason, kind string) {
	clear(l.pending)
	l.pending, l.flushAt = l.pending[:0], time.Time{}
	l.s.log.Info("rescanning the table into the index", "reason", reason)
	l.s.cfg.Observer.Rescanned(kind)
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- l.s.rescan(ctx) }()
	l.rescanning, l.stopRescan = done, cancel
}

// abandonRescan stops a rescan the loop will not wait for: the index must
// be left alone before the next session or the shutdown.
func (l *loop) abandonRescan() {
	if l.rescanning != nil {
		l.stopRescan()
		<-l.rescanning
		l.rescanning = nil
	}
}

// finishRescan waits for the rescan, then makes at, a position it covers,
// the checkpoint. Until then the server hears the old position, so that a
// crash meanwhile replays what the rescan was to cover. The connection is
// not read meanwhile, only reported on, so the server keeps it.
func (l *loop) finishRescan(at uint64) error {
	done := l.rescanning
	defer l.stopRescan()
	l.rescanning = nil
	tick := time.NewTicker(l.s.cfg.StatusInterval)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			// The connection was not read meanwhile: the silence was ours.
			l.lastMsg = time.Now()
			if err != nil {
				return err
			}
			l.rescannedAt = time.Now()
			if err := l.handDeleted(); err != nil {
				return err
			}
			if err := l.s.idx.Rescanned(l.origin, at, l.rescannedAt); err != nil {
				return err
			}
			l.committed, l.complete = at, max(l.complete, at)
			return l.send(false)
		case <-tick.C:
			if err := l.send(false); err != nil {
				l.stopRescan()
				<-done
				return err
			}
		}
	}
}

// shutdown writes what was received and reports it, so a restart does not
// replay it.
func (l *loop) shutdown() error {
	_ = l.conn.Conn().SetDeadline(time.Now().Add(5 * time.Second))
	// The rows deleted outright go to Config.Deleted before the index
	// records their position: on the run's context, now ended, they would
	// fail the stop.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(l.ctx), 5*time.Second)
	defer cancel()
	l.ctx = ctx
	if _, err := l.commit(); err != nil {
		return err
	}
	if err := l.send(false); err != nil {
		l.s.log.Warn("report the last position at shutdown", "error", err)
	}
	l.s.log.Info("replication stopped", "confirmed", pglogrepl.LSN(l.committed))
	return nil
}
