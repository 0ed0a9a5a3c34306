package reconciler

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
)

// OrphanWriter writes the report of an orphan scan as it goes: a line per
// orphan, the totals at the end.
type OrphanWriter interface {
	File(o Orphan) error
	Close(totals OrphanTotals) error
}

// NewOrphanWriter returns the report writer for format text, json or csv.
// CSV has no place for totals: they go to totals (stderr, say) instead.
func NewOrphanWriter(format string, out, totals io.Writer, dryRun bool) (OrphanWriter, error) {
	switch format {
	case "text":
		return &orphanText{w: out, dryRun: dryRun}, nil
	case "json":
		_, err := io.WriteString(out, `{"files":[`)
		return &orphanJSON{w: out}, err
	case "csv":
		c := csv.NewWriter(out)
		return &orphanCSV{w: c, totals: totals}, c.Write([]string{
			"action", "storage_key", "reason", "size", "modified_at", "age",
		})
	default:
		return nil, fmt.Errorf("report format %q: want text, json or csv", format)
	}
}

type orphanText struct {
	w       io.Writer
	dryRun  bool
	started bool
	err     error
}

func (t *orphanText) printf(format string, args ...any) {
	if t.err == nil {
		_, t.err = fmt.Fprintf(t.w, format, args...)
	}
}

func (t *orphanText) File(o Orphan) error {
	if !t.started {
		t.started = true
		if t.dryRun {
			t.printf("Dry run: nothing is removed. ")
		}
		t.printf("Files no row owns:\n  %-14s  %9s  %-19s  %s  (%s)\n", "ACTION", "SIZE", "MODIFIED (UTC)", "STORAGE KEY", "REASON")
	}
	t.printf("  %-14s  %9s  %-19s  %s  (%s)\n", o.Action, humanize.IBytes(uint64(o.Size)), o.ModTime.UTC().Format(TimeLayout), o.Key, o.Reason)
	return t.err
}

func (t *orphanText) Close(tot OrphanTotals) error {
	if !t.started {
		t.printf("No file under the table's prefixes lacks an owner.\n")
	}
	verb := "Removed"
	if t.dryRun {
		verb = "Would remove"
	}
	t.printf("\nOrphan scan of %q complete:\n", tot.Prefixes)
	t.printf("  - Files listed: %d\n", tot.Listed)
	t.printf("  - Orphans: %d files, %s reclaimable\n", tot.Orphans, humanize.IBytes(uint64(tot.Bytes)))
	if !t.dryRun {
		t.printf("  - %s: %d files\n", verb, tot.Removed)
	}
	t.printf("  - Younger than orphans.grace, left alone: %d files\n", tot.Young)
	if tot.Kept+tot.Refused+tot.Failed > 0 {
		t.printf("  - Kept (refused, failed, written again, or while a transaction or the service may yet claim them): %d files\n", tot.Kept+tot.Refused+tot.Failed)
	}
	if tot.Foreign > 0 {
		t.printf("  - Left alone in folders where no row owns any file (another model's? the wrong database?): %d files, in %s\n", tot.Foreign, strings.Join(tot.ForeignFolders, ", "))
	}
	if tot.BudgetReached {
		t.printf("  - safety.max_deletes reached: the rest was only listed\n")
	}
	return t.err
}

type orphanJSON struct {
	w     io.Writer
	first bool
	err   error
}

func (j *orphanJSON) File(o Orphan) error {
	if j.err != nil {
		return j.err
	}
	raw, err := json.Marshal(o)
	if err != nil {
		return err
	}
	if j.first {
		_, j.err = io.WriteString(j.w, ",")
	}
	j.first = true
	if j.err == nil {
		_, j.err = j.w.Write(raw)
	}
	return j.err
}

func (j *orphanJSON) Close(tot OrphanTotals) error {
	if j.err != nil {
		return j.err
	}
	raw, err := json.Marshal(tot)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(j.w, "],\"totals\":%s}\n", raw)
	return err
}

type orphanCSV struct {
	w      *csv.Writer
	totals io.Writer
}

func (c *orphanCSV) File(o Orphan) error {
	return c.w.Write([]string{o.Action, o.Key, o.Reason, strconv.FormatInt(o.Size, 10), o.ModTime.UTC().Format(time.RFC3339), o.Age})
}

func (c *orphanCSV) Close(tot OrphanTotals) error {
	c.w.Flush()
	if err := c.w.Error(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(c.totals, "orphans: %d files listed, %d orphans (%d bytes), %d removed, %d younger than orphans.grace, %d kept, %d left in folders no row owns a file in\n",
		tot.Listed, tot.Orphans, tot.Bytes, tot.Removed, tot.Young, tot.Kept+tot.Refused+tot.Failed, tot.Foreign)
	return err
}
