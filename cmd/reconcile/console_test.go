package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"testing"
)

// reconcileOn runs the command as run does, with terminal deciding which
// of its buffers is a terminal.
func reconcileOn(t *testing.T, terminal func(stdout, stderr, w io.Writer) bool, args ...string) (string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	root := newRootCommand(&stdout, &stderr, func(w io.Writer) bool { return terminal(&stdout, &stderr, w) })
	root.SetArgs(args)
	if err := root.ExecuteContext(context.Background()); err != nil {
		t.Fatalf("%v: %v\n%s\n%s", args, err, stdout.String(), stderr.String())
	}
	return stdout.String(), stderr.String()
}

// Which of the buffers is a terminal.
func both(_, _, _ io.Writer) bool       { return true }
func neither(_, _, _ io.Writer) bool    { return false }
func onlyStderr(_, e, w io.Writer) bool { return w == e }

// hasBar tells whether s holds a drawn bar described as what, with its
// count and rate.
func hasBar(s, what string) bool {
	return strings.Contains(s, what) && strings.Contains(s, "% |") && strings.Contains(s, " rows/")
}

func deletedLines(stdout string) int { return strings.Count(stdout, "  Deleted ") }

// cleanupLines are the lines of stderr that hold a row's log line.
func cleanupLines(stderr string) []string {
	var out []string
	for _, l := range strings.Split(stderr, "\n") {
		if strings.Contains(l, "[CLEANUP] Hard-deleted attachment") {
			out = append(out, l)
		}
	}
	return out
}

// On a terminal --rescan draws a bar instead of the cron job's lines, log
// lines scroll above it whole, and the summary follows as before; off a
// terminal the lines are printed as before and no bar is drawn.
func TestRescanShowsABarOnATerminalAndLinesElsewhere(t *testing.T) {
	f := newForum(t)
	if code, out, stderr := reconcile("migrate"); code != exitOK {
		t.Fatalf("migrate: exit %d\n%s%s", code, out, stderr)
	}
	add := func(run string) {
		for i := range 30 {
			f.add(fmt.Sprintf("bar/%s/%02d.jpg", run, i), 48)
		}
	}

	add("terminal")
	out, stderr := reconcileOn(t, both, "--rescan", "--batch-size", "10")
	if !hasBar(stderr, "Deleting") || deletedLines(out) != 0 {
		t.Fatalf("on a terminal: want a bar on stderr and no Deleted lines\nstdout:\n%s\nstderr:\n%q", out, stderr)
	}
	if !strings.Contains(out, "Permanently deleting 30 attachments in batches of 10...\n\nCleanup complete:\n") ||
		!strings.Contains(out, "  - Successfully deleted: 30 attachments\n") {
		t.Errorf("on a terminal, stdout:\n%s", out)
	}
	logs := cleanupLines(stderr)
	if len(logs) != 30 {
		t.Errorf("%d [CLEANUP] log lines, want 30", len(logs))
	}
	for _, l := range logs {
		// What a terminal shows is what follows the last carriage return.
		if shown := l[strings.LastIndex(l, "\r")+1:]; !strings.HasPrefix(shown, "time=") {
			t.Errorf("log line shares its line with the bar: %q", l)
		}
	}

	add("pipe")
	out, stderr = reconcileOn(t, neither, "--rescan", "--batch-size", "10")
	if hasBar(stderr, "Deleting") || !strings.Contains(out, "  Deleted 30/30...\n") {
		t.Fatalf("off a terminal: want Deleted lines and no bar\nstdout:\n%s\nstderr:\n%s", out, stderr)
	}

	// stdout piped (a log file), stderr a terminal: the file gets the
	// lines, the person the bar.
	add("tee")
	out, stderr = reconcileOn(t, onlyStderr, "--rescan", "--batch-size", "10")
	if !hasBar(stderr, "Deleting") || !strings.Contains(out, "  Deleted 30/30...\n") {
		t.Fatalf("stderr a terminal: want a bar and Deleted lines\nstdout:\n%s\nstderr:\n%q", out, stderr)
	}
}

// A long audit shows a bar of the rows examined on a terminal's stderr
// while the report goes to a file or a pipe; a report on the terminal, or
// no terminal, gets no bar.
func TestAuditShowsABarWhileTheReportGoesElsewhere(t *testing.T) {
	f := newForum(t)
	for i := range 25 {
		f.add(fmt.Sprintf("audit/%02d.jpg", i), 48)
	}
	path := filepath.Join(t.TempDir(), "report.txt")
	for _, tc := range []struct {
		name     string
		terminal func(stdout, stderr, w io.Writer) bool
		args     []string
		bar      bool
	}{
		{"report to a file", both, []string{"--output", path}, true},
		{"report piped", onlyStderr, nil, true},
		{"report on the terminal", both, nil, false},
		{"no terminal", neither, []string{"--output", path}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, stderr := reconcileOn(t, tc.terminal, append([]string{"--rescan", "--dry-run"}, tc.args...)...)
			if hasBar(stderr, "Examining") != tc.bar {
				t.Errorf("bar on stderr %v, want %v:\n%q", !tc.bar, tc.bar, stderr)
			}
			if tc.args == nil && !strings.Contains(out, "Would delete: 25 attachments") {
				t.Errorf("report:\n%s", out)
			}
		})
	}
}
