package reconciler

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"slices"
	"strings"
	"text/template"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/reconcile/reconcile/migrations"
)

// Migrate applies migrations/ in name order. Each statement is idempotent;
// the two indexes are created concurrently (no lock on the forum's writes)
// and only when the table has no equivalent index already.
func (r *Reconciler) Migrate(ctx context.Context) error {
	names, err := fs.Glob(migrations.FS, "*.sql")
	if err != nil {
		return fmt.Errorf("list migrations: %w", err)
	}
	slices.Sort(names)
	for _, name := range names {
		// The key index, once per key column; the others once.
		keys := []int{0}
		if strings.HasSuffix(name, "_key_index.sql") {
			keys = make([]int, len(r.table.keyColumns()))
			for i := range keys {
				keys[i] = i
			}
		}
		for _, key := range keys {
			if err := r.migrate(ctx, name, key); err != nil {
				return fmt.Errorf("migration %s: %w", name, err)
			}
		}
	}
	if err := r.fullIdentity(ctx); err != nil {
		return err
	}
	if err := r.migrateDerived(ctx); err != nil {
		return err
	}
	// The outbox says which table it serves, and how: once the table has
	// left the configuration, its rows still keep their files from the
	// other tables' purges (see FormerTables).
	if _, err := r.db.Exec(ctx, "COMMENT ON TABLE "+r.table.outbox()+" IS "+literal(describedPrefix+r.table.Fingerprint())); err != nil {
		return fmt.Errorf("describe the table on its outbox: %w", err)
	}
	return nil
}

// migrate applies the migration name, for the key column number key.
func (r *Reconciler) migrate(ctx context.Context, name string, key int) error {
	skip, why, err := r.migrationDone(ctx, name, key)
	if err != nil {
		return err
	}
	if skip {
		r.log.InfoContext(ctx, "migration not needed", "migration", name, "reason", why)
		return nil
	}
	raw, err := fs.ReadFile(migrations.FS, name)
	if err != nil {
		return err
	}
	tmpl, err := template.New(name).Option("missingkey=error").Parse(string(raw))
	if err != nil {
		return err
	}
	keyVars := func(table string) map[string]string {
		return map[string]string{"Key": quote(r.table.keyColumns()[key]), "KeyIndex": quote(keyIndexName(table, key))}
	}
	if idx := indexOf(name); idx != "" {
		err = r.buildIndex(ctx, tmpl, idx, r.table.Schema, r.table.Name, keyVars)
	} else {
		err = r.execMigration(ctx, tmpl, r.migrationVars(r.table.Schema, r.table.Name))
	}
	if err != nil {
		return err
	}
	r.log.InfoContext(ctx, "migration applied", "migration", name, "table", r.table.qualified())
	return nil
}

// identityTries bounds the tries, a second each, at the lock that setting
// the replica identity needs.
const identityTries = 30

// fullIdentity sets REPLICA IDENTITY FULL on the table and each of its
// partitions that lacks it, so that a DELETE carries the key of the file.
// Each relation in a transaction of its own, waiting a second at most for
// its ACCESS EXCLUSIVE lock: behind a long transaction, a longer wait
// would queue the forum's own queries behind it.
func (r *Reconciler) fullIdentity(ctx context.Context) error {
	rows, err := r.db.Query(ctx, r.sql.notFull, r.table.qualified())
	if err != nil {
		return fmt.Errorf("read replica identities: %w", err)
	}
	rels, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("read replica identities: %w", err)
	}
	for _, rel := range rels {
		for try := 1; ; try++ {
			err := pgx.BeginTxFunc(ctx, r.db, pgx.TxOptions{}, func(tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, "SET LOCAL lock_timeout = '1s'"); err != nil {
					return err
				}
				_, err := tx.Exec(ctx, "ALTER TABLE "+rel+" REPLICA IDENTITY FULL")
				return err
			})
			var pgErr *pgconn.PgError
			switch {
			case err == nil:
				r.log.InfoContext(ctx, "migration applied", "migration", "replica identity full", "table", rel)
			case errors.As(err, &pgErr) && pgErr.Code == pgerrcode.LockNotAvailable && try < identityTries:
				sleep(ctx, time.Second)
				continue
			case errors.As(err, &pgErr) && pgErr.Code == pgerrcode.LockNotAvailable:
				return fmt.Errorf("set REPLICA IDENTITY FULL on %s: a long transaction holds the table through %d tries; run reconcile migrate again once it ends: %w", rel, identityTries, err)
			default:
				return fmt.Errorf("set REPLICA IDENTITY FULL on %s: %w", rel, err)
			}
			break
		}
	}
	return ctx.Err()
}

// migrateDerived builds the index of each pattern of table.derived that
// lacks one.
func (r *Reconciler) migrateDerived(ctx context.Context) error {
	if len(r.table.Derived) == 0 {
		return nil
	}
	tmpl, err := template.New("derived_index").Option("missingkey=error").Parse(migrations.DerivedIndex)
	if err != nil {
		return fmt.Errorf("derived index migration: %w", err)
	}
	for _, p := range r.table.Derived {
		for _, key := range r.table.keyColumns() {
			vars := func(table string) map[string]string {
				return map[string]string{
					"DerivedIndex": quote(r.table.derivedIndexName(table, key, p)),
					"DerivedExpr":  p.SQL(quote(key)),
				}
			}
			qualified := quote(r.table.Schema, r.table.derivedIndexName(r.table.Name, key, p))
			var valid bool
			if err := r.db.QueryRow(ctx, r.sql.indexValid, qualified).Scan(&valid); err != nil {
				return fmt.Errorf("derived index of %q: %w", p, err)
			}
			if valid {
				r.log.InfoContext(ctx, "migration not needed", "migration", "derived index", "pattern", p.String(), "reason", "index "+qualified+" exists")
				continue
			}
			if err := r.buildIndex(ctx, tmpl, "DerivedIndex", r.table.Schema, r.table.Name, vars); err != nil {
				return fmt.Errorf("derived index of %q: %w", p, err)
			}
			r.log.InfoContext(ctx, "migration applied", "migration", "derived index", "pattern", p.String(), "index", qualified)
		}
	}
	return nil
}

// indexOf names the template variable of the index a migration builds;
// empty for a migration that builds none.
func indexOf(migration string) string {
	switch {
	case strings.HasSuffix(migration, "_due_index.sql"):
		return "DueIndex"
	case strings.HasSuffix(migration, "_key_index.sql"):
		return "KeyIndex"
	}
	return ""
}

// migrationVars fills the templates for the relation schema.name (the table,
// or one of its partitions), every identifier quoted.
func (r *Reconciler) migrationVars(schema, name string) map[string]string {
	t := r.table
	due, where := quote(t.DeletedAt), t.softDeleted("")
	switch {
	case t.IsActive != "":
		due, where = quote(t.IsActive)+", "+due, "NOT "+quote(t.IsActive)
	case t.IsDeleted != "":
		due, where = quote(t.IsDeleted)+", "+due, quote(t.IsDeleted)
	}
	return map[string]string{
		"Table":        quote(schema, name),
		"TableLiteral": literal(quote(schema, name)),
		"Outbox":       t.outbox(),
		"DueColumns":   due,
		"DuePredicate": where,
		"Key":          quote(t.Key),
		"DueIndex":     quote(objectName(name, "due_idx")),
		"KeyIndex":     quote(keyIndexName(name, 0)),
		"Concurrently": "CONCURRENTLY",
		"Only":         "",
	}
}

func (r *Reconciler) execMigration(ctx context.Context, tmpl *template.Template, vars map[string]string) error {
	var sql strings.Builder
	if err := tmpl.Execute(&sql, vars); err != nil {
		return err
	}
	if strings.Contains(sql.String(), "CONCURRENTLY") {
		r.log.InfoContext(ctx, "building index concurrently; waits for transactions already open", "table", vars["Table"])
	}
	_, err := r.db.Exec(ctx, sql.String())
	return err
}

// buildIndex builds the index of a migration on the relation schema.name.
// A plain table gets it concurrently. A partitioned table cannot: it gets
// it on itself alone (ON ONLY, invalid for now), each partition gets it
// (concurrently, or the same way when partitioned again), and each is
// attached; once every partition's is attached, PostgreSQL marks the
// parent's valid. Nothing holds a lock on the forum's writes for longer
// than a catalog change.
func (r *Reconciler) buildIndex(ctx context.Context, tmpl *template.Template, idx, schema, name string, extra func(table string) map[string]string) error {
	vars := r.migrationVars(schema, name)
	if extra != nil {
		maps.Copy(vars, extra(name))
	}
	var kind string
	if err := r.db.QueryRow(ctx, `SELECT relkind::text FROM pg_class WHERE oid = $1::regclass`, vars["Table"]).Scan(&kind); err != nil {
		return fmt.Errorf("read the kind of %s: %w", vars["Table"], err)
	}
	if kind != "p" {
		if err := r.dropInvalidIndex(ctx, quote(schema)+"."+vars[idx]); err != nil {
			return err
		}
		return r.execMigration(ctx, tmpl, vars)
	}
	vars["Concurrently"], vars["Only"] = "", "ONLY "
	if err := r.execMigration(ctx, tmpl, vars); err != nil {
		return err
	}
	rows, err := r.db.Query(ctx, `
		SELECT n.nspname, c.relname
		FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE i.inhparent = $1::regclass
		ORDER BY 1, 2`, vars["Table"])
	if err != nil {
		return fmt.Errorf("list the partitions of %s: %w", vars["Table"], err)
	}
	type rel struct{ Schema, Name string }
	parts, err := pgx.CollectRows(rows, pgx.RowToStructByPos[rel])
	if err != nil {
		return fmt.Errorf("list the partitions of %s: %w", vars["Table"], err)
	}
	parent := quote(schema) + "." + vars[idx]
	for _, p := range parts {
		if err := r.buildIndex(ctx, tmpl, idx, p.Schema, p.Name, extra); err != nil {
			return err
		}
		childVars := r.migrationVars(p.Schema, p.Name)
		if extra != nil {
			maps.Copy(childVars, extra(p.Name))
		}
		child := quote(p.Schema) + "." + childVars[idx]
		var attached bool
		err := r.db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = $1::regclass AND inhparent = $2::regclass)`,
			child, parent).Scan(&attached)
		if err != nil {
			return fmt.Errorf("look at index %s: %w", child, err)
		}
		if attached {
			continue
		}
		if _, err := r.db.Exec(ctx, "ALTER INDEX "+parent+" ATTACH PARTITION "+child); err != nil {
			return fmt.Errorf("attach index %s to %s: %w", child, parent, err)
		}
	}
	return nil
}

// migrationDone tells whether the table already has what an index
// migration would create: any valid index with the same leading columns and
// an equivalent predicate, whatever its name.
func (r *Reconciler) migrationDone(ctx context.Context, name string, key int) (bool, string, error) {
	t := r.table
	// Only the leading columns matter: (deleted_at) alone under the same
	// predicate serves the due query as well as (is_active, deleted_at).
	var leads [][]string
	predicates := []string{""}
	switch {
	case strings.HasSuffix(name, "_due_index.sql"):
		flag := t.IsActive + t.IsDeleted // one of them at most
		leads = [][]string{{flag, t.DeletedAt}, {t.DeletedAt}}
		// As pg_get_expr prints the predicates Django and we write.
		var col string
		if err := r.db.QueryRow(ctx, `SELECT quote_ident($1)`, cmp.Or(flag, t.DeletedAt)).Scan(&col); err != nil {
			return false, "", fmt.Errorf("quote %q: %w", cmp.Or(flag, t.DeletedAt), err)
		}
		switch {
		case t.IsActive != "":
			predicates = []string{"(NOT " + col + ")", "(" + col + " = false)", "(" + col + " IS FALSE)"}
		case t.IsDeleted != "":
			// A bare boolean column prints without parentheses.
			predicates = []string{col, "(" + col + " = true)", "(" + col + " IS TRUE)"}
		default:
			leads = leads[1:]
			predicates = []string{"(" + col + " IS NOT NULL)"}
		}
	case strings.HasSuffix(name, "_key_index.sql"):
		leads = [][]string{{t.keyColumns()[key]}}
	default:
		return false, "", nil
	}
	rows, err := r.db.Query(ctx, `
		SELECT i.indexrelid::regclass::text,
		       coalesce(pg_get_expr(i.indpred, i.indrelid), ''),
		       -- an expression column has no name: '' matches no column
		       array(SELECT coalesce(a.attname, '') FROM unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
		             LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum AND k.attnum > 0
		             WHERE k.n <= i.indnkeyatts -- INCLUDE columns cannot be searched
		             ORDER BY k.n)
		FROM pg_index i
		JOIN pg_class ic ON ic.oid = i.indexrelid
		JOIN pg_am am ON am.oid = ic.relam
		WHERE i.indrelid = $1::regclass AND i.indisvalid AND am.amname = 'btree'`, t.qualified())
	if err != nil {
		return false, "", fmt.Errorf("read indexes of %s: %w", t.qualified(), err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			idx, pred string
			cols      []string
		)
		if err := rows.Scan(&idx, &pred, &cols); err != nil {
			return false, "", fmt.Errorf("read indexes of %s: %w", t.qualified(), err)
		}
		leading := slices.ContainsFunc(leads, func(want []string) bool {
			return len(cols) >= len(want) && slices.Equal(cols[:len(want)], want)
		})
		if leading && slices.Contains(predicates, pred) {
			return true, "equivalent index " + idx + " exists", nil
		}
	}
	return false, "", rows.Err()
}

// dropInvalidIndex removes our own index left invalid by an interrupted
// CREATE INDEX CONCURRENTLY, which IF NOT EXISTS would otherwise keep.
// qualified is the index's quoted, schema-qualified name.
func (r *Reconciler) dropInvalidIndex(ctx context.Context, qualified string) error {
	var invalid bool
	err := r.db.QueryRow(ctx, `
		SELECT EXISTS (SELECT 1 FROM pg_index WHERE indexrelid = to_regclass($1) AND NOT indisvalid)`, qualified).Scan(&invalid)
	if err != nil {
		return fmt.Errorf("look for an invalid index: %w", err)
	}
	if !invalid {
		return nil
	}
	r.log.WarnContext(ctx, "dropping an invalid index left by an interrupted migration", "index", qualified)
	if _, err := r.db.Exec(ctx, "DROP INDEX CONCURRENTLY IF EXISTS "+qualified); err != nil {
		return fmt.Errorf("drop invalid index: %w", err)
	}
	return nil
}
