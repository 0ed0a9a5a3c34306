package reconciler

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// TableDescription is a configured table as the database sees it, and
// whether it has what the purge needs: `reconcile tables` prints it.
type TableDescription struct {
	Table  string `json:"table"`  // schema.name
	Config string `json:"config"` // the configuration that names it: table, tables[2]
	// SoftDelete is the predicate of a soft-deleted row: is_active = false,
	// is_deleted = true, or deleted_at IS NOT NULL.
	SoftDelete string        `json:"soft_delete"`
	DeletedAt  string        `json:"deleted_at_column"`
	KeyColumns []string      `json:"key_columns"`
	Retention  time.Duration `json:"-"` // as a Go duration in JSON: "retention"
	Derived    []string      `json:"derived"`
	// RowsEstimate is the planner's estimate of the table's rows
	// (pg_class.reltuples, summed over the partitions); -1 when it was
	// never analyzed.
	RowsEstimate int64 `json:"rows_estimate"`
	SoftDeleted  int   `json:"soft_deleted_rows"` // exact
	// Due is how many soft-deleted rows are past the table's retention by
	// the database's clock: deleted at Cutoff or before.
	Due    int          `json:"due_rows"`
	Cutoff time.Time    `json:"cutoff"`
	Needs  []SetupCheck `json:"needs"`
}

// SetupCheck is one object the purge needs, which `reconcile migrate`
// creates.
type SetupCheck struct {
	What    string `json:"what"` // "outbox", "due index", "key index on image"...
	Name    string `json:"name"` // schema.name, as migrate names it
	Present bool   `json:"present"`
	// Detail says what stands for it (an equivalent index under another
	// name), or what is wrong.
	Detail string `json:"detail,omitempty"`
}

// Ready tells whether the table has everything the purge needs.
func (d TableDescription) Ready() bool {
	for _, c := range d.Needs {
		if !c.Present {
			return false
		}
	}
	return true
}

// MarshalJSON adds the retention, as the audit report writes it, and
// whether the table is ready.
func (d TableDescription) MarshalJSON() ([]byte, error) {
	type plain TableDescription // without this method
	return json.Marshal(struct {
		plain
		Retention string `json:"retention"`
		Ready     bool   `json:"ready"`
	}{plain(d), d.Retention.String(), d.Ready()})
}

// shape is the predicate of a soft-deleted row, for people.
func (t Table) shape() string {
	switch {
	case t.IsActive != "":
		return t.IsActive + " = false"
	case t.IsDeleted != "":
		return t.IsDeleted + " = true"
	}
	return t.DeletedAt + " IS NOT NULL"
}

// The migrations whose indexes an equivalent index can stand for (see
// migrationDone).
const (
	dueMigration = "002_due_index.sql"
	keyMigration = "003_key_index.sql"
)

// Describe reads the table from the catalog: its size, its soft-deleted
// and due rows, and whether each object the purge needs exists and is
// valid, publication naming the publication the stream reads. It only
// reads.
func (r *Reconciler) Describe(ctx context.Context, publication string) (TableDescription, error) {
	t := r.table
	d := TableDescription{
		Table:      t.IndexName(),
		Config:     t.Section,
		SoftDelete: t.shape(),
		DeletedAt:  t.DeletedAt,
		KeyColumns: t.keyColumns(),
		Retention:  r.cfg.Retention,
	}
	if d.Config == "" {
		d.Config = "table"
	}
	for _, p := range t.Derived {
		d.Derived = append(d.Derived, p.String())
	}
	if err := r.describeRows(ctx, &d); err != nil {
		return d, err
	}
	named := func(name string) string { return t.Schema + "." + name }

	outbox := SetupCheck{What: "outbox", Name: named(objectName(t.Name, "outbox"))}
	var exists, current bool
	if err := r.db.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, t.outbox()).Scan(&exists); err != nil {
		return d, fmt.Errorf("look for the outbox table of %s: %w", d.Table, err)
	}
	if err := r.db.QueryRow(ctx, r.sql.outboxCurrent, t.outbox()).Scan(&current); err != nil {
		return d, fmt.Errorf("look at the outbox table of %s: %w", d.Table, err)
	}
	switch {
	case !exists:
		outbox.Detail = "missing"
	case !current:
		outbox.Detail = "lacks the column not_before (migration 004_outright)"
	default:
		outbox.Present = true
	}
	d.Needs = append(d.Needs, outbox)

	due, err := r.describeIndex(ctx, "due index", objectName(t.Name, "due_idx"), dueMigration, 0)
	if err != nil {
		return d, err
	}
	d.Needs = append(d.Needs, due)
	for i, k := range t.keyColumns() {
		key, err := r.describeIndex(ctx, "key index on "+k, keyIndexName(t.Name, i), keyMigration, i)
		if err != nil {
			return d, err
		}
		d.Needs = append(d.Needs, key)
	}
	for _, p := range t.Derived {
		for _, k := range t.keyColumns() {
			c := SetupCheck{What: fmt.Sprintf("derived index of %s on %s", p, k), Name: named(t.derivedIndexName(t.Name, k, p))}
			if c.Present, c.Detail, err = r.ownIndex(ctx, quote(t.Schema, t.derivedIndexName(t.Name, k, p))); err != nil {
				return d, err
			}
			d.Needs = append(d.Needs, c)
		}
	}

	identity := SetupCheck{What: "REPLICA IDENTITY FULL", Name: d.Table}
	rows, err := r.db.Query(ctx, r.sql.notFull, t.qualified())
	if err != nil {
		return d, fmt.Errorf("read the replica identities of %s: %w", d.Table, err)
	}
	lacking, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return d, fmt.Errorf("read the replica identities of %s: %w", d.Table, err)
	}
	identity.Present = len(lacking) == 0
	if !identity.Present {
		identity.Detail = "not set on " + strings.Join(lacking, ", ")
	}
	d.Needs = append(d.Needs, identity)

	pub := SetupCheck{What: "publication", Name: publication}
	var pubExists bool
	err = r.db.QueryRow(ctx, `
		SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1),
		       EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3)`,
		publication, t.Schema, t.Name).Scan(&pubExists, &pub.Present)
	if err != nil {
		return d, fmt.Errorf("look for publication %q: %w", publication, err)
	}
	switch {
	case !pubExists:
		pub.Detail = "missing"
	case !pub.Present:
		pub.Detail = "does not publish " + d.Table + " under its own name"
	}
	d.Needs = append(d.Needs, pub)
	return d, nil
}

// describeRows counts the table's rows: the planner's estimate of all,
// and exactly, through the due index, the soft-deleted and the due ones.
func (r *Reconciler) describeRows(ctx context.Context, d *TableDescription) error {
	t := r.table
	// The table itself, or the leaf partitions of a partitioned one.
	err := r.db.QueryRow(ctx, `
		SELECT CASE WHEN bool_and(c.reltuples < 0) THEN -1 ELSE sum(greatest(c.reltuples, 0)) END::int8
		FROM pg_class c
		WHERE (c.oid = $1::regclass OR c.oid IN (SELECT relid FROM pg_partition_tree($1::regclass)))
		  AND c.relkind = 'r'`, t.qualified()).Scan(&d.RowsEstimate)
	if err != nil {
		return fmt.Errorf("read the size of %s: %w", d.Table, err)
	}
	if err := r.db.QueryRow(ctx, `SELECT count(*) FROM `+t.qualified()+` WHERE `+t.softDeleted("")).Scan(&d.SoftDeleted); err != nil {
		return fmt.Errorf("count the soft-deleted rows of %s: %w", d.Table, err)
	}
	if d.Cutoff, err = r.Cutoff(ctx); err != nil {
		return err
	}
	if err := r.db.QueryRow(ctx, r.sql.auditCount, d.Cutoff).Scan(&d.Due); err != nil {
		return fmt.Errorf("count the due rows of %s: %w", d.Table, err)
	}
	return nil
}

// describeIndex checks the index of a migration, for the key column
// number key: migrate names it index, and an equivalent index under
// another name stands for it.
func (r *Reconciler) describeIndex(ctx context.Context, what, index, migration string, key int) (SetupCheck, error) {
	c := SetupCheck{What: what, Name: r.table.Schema + "." + index}
	done, why, err := r.migrationDone(ctx, migration, key)
	if err != nil {
		return c, err
	}
	own, detail, err := r.ownIndex(ctx, quote(r.table.Schema, index))
	if err != nil {
		return c, err
	}
	switch {
	case done && own:
		c.Present = true
	case done:
		c.Present, c.Detail = true, why
	case own:
		// Not equivalent, and in the way: migrate creates none of that name.
		c.Detail = "exists, but on other columns or rows than the purge's queries need: drop it and run reconcile migrate"
	default:
		c.Detail = detail
	}
	return c, nil
}

// ownIndex tells whether the index reconcile names qualified (quoted)
// exists and is valid, or what is wrong with it.
func (r *Reconciler) ownIndex(ctx context.Context, qualified string) (bool, string, error) {
	var exists, valid bool
	err := r.db.QueryRow(ctx, `
		SELECT to_regclass($1) IS NOT NULL,
		       EXISTS (SELECT 1 FROM pg_index WHERE indexrelid = to_regclass($1) AND indisvalid)`, qualified).Scan(&exists, &valid)
	switch {
	case err != nil:
		return false, "", fmt.Errorf("look for index %s: %w", qualified, err)
	case valid:
		return true, "", nil
	case exists:
		return false, "invalid: a build that did not finish, or a partition's index not attached yet", nil
	}
	return false, "missing", nil
}
