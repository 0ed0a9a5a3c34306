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
	err               error
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
		t.printf("\nInconsistent rows (is_active = false but no deleted_at, or an infinite one; never purged):\n")
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
	err     error
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
		j.write(jsonSections[j.section].opening)
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
	j.write("}\n")
	if err != nil {
		return err
	}
	return j.err
}

type csvReport struct {
	w      *csv.Writer
	totals io.Writer
}

func (c *csvReport) Due(row AuditRow) error {
	status := "due"
	if row.Refused != "" {
		status = "refused"
	}
	return c.w.Write([]string{status, row.ID, row.StorageKey, row.OriginalFilename,
		row.DeletedAt.UTC().Format(time.RFC3339), strconv.Itoa(*row.DaysSinceDeleted), row.Refused})
}

func (c *csvReport) Inconsistent(row AuditRow) error {
	return c.w.Write([]string{"inconsistent", row.ID, row.StorageKey, row.OriginalFilename, "", "", "no deleted_at"})
}

func (c *csvReport) Close(totals AuditTotals) error {
	c.w.Flush()
	if err := c.w.Error(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(c.totals, "Dry run complete: would delete %d (%d without a file; %d in the next run), refused %d, inconsistent %d; retention %s; cutoff date %s\n",
		totals.Due, totals.NoFile, totals.ThisRun, totals.Refused, totals.Inconsistent, FormatRetention(totals.Retention), totals.Cutoff.UTC().Format(TimeLayout))
	if err == nil && totals.StorageProblem != "" {
		_, err = fmt.Fprintf(c.totals, "A purge would refuse to run: %s\n", totals.StorageProblem)
	}
	return err
}
