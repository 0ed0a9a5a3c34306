package reconciler

import (
	"fmt"
	"strings"

	"github.com/reconcile/reconcile/internal/derived"
)

// queries are the statements of one table, built once from quoted
// identifiers; nothing from configuration is spliced in unquoted.
type queries struct {
	rescanByID, rescanByDue, audit, inconsistent, purge, claimRemovals, finishRemoval, outboxPage, outboxExists string
	keysOf, stillDue, cutoff, clock, probeKeys, neighbours, dueIn, auditCount                                   string
	cutoffs, outboxStats, lockHolder                                                                            string
	lock, waitHolders, closeFence, takeHolder, unlock                                                           string
	indexValid, derivedOwners, locations, keyRange, queueDeleted, uncleanKeys, cutoffsAt, outboxCurrent         string
	notFull, ownsUnder                                                                                          string
}

func buildQueries(t Table, peers []Table, types columnTypes) queries {
	// The clock in deleted_at's own terms. A timestamp without time zone
	// holds wall times of the application's zone (Django's TIME_ZONE, or
	// else the session's), which read back as if they were UTC, as the
	// index holds them; comparing them with an instant would be off by the
	// zone's offset.
	//
	// The cutoff is taken from the instant (now() - retention), then given
	// in the zone's wall time: subtracting the retention from a wall time
	// would purge an hour early across a change to summer time.
	// In the session's zone a cast converts by the zone's rules; AT TIME
	// ZONE takes a name that is also an abbreviation (CET) for a fixed
	// offset, which table.check refuses for table.time_zone.
	now := "now()"
	cutoff := func(param string) string { return "(now() - " + param + " * interval '1 microsecond')" }
	// wall turns an instant into the column's wall time; instant turns the
	// column's wall time back into an instant.
	wall := func(ts string) string { return ts }
	instant := func(ts string) string { return ts }
	switch {
	case types.naiveTime && t.TimeZone != "":
		zone := literal(t.TimeZone)
		wall = func(ts string) string { return "(" + ts + " AT TIME ZONE " + zone + ")" }
		instant = wall // AT TIME ZONE goes both ways
	case types.naiveTime:
		wall = func(ts string) string { return "(" + ts + ")::timestamp" }
		instant = func(ts string) string { return "(" + ts + ")::timestamptz" }
	}
	now = wall(now)
	dueCutoff := cutoff
	cutoff = func(param string) string { return wall(dueCutoff(param)) }

	// The advisory locks. The lock makes one process the table's purger; its
	// session also holds a key of its own, the holder key with its backend
	// pid. A statement that deletes rows or claims files for removal passes
	// the fence only while that session holds them: it takes the fence's
	// key shared for its transaction, then tries the holder key shared,
	// which fails only while that session holds it (the CASE keeps the
	// order). A new holder, the lock taken, waits for the holder keys that
	// other sessions still hold (one that ends releases its keys one by
	// one), then takes the fence's key exclusively once (closeFence): it so
	// waits for every statement of the previous holder that passed the
	// fence, and those after fail. Only a new holder takes the fence's key
	// exclusively, so a statement that cannot take it shared has lost the
	// lock and need not wait. $pid is the lock session's backend; 0, a
	// reconciler that never took the lock, passes while no session holds
	// the lock, and keeps it from being taken until it commits.
	lockKey := "hashtextextended(" + literal(t.lockName()) + ", 0)"
	fenceKey := "hashtextextended(" + literal("reconcile fence:"+t.qualified()) + ", 0)"
	holderKey := "hashtext(" + literal("reconcile holder:"+t.qualified()) + ")"
	fence := func(pid string) string {
		return `fence AS (
				SELECT CASE
					WHEN NOT pg_try_advisory_xact_lock_shared(` + fenceKey + `) THEN false
					WHEN ` + pid + ` = 0 THEN pg_try_advisory_xact_lock_shared(` + lockKey + `)
					ELSE NOT pg_try_advisory_xact_lock_shared(` + holderKey + `, ` + pid + `)
				END AS held
			)`
	}
	r := strings.NewReplacer(
		"{NOW}", now,
		"{CUTOFF1}", cutoff("$1"),
		"{CUTOFF2}", cutoff("$2"),
		"{CUTOFF3}", cutoff("$3"),
		"{T}", t.qualified(),
		"{OUTBOX}", t.outbox(),
		"{ID}", quote(t.ID),
		"{IDTYPE}", types.id, // from the catalog's format_type
		"{NAME}", quote(t.OriginalFilename),
		"{SOFT}", t.softDeleted(""),
		"{SOFT_T}", t.softDeleted("t."),
		"{KEYS}", t.joinedKeys(""),
		"{KEYS_T}", t.joinedKeys("t."),
		"{KEYLIST}", keyList(t),
		"{DELETED}", quote(t.DeletedAt),
		// The stream's decoder holds to the same range.
		"{DATED}", "("+quote(t.DeletedAt)+" > '1700-01-01 00:00:00+00' AND "+quote(t.DeletedAt)+" < '2260-01-01 00:00:00+00')",
		"{FENCE4}", fence("$4"),
		"{FENCE2}", fence("$2"),
	)
	return queries{
		// Every soft-deleted row, twice: in the byte order of each index
		// bucket (COLLATE "C" compares bytes, as bbolt does). A deleted_at
		// the index cannot order (±infinity, before 1700, after 2260) is no
		// time: such rows are listed as inconsistent and never purged.
		rescanByID: r.Replace(`
			SELECT {ID}::text, {KEYS}, {DELETED}
			FROM {T}
			WHERE {SOFT} AND {DATED}
			ORDER BY {ID}::text COLLATE "C"`),
		rescanByDue: r.Replace(`
			SELECT {ID}::text, '', {DELETED}
			FROM {T}
			WHERE {SOFT} AND {DATED}
			ORDER BY {DELETED}, {ID}::text COLLATE "C"`),

		audit: r.Replace(`
			SELECT {ID}::text, {KEYLIST}, {KEYS}, coalesce({NAME}::text, ''), {DELETED}
			FROM {T}
			WHERE {SOFT} AND {DELETED} <= $1 AND {DATED}
			ORDER BY {DELETED}, {ID}`),
		auditCount: r.Replace(`
			SELECT count(*) FROM {T}
			WHERE {SOFT} AND {DELETED} <= $1 AND {DATED}`),

		inconsistent: r.Replace(`
			SELECT {ID}::text, {KEYLIST}, coalesce({NAME}::text, '')
			FROM {T}
			WHERE {SOFT} AND ({DELETED} IS NULL OR NOT {DATED})
			ORDER BY {ID}`),

		// One statement, so one transaction: delete the rows the database
		// still holds as due (and still pointing at the keys that were
		// checked), and queue each freed key in the outbox. A key is freed
		// when no row outside this very deletion uses it, in any key column
		// of this table or of the other tables on the same storage: inside
		// the statement the deleted rows are still visible, so they are
		// excluded by id. The IN (subquery) forms run as hashed subplans,
		// keeping a batch linear in its size. A row without a key (NULL or
		// '', a FileField with blank=True) has no file: it is deleted and
		// queues nothing. A key the outbox holds already (a removal that
		// failed, a row deleted outright) counts as queued now: a file
		// written before is this row's, not a new upload. Behind the fence: when this process no longer
		// holds the lock nothing is deleted, and the only row returned has
		// false in its first column. A row comes back once per file, or
		// once with '' when it has none. $1 ids, $2 keys as the index
		// holds them, $3 retention in microseconds, $4 the lock session's
		// pid.
		purge: r.Replace(`
			WITH {FENCE4}, candidate AS (
				SELECT c.id, c.key FROM unnest($1::text[], $2::text[]) AS c(id, key)
			), purged AS (
				DELETE FROM {T} t
				USING candidate c
				WHERE t.{ID} = c.id::{IDTYPE}
				  AND {KEYS_T} = c.key
				  AND {SOFT_T}
				  AND t.{DELETED} <= {CUTOFF3}
				  AND (SELECT held FROM fence)
				RETURNING t.{ID} AS pid, t.{ID}::text AS id, ` + t.keyArray("t.") + ` AS keys, coalesce(t.{NAME}::text, '') AS name
			), files AS (
				SELECT DISTINCT p.pid, p.id, p.name, f.key
				FROM purged p CROSS JOIN LATERAL unnest(p.keys) AS f(key)
				WHERE f.key <> ''
			), freed AS (
				SELECT DISTINCT ON (f.key) f.key, f.id, f.name
				FROM files f
				WHERE NOT ` + used(t, peers, "f.key", "u.{ID} NOT IN (SELECT pid FROM purged)") + `
			), queued AS (
				INSERT INTO {OUTBOX} AS o (storage_key, attachment_id, original_filename)
				SELECT key, id, name FROM freed
				ON CONFLICT (storage_key) DO UPDATE SET enqueued_at = greatest(o.enqueued_at, EXCLUDED.enqueued_at)
			)
			SELECT true, p.id, coalesce(f.key, ''), p.name, coalesce(f.key IN (SELECT key FROM freed), false)
			FROM purged p LEFT JOIN files f ON f.pid = p.pid
			UNION ALL
			SELECT false, '', '', '', false FROM fence WHERE NOT held`),

		// The check made again just before the files go: a key some row
		// uses now leaves the outbox and its file stays (kept). Every key
		// still in the outbox comes back with when it was queued, by the
		// database's clock, and that clock now: a file modified since is a
		// new upload under the same name. A key no longer in the outbox is
		// not returned, and not removed, nor is one whose row was deleted
		// outright less than orphans.grace ago (not_before). The SELECT sees the outbox as it
		// was before the DELETE, in the same snapshot. Behind the fence, as
		// the purge: the only row returned then has false in its first
		// column. $1 keys, $2 the lock session's pid.
		claimRemovals: r.Replace(`
			WITH {FENCE2}, kept AS (
				DELETE FROM {OUTBOX} o
				WHERE o.storage_key = ANY($1::text[])
				  AND ` + used(t, peers, "o.storage_key", "") + `
				  AND (SELECT held FROM fence)
				RETURNING o.storage_key
			)
			SELECT true, o.storage_key, o.enqueued_at, now(), o.storage_key IN (SELECT storage_key FROM kept)
			FROM {OUTBOX} o
			WHERE o.storage_key = ANY($1::text[]) AND (SELECT held FROM fence)
			  AND (o.not_before IS NULL OR o.not_before <= now() OR o.storage_key IN (SELECT storage_key FROM kept))
			UNION ALL
			SELECT false, '', now(), now(), false FROM fence WHERE NOT held`),

		// Removed files leave the outbox; failed ones stay, with their
		// error and a later next try (exponential, capped at an hour).
		finishRemoval: r.Replace(`
			WITH removed AS (
				DELETE FROM {OUTBOX} WHERE storage_key = ANY($1::text[])
			)
			UPDATE {OUTBOX} o
			SET attempts = o.attempts + 1,
			    last_error = f.err,
			    next_attempt_at = now() + least(interval '1 hour', interval '10 seconds' * power(2, least(o.attempts, 10)))
			FROM unnest($2::text[], $3::text[]) AS f(key, err)
			WHERE o.storage_key = f.key`),

		// A page of the outbox in key order; $2 true takes entries whose
		// next try is still ahead too (a one-shot run retries everything).
		outboxPage: r.Replace(`
			SELECT storage_key FROM {OUTBOX}
			WHERE storage_key > $1 AND ($2 OR next_attempt_at <= now())
			  AND (not_before IS NULL OR not_before <= now())
			ORDER BY storage_key
			LIMIT $3`),

		outboxExists: `SELECT to_regclass($1) IS NOT NULL`,
		// The table and its partitions (a partition made after migrate)
		// whose replica identity is not FULL; $1 the table.
		notFull: `
			SELECT c.oid::regclass::text FROM pg_class c
			WHERE (c.oid = $1::regclass OR c.oid IN (SELECT relid FROM pg_partition_tree($1::regclass)))
			  AND c.relkind IN ('r', 'p') AND c.relreplident <> 'f'
			ORDER BY 1`,
		// The outbox has the columns of the last migration.
		outboxCurrent: `SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass($1) AND attname = 'not_before' AND NOT attisdropped)`,
		indexValid:    `SELECT EXISTS (SELECT 1 FROM pg_index WHERE indexrelid = to_regclass($1) AND indisvalid)`,

		derivedOwners: derivedOwners(t, peers),
		// The keys of rows deleted outright, queued to go after the grace
		// period ($4, in microseconds) from their DELETE's commit ($3),
		// which is also when they count as queued: a file written after it
		// is a new upload's. A key already queued takes the later of both:
		// its file was in use until this DELETE.
		queueDeleted: r.Replace(`
			INSERT INTO {OUTBOX} AS o (storage_key, attachment_id, enqueued_at, not_before)
			SELECT DISTINCT ON (key) key, id, at, at + $4 * interval '1 microsecond'
			FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS d(key, id, at)
			ORDER BY key, at DESC
			ON CONFLICT (storage_key) DO UPDATE
			SET enqueued_at = greatest(o.enqueued_at, EXCLUDED.enqueued_at),
			    not_before = greatest(o.not_before, EXCLUDED.not_before)`),
		locations: locations(t, peers) + " ORDER BY loc",
		// Whether a row owns a file around $1, as locations.
		ownsUnder: `SELECT EXISTS (` + locations(t, peers) + `)`,
		// The cutoff at each of some instants ($1), in deleted_at's terms, as
		// cutoff is at now(); $2 retention in microseconds.
		cutoffsAt: `SELECT ` + wall("(a - $2 * interval '1 microsecond')") + ` FROM unnest($1::timestamptz[]) WITH ORDINALITY AS u(a, o) ORDER BY o`,
		// Keys with an empty, "." or ".." element, or a leading "/": a
		// listing names their files otherwise. Those of rows deleted
		// outright within their grace too. $1 how many at most, each.
		uncleanKeys: uncleanKeys(t, peers),
		// The lowest and highest keys in byte order: the folder they share
		// is the table's by default.
		keyRange: `SELECT coalesce(min(k COLLATE "C"), ''), coalesce(max(k COLLATE "C"), '') FROM (` + eachKey(t, `SELECT {K}::text AS k FROM {T} WHERE {K} > ''`, " UNION ALL ") + `) keys`,

		// The latest deleted_at that is due now, by the database's clock
		// ($1 retention in microseconds); clock adds the time now.
		cutoff: r.Replace(`SELECT {CUTOFF1}`),
		clock:  r.Replace(`SELECT {NOW}, {CUTOFF1}`),

		// The storage keys of rows by id; $1 ids.
		keysOf: r.Replace(`
			SELECT {ID}::text, {KEYS}
			FROM {T} WHERE {ID} = ANY($1::text[]::{IDTYPE}[])`),

		// Keys of rows whose files should be in storage, for the probe that
		// tells a storage holding the table's files from an empty one (an
		// unmounted volume, a wrong prefix): the highest and the lowest keys
		// through the key index, the newest uploads and the oldest under
		// Django's dated folders. $1 how many of each.
		probeKeys: eachKey(t, `
			(SELECT {K}::text FROM {T} WHERE {K} > '' ORDER BY {K} DESC LIMIT $1)
			UNION
			(SELECT {K}::text FROM {T} WHERE {K} > '' ORDER BY {K} LIMIT $1)`, "\nUNION\n"),

		// The keys next to $1 in byte order, from other rows: a folder's
		// keys are together in byte order only (a linguistic collation
		// may ignore the '/'). No index serves that order, so this reads
		// the table: it runs only for files found missing.
		neighbours: eachKey(t, `
			(SELECT {K}::text FROM {T} WHERE {K} > '' AND {K}::text COLLATE "C" < $1 ORDER BY {K}::text COLLATE "C" DESC LIMIT 4)
			UNION
			(SELECT {K}::text FROM {T} WHERE {K}::text COLLATE "C" > $1 ORDER BY {K}::text COLLATE "C" LIMIT 4)`, "\nUNION\n"),

		// How long until a deleted_at falls due, by the database's clock:
		// $1 the deleted_at as the index holds it, $2 retention in
		// microseconds. For a column without time zone only the database
		// knows the zone's offset at that date.
		dueIn: r.Replace(`SELECT ` + instant("$1::timestamp") + ` + $2 * interval '1 microsecond' - now()`),

		// The cutoffs of the due and of the overdue rows, by the database's
		// clock; $1 retention, $2 retention plus the overdue threshold, in
		// microseconds.
		cutoffs: r.Replace(`SELECT {CUTOFF1}, {CUTOFF2}`),

		// The outbox's size, the time its oldest entry was queued, and its
		// age in seconds by the database's clock.
		// Entries of rows deleted outright count from the end of their
		// grace: until then they wait on purpose.
		outboxStats: r.Replace(`
			SELECT count(*), min(due), coalesce(extract(epoch FROM now() - min(due)), 0)::float8
			FROM (SELECT greatest(enqueued_at, not_before) AS due FROM {OUTBOX}) o
			WHERE due <= now()`),

		// The session holding the advisory lock of Lock in this database; $1
		// the lock's name. pg_locks shows a bigint key as its high (classid)
		// and low (objid) 32 bits, with objsubid 1. Columns of another
		// role's session are NULL without pg_read_all_stats.
		lockHolder: `
			SELECT a.pid, coalesce(a.application_name, ''), coalesce(host(a.client_addr), ''), a.backend_start
			FROM (SELECT ` + lockKey + ` AS k) h
			JOIN pg_locks l
			  ON l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
			 AND l.classid = ((h.k >> 32) & 4294967295)::oid
			 AND l.objid = (h.k & 4294967295)::oid
			 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
			JOIN pg_stat_activity a ON a.pid = l.pid
			LIMIT 1`,

		// The lock, with the backend that takes it. In a transaction of the
		// lock's session, once the lock is taken: waitHolders waits until
		// the other sessions have released their holder keys (pg_locks
		// shows a key of two integers as classid and objid, objsubid 2),
		// closeFence waits for the statements that passed the fence under
		// an earlier holder, takeHolder takes the session's own holder key.
		// takeHolder also bounds how long the session may stay idle: the
		// lock's watch pings it every 2 s, so a holder cut off from the
		// server (a partition, a proxy that holds the connection open)
		// loses its session, and the lock, in 30 s, where TCP keepalives
		// would not tell (PostgreSQL 14 and later; unlock lifts it).
		lock: `SELECT pg_try_advisory_lock(` + lockKey + `), pg_backend_pid()`,
		waitHolders: `
			SELECT pg_advisory_xact_lock_shared(` + holderKey + `, l.objid::int8::int4)
			FROM pg_locks l
			WHERE l.locktype = 'advisory' AND l.granted AND l.mode = 'ExclusiveLock' AND l.objsubid = 2
			  AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
			  AND l.classid = ` + holderKey + `::oid
			  AND l.pid <> pg_backend_pid()`,
		closeFence: `SELECT pg_advisory_xact_lock(` + fenceKey + `)`,
		takeHolder: `SELECT pg_advisory_lock(` + holderKey + `, pg_backend_pid()), ` + idleSessionTimeout(lockIdleTimeout),
		unlock:     `SELECT pg_advisory_unlock(` + holderKey + `, pg_backend_pid()), pg_advisory_unlock(` + lockKey + `), ` + idleSessionTimeout("0"),

		// Which of these rows are due now, for the service's dry run; $1
		// ids, $2 retention in microseconds.
		stillDue: r.Replace(`
			SELECT {ID}::text
			FROM {T}
			WHERE {ID} = ANY($1::text[]::{IDTYPE}[])
			  AND {SOFT}
			  AND {DELETED} <= {CUTOFF2}`),
	}
}

// lockIdleTimeout is the idle_session_timeout of the lock's session.
const lockIdleTimeout = "30s"

// idleSessionTimeout sets the session's idle_session_timeout, on servers
// that have it (PostgreSQL 14 and later).
func idleSessionTimeout(value string) string {
	return `CASE WHEN current_setting('server_version_num')::int >= 140000 THEN set_config('idle_session_timeout', ` + literal(value) + `, false) END`
}

// storageTables are the tables whose files share the storage, t first.
func storageTables(t Table, peers []Table) []Table {
	return append([]Table{t}, peers...)
}

// eachKey writes sql, a query of one key column {K} of t ({T}), once per
// key column, joined by sep.
func eachKey(t Table, sql, sep string) string {
	var parts []string
	for _, k := range t.keyColumns() {
		parts = append(parts, strings.NewReplacer("{K}", quote(k), "{T}", t.qualified()).Replace(sql))
	}
	return strings.Join(parts, sep)
}

// keyList shows a row's keys in a report: the key, or the keys that are
// set, comma-separated.
func keyList(t Table) string {
	if len(t.keyColumns()) == 1 {
		return "coalesce(" + quote(t.Key) + "::text, '')"
	}
	return "array_to_string(array_remove(" + t.keyArray("") + ", ''), ', ')"
}

// used is the predicate that a row names the file key: in a key column of
// t (but rows that except, a condition on u, leaves out) or of the other
// tables on the storage, or as a row of theirs deleted outright whose
// grace is not over (it may be put back). One EXISTS of a UNION ALL: each
// branch is a lookup in a key index, or in an outbox's primary key, where
// a conjunction of NOT EXISTS would have the planner hash whole tables.
func used(t Table, peers []Table, key, except string) string {
	var branches []string
	for i, tb := range storageTables(t, peers) {
		for _, k := range tb.keyColumns() {
			cond := "u." + quote(k) + " = " + key
			if i == 0 && except != "" {
				cond += " AND " + except
			}
			branches = append(branches, "SELECT 1 FROM "+tb.qualified()+" u WHERE "+cond)
		}
		if i > 0 {
			branches = append(branches, "SELECT 1 FROM "+tb.outbox()+" ub WHERE ub.storage_key = "+key+" AND ub.not_before > now()")
		}
	}
	return "EXISTS (" + strings.Join(branches, "\n\t\t\t\t\tUNION ALL ") + ")"
}

// ownerPattern is a derived pattern of a table on the storage, applied to
// one of its key columns: the ownership queries number them, and Go reads
// the numbers back through Reconciler.patterns.
type ownerPattern struct {
	table   Table
	key     string
	pattern derived.Pattern
	first   bool // the pattern's first key column: its outbox is read once
}

func ownerPatterns(t Table, peers []Table) []ownerPattern {
	var out []ownerPattern
	for _, tb := range storageTables(t, peers) {
		for _, p := range tb.Derived {
			for i, k := range tb.keyColumns() {
				out = append(out, ownerPattern{table: tb, key: k, pattern: p, first: i == 0})
			}
		}
	}
	return out
}

// derivedOwners asks which of some files a row of a table on the storage
// names as its own file ($1, through the key indexes), and which candidate
// locations of each owner pattern some row maps to ($2, $3...: one array
// per owner pattern, through the pattern's index); rows come back as (-1,
// key) and (owner pattern, location). A row deleted outright owns its
// files until its grace is over: it may be put back (the outbox holds few
// keys; it is read whole).
func derivedOwners(t Table, peers []Table) string {
	var branches []string
	for _, tb := range storageTables(t, peers) {
		branches = append(branches, eachKey(tb, `SELECT -1, {K}::text FROM {T} WHERE {K} = ANY($1::text[])`, "\nUNION ALL\n"),
			`SELECT -1, storage_key FROM `+tb.outbox()+` WHERE storage_key = ANY($1::text[]) AND not_before > now()`)
	}
	for i, o := range ownerPatterns(t, peers) {
		loc := o.pattern.SQL(quote(o.key)) + ` COLLATE "C"`
		branches = append(branches, fmt.Sprintf(`SELECT DISTINCT %d, %s FROM %s WHERE %s = ANY($%d::text[])`,
			i, loc, o.table.qualified(), loc, i+2))
		if o.first {
			loc = o.pattern.SQL("storage_key") + ` COLLATE "C"`
			branches = append(branches, fmt.Sprintf(`SELECT DISTINCT %d, %s FROM %s WHERE not_before > now() AND %s = ANY($%d::text[])`,
				i, loc, o.table.outbox(), loc, i+2))
		}
	}
	return strings.Join(branches, "\nUNION ALL\n")
}

// uncleanKeys reads the keys with an empty, "." or ".." element, or a
// leading "/", of every table on the storage: a listing names their files
// otherwise. Those of rows deleted outright within their grace too. $1 how
// many at most, each.
func uncleanKeys(t Table, peers []Table) string {
	const unclean = `'(^|/)[.]{1,2}(/|$)|//|^/'`
	var branches []string
	for _, tb := range storageTables(t, peers) {
		branches = append(branches, eachKey(tb, `(SELECT {K}::text FROM {T} WHERE {K} > '' AND {K}::text ~ `+unclean+` LIMIT $1)`, "\nUNION ALL\n"),
			`(SELECT storage_key FROM `+tb.outbox()+` WHERE not_before > now() AND storage_key ~ `+unclean+` LIMIT $1)`)
	}
	return strings.Join(branches, "\nUNION ALL\n")
}

// locations reads the locations the rows of the tables on the storage own
// around a prefix ($1): each row's keys, and each owner pattern's location
// for them; and those of the rows deleted outright whose grace is not
// over, which may be put back.
func locations(t Table, peers []Table) string {
	var branches []string
	for _, tb := range storageTables(t, peers) {
		branches = append(branches, eachKey(tb, `SELECT {K}::text COLLATE "C" AS loc, -1 AS pattern FROM {T} WHERE {K} > ''`, " UNION ALL "),
			`SELECT storage_key COLLATE "C", -1 FROM `+tb.outbox()+` WHERE not_before > now()`)
	}
	for i, o := range ownerPatterns(t, peers) {
		branches = append(branches, fmt.Sprintf(`SELECT %s COLLATE "C", %d FROM %s WHERE %s > ''`,
			o.pattern.SQL(quote(o.key)), i, o.table.qualified(), quote(o.key)))
		if o.first {
			branches = append(branches, fmt.Sprintf(`SELECT %s COLLATE "C", %d FROM %s WHERE not_before > now()`,
				o.pattern.SQL("storage_key"), i, o.table.outbox()))
		}
	}
	// Under the prefix, or a folder above it that a derived location owns
	// whole.
	return `SELECT loc, pattern FROM (` + strings.Join(branches, " UNION ALL ") + `) l
		WHERE left(loc, length($1)) = $1 OR left($1, length(loc)) = loc`
}
