package reconciler

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"text/template"
	"unicode"
	"unicode/utf8"

	"github.com/reconcile/reconcile/migrations"
)

// roleTemplate is parsed once: the file is part of the binary.
var roleTemplate = template.Must(template.New("role.sql.tmpl").Option("missingkey=error").Parse(migrations.Role))

// RoleSQL renders the SQL that creates role name with the least privileges
// reconcile needs on the tables ts, for an administrator to apply: the role
// once, then each table's grants. It reads nothing from the database.
func RoleSQL(name string, ts ...Table) (string, error) {
	if err := checkRoleName(name); err != nil {
		return "", err
	}
	type grants struct{ Table, Outbox string }
	var (
		schemas []string
		tables  []grants
	)
	for _, t := range ts {
		if s := quote(t.Schema); !slices.Contains(schemas, s) {
			schemas = append(schemas, s)
		}
		tables = append(tables, grants{t.qualified(), t.outbox()})
	}
	var sql strings.Builder
	err := roleTemplate.Execute(&sql, map[string]any{
		"Role":    quote(name),
		"Literal": literal(name), // standard_conforming_strings: on since PostgreSQL 9.1
		"Tag":     dollarTag(name),
		"Schemas": schemas,
		"Tables":  tables,
	})
	if err != nil {
		return "", fmt.Errorf("render the role's SQL: %w", err)
	}
	return sql.String(), nil
}

// checkRoleName refuses what PostgreSQL would not take as a role name, and
// control characters: a line break in the name would end the comments that
// name it in the SQL.
func checkRoleName(name string) error {
	switch {
	case name == "":
		return errors.New("the role name is empty")
	case len(name) > 63:
		return fmt.Errorf("the role name is %d bytes; PostgreSQL keeps 63 at most", len(name))
	case !utf8.ValidString(name):
		return errors.New("the role name is not valid UTF-8")
	case strings.ContainsFunc(name, unicode.IsControl):
		return errors.New("the role name holds a control character (NUL, a line break, ...)")
	}
	return nil
}

// dollarTag quotes the DO blocks that hold the role's name: one the name
// does not contain, so that it cannot end a block early.
func dollarTag(name string) string {
	tag := "$do$"
	for i := 1; strings.Contains(name, tag); i++ {
		tag = "$do" + strconv.Itoa(i) + "$"
	}
	return tag
}
