// Package migrations holds the SQL that reconcile needs in the forum's
// database. Table and column names come from configuration, so each file is
// a template filled with identifiers that are already quoted.
package migrations

import "embed"

// FS holds the templates, applied in name order by reconcile migrate.
//
//go:embed *.sql
var FS embed.FS

// Role creates reconcile's least-privileged role; reconcile migrate
// --print-role prints it for an administrator to apply.
//
//go:embed role.sql.tmpl
var Role string

// DerivedIndex builds the index of one pattern of table.derived; reconcile
// migrate applies it once per pattern, after the others.
//
//go:embed derived_index.sql.tmpl
var DerivedIndex string
