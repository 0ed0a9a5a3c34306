package reconciler

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"time"
)

// TimeLayout is how times are printed for people, as the cron job did.
const TimeLayout = "2006-01-02 15:04:05"

// NewAuditWriter returns the report writer for format text, json or csv.
// CSV has no place for totals: they go to totals (stderr, say) instead.
func NewAuditWriter(format string, out, totals io.Writer) (AuditWriter, error) {
	switch format {
	case "text":
		return &textReport{w: out}, nil
	case "json":
		return &jsonReport{w: out}, nil
	case "csv":
		c := csv.NewWriter(out)
		return &csvReport{w: c, totals: totals}, c.Write([]string{
			"status", "id", "storage_key", "original_filename", "deleted_at", "days_since_deletion", "reason",
		})
	default:
		return nil, fmt.Errorf("report format %q: want text, json or csv", format)
	}
}

type textReport struct {
	w                 io.Writer
	dueHeader, incHdr bool
	// inconsistent says what makes a row inconsistent, after the table's
	// soft-delete shape (Audit tells it).
	inconsistent string
	err          error
}

func (t *textReport) shape(tb Table) {
	if tb.IsActive == "" && tb.IsDeleted == "" {
		t.inconsistent = fmt.Sprintf("a %s out of range: infinite, before 1700 or after 2260", tb.DeletedAt)
		return
	}
	t.inconsistent = fmt.Sprintf("%s but no %s, or an infinite one", tb.shape(), tb.DeletedAt)
}

func (t *textReport) printf(format string, args ...any) {
	if t.err == nil {
		_, t.err = fmt.Fprintf(t.w, format, args...)
	}
}

func (t *textReport) Due(row AuditRow) error {
	if !t.dueHeader {
		t.dueHeader = true
		t.printf("Dry run: nothing is deleted. Attachments due for permanent deletion:\n")
		t.printf("  %-36s  %-19s  %5s  %s  (%s)\n", "ID", "DELETED AT (UTC)", "DAYS", "STORAGE KEY", "ORIGINAL FILENAME")
	}
	t.printf("  %-36s  %-19s  %5d  %s  (%s)\n", row.ID, row.DeletedAt.UTC().Format(TimeLayout), *row.DaysSinceDeleted, row.StorageKey, row.OriginalFilename)
	if row.Refused != "" {
		t.printf("      REFUSED, row kept: %s\n", row.Refused)
	}
	if row.StorageKey == "" {
		t.printf("      no file: only the row goes\n")
	}
	return t.err
}

func (t *textReport) Inconsistent(row AuditRow) error {
	if !t.incHdr {
		t.incHdr = true
		t.printf("\nInconsistent rows (%s; never purged):\n", t.inconsistent)
	}
	t.printf("  %-36s  %s  (%s)\n", row.ID, row.StorageKey, row.OriginalFilename)
	return t.err
}

func (t *textReport) Close(totals AuditTotals) error {
	if !t.dueHeader {
		t.printf("Dry run: nothing is deleted. No attachment is due for permanent deletion.\n")
	}
	t.printf("\nDry run complete:\n")
	t.printf("  - Would delete: %d attachments\n", totals.Due)
	if totals.NoFile > 0 {
		t.printf("  - Of which without a file (empty storage key): %d attachments\n", totals.NoFile)
	}
	if totals.MaxDeletes > 0 {
		t.printf("  - The next run would delete: %d attachments (safety.max_deletes is %d)\n", totals.ThisRun, totals.MaxDeletes)
	}
	t.printf("  - Refused (unsafe storage key, row kept): %d attachments\n", totals.Refused)
	t.printf("  - Inconsistent (no usable deleted_at, never purged): %d attachments\n", totals.Inconsistent)
	t.printf("  - Retention: %s\n", FormatRetention(totals.Retention))
	t.printf("  - Cutoff date: %s\n", totals.Cutoff.UTC().Format(TimeLayout))
	if totals.StorageProblem != "" {
		t.printf("  - A purge would refuse to run: %s\n", totals.StorageProblem)
	}
	return t.err
}

// FormatRetention prints whole days as the cron job's --days did, and any
// other duration as Go writes it.
func FormatRetention(d time.Duration) string {
	if d%(24*time.Hour) == 0 {
		return strconv.Itoa(int(d/(24*time.Hour))) + " days"
	}
	return d.String()
}

// jsonReport writes one JSON object, element by element: the "due" array,
// the "inconsistent" array, then the totals.
type jsonReport struct {
	w       io.Writer
	section int // index in jsonSections of the part being written
	first   bool
	// table names the table of a part of the report of several tables,
	// which holds it first; empty: the report is this object alone.
	table string
	err   error
}

// jsonSections lists the parts in order, each with what opens it.
var jsonSections = []struct{ name, opening string }{
	{"", ""},
	{"due", `{"dry_run":true,"due":[`},
	{"inconsistent", `],"inconsistent":[`},
	{"totals", `],"totals":`},
}

func (j *jsonReport) write(s string) {
	if j.err == nil {
		_, j.err = io.WriteString(j.w, s)
	}
}

// advance opens the parts up to and including name.
func (j *jsonReport) advance(name string) {
	for jsonSections[j.section].name != name {
		j.section++
		opening := jsonSections[j.section].opening
		if j.section == 1 && j.table != "" {
			b, _ := json.Marshal(j.table) // a string always marshals
			opening = `{"table":` + string(b) + "," + opening[1:]
		}
		j.write(opening)
		j.first = true
	}
}

func (j *jsonReport) element(section string, v any) error {
	j.advance(section)
	if !j.first {
		j.write(",")
	}
	j.first = false
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	j.write(string(b))
	return j.err
}

func (j *jsonReport) Due(row AuditRow) error          { return j.element("due", row) }
func (j *jsonReport) Inconsistent(row AuditRow) error { return j.element("inconsistent", row) }

func (j *jsonReport) Close(totals AuditTotals) error {
	err := j.element("totals", struct {
		AuditTotals
		Retention string `json:"retention"`
	}{totals, totals.Retention.String()})
	if j.table != "" {
		j.write("}") // the report of several tables goes on
	} else {
		j.write("}\n")
	}
	if err != nil {
		return err
	}
	return j.err
}

type csvReport struct {
	w      *csv.Writer
	totals io.Writer
	// table names the table of a part of the report of several tables:
	// the first column of its rows, and in its totals.
	table string
}

func (c *csvReport) write(record ...string) error {
	if c.table != "" {
		record = append([]string{c.table}, record...)
	}
	return c.w.Write(record)
}

func (c *csvReport) Due(row AuditRow) error {
	status := "due"
	if row.Refused != "" {
		status = "refused"
	}
	return c.write(status, row.ID, row.StorageKey, row.OriginalFilename,
		row.DeletedAt.UTC().Format(time.RFC3339), strconv.Itoa(*row.DaysSinceDeleted), row.Refused)
}

func (c *csvReport) Inconsistent(row AuditRow) error {
	return c.write("inconsistent", row.ID, row.StorageKey, row.OriginalFilename, "", "", "no deleted_at")
}

func (c *csvReport) Close(totals AuditTotals) error {
	c.w.Flush()
	if err := c.w.Error(); err != nil {
		return err
	}
	of, purge := "", "A purge"
	if c.table != "" {
		of, purge = " of "+c.table, "A purge of "+c.table
	}
	_, err := fmt.Fprintf(c.totals, "Dry run complete%s: would delete %d (%d without a file; %d in the next run), refused %d, inconsistent %d; retention %s; cutoff date %s\n",
		of, totals.Due, totals.NoFile, totals.ThisRun, totals.Refused, totals.Inconsistent, FormatRetention(totals.Retention), totals.Cutoff.UTC().Format(TimeLayout))
	if err == nil && totals.StorageProblem != "" {
		_, err = fmt.Fprintf(c.totals, "%s would refuse to run: %s\n", purge, totals.StorageProblem)
	}
	return err
}

// NewTablesAuditWriter returns the writer of the report of several tables
// for format text, json or csv: each table's part as NewAuditWriter's
// report, marked with the table, then the sums. CSV's totals, each table's
// and the sums, go to totals.
func NewTablesAuditWriter(format string, out, totals io.Writer) (TablesAuditWriter, error) {
	switch format {
	case "text":
		return &textTables{w: out}, nil
	case "json":
		return &jsonTables{w: out}, nil
	case "csv":
		c := csv.NewWriter(out)
		return &csvTables{w: c, totals: totals}, c.Write([]string{
			"table", "status", "id", "storage_key", "original_filename", "deleted_at", "days_since_deletion", "reason",
		})
	default:
		return nil, fmt.Errorf("report format %q: want text, json or csv", format)
	}
}

// textTables heads each table's report with its name, and closes with the
// sums.
type textTables struct {
	w      io.Writer
	tables int
}

func (t *textTables) Table(name string, retention time.Duration) (AuditWriter, error) {
	sep := ""
	if t.tables++; t.tables > 1 {
		sep = "\n"
	}
	_, err := fmt.Fprintf(t.w, "%sTable %s (retention %s):\n", sep, name, FormatRetention(retention))
	return &textReport{w: t.w}, err
}

func (t *textTables) Close(sum AuditSum) error {
	r := &textReport{w: t.w}
	r.printf("\nAll %d tables:\n", sum.Tables)
	r.printf("  - Would delete: %d attachments\n", sum.Due)
	if sum.NoFile > 0 {
		r.printf("  - Of which without a file (empty storage key): %d attachments\n", sum.NoFile)
	}
	if sum.MaxDeletes > 0 {
		r.printf("  - The next run would delete: %d attachments (safety.max_deletes is %d, for all tables)\n", sum.ThisRun, sum.MaxDeletes)
	}
	r.printf("  - Refused (unsafe storage key, row kept): %d attachments\n", sum.Refused)
	r.printf("  - Inconsistent (no usable deleted_at, never purged): %d attachments\n", sum.Inconsistent)
	if sum.StorageProblems > 0 {
		r.printf("  - A purge would refuse to run on %d of them (see above)\n", sum.StorageProblems)
	}
	return r.err
}

// jsonTables writes one object: each table's report object in "tables",
// then the sums in "totals".
type jsonTables struct {
	w      io.Writer
	tables int
}

// jsonTablesOpening opens the object, before the first table's report.
const jsonTablesOpening = `{"dry_run":true,"tables":[`

func (j *jsonTables) Table(name string, _ time.Duration) (AuditWriter, error) {
	opening := ","
	if j.tables++; j.tables == 1 {
		opening = jsonTablesOpening
	}
	_, err := io.WriteString(j.w, opening)
	return &jsonReport{w: j.w, table: name}, err
}

func (j *jsonTables) Close(sum AuditSum) error {
	b, err := json.Marshal(sum)
	if err != nil {
		return err
	}
	opening := ""
	if j.tables == 0 {
		opening = jsonTablesOpening
	}
	_, err = fmt.Fprintf(j.w, "%s],\"totals\":%s}\n", opening, b)
	return err
}

// csvTables writes one table of rows, the table's name first; the totals
// go to totals.
type csvTables struct {
	w      *csv.Writer
	totals io.Writer
}

func (c *csvTables) Table(name string, _ time.Duration) (AuditWriter, error) {
	return &csvReport{w: c.w, totals: c.totals, table: name}, nil
}

func (c *csvTables) Close(sum AuditSum) error {
	c.w.Flush()
	if err := c.w.Error(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(c.totals, "Dry run complete, all %d tables: would delete %d (%d without a file; %d in the next run), refused %d, inconsistent %d\n",
		sum.Tables, sum.Due, sum.NoFile, sum.ThisRun, sum.Refused, sum.Inconsistent)
	if err == nil && sum.StorageProblems > 0 {
		_, err = fmt.Fprintf(c.totals, "A purge would refuse to run on %d of them\n", sum.StorageProblems)
	}
	return err
}
