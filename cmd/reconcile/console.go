package main

import (
	"io"
	"os"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// isTerminal tells whether w is a terminal that redraws a line: not a
// file, a pipe or a journal, nor a CI log or a dumb terminal, which keep
// every redraw.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return false
	}
	return os.Getenv("TERM") != "dumb" && os.Getenv("CI") == ""
}

// console shows the progress of a one-shot run to a person at a terminal:
// a bar on stderr, or on stdout when only stdout is a terminal. Stderr
// comes first so that stdout, piped or not, carries what it always did:
// the summary, or the report. Off a terminal (cron, systemd, pipes) it
// draws nothing. A bar that cannot be drawn is no reason to stop a run:
// its errors are dropped.
type console struct {
	mu        sync.Mutex
	tty       io.Writer // where a bar is drawn; nil: nowhere
	stdoutTTY bool
	bar       *progressbar.ProgressBar
	drawn     time.Time // when show last drew the bar
}

// drawEvery spaces the bar's redraws: an audit of a million rows would
// otherwise write a million bars.
const drawEvery = 100 * time.Millisecond

func newConsole(stdout, stderr io.Writer, terminal func(io.Writer) bool) *console {
	c := &console{stdoutTTY: terminal(stdout)}
	switch {
	case terminal(stderr):
		c.tty = stderr
	case c.stdoutTTY:
		c.tty = stdout
	}
	return c
}

// logs returns the writer for log lines bound for w. On the bar's terminal
// each line clears the bar, which is drawn again under it: the lines
// scroll by above a bar that stays at the bottom.
func (c *console) logs(w io.Writer) io.Writer {
	if w != c.tty {
		return w
	}
	return consoleLog{c}
}

type consoleLog struct{ c *console }

func (l consoleLog) Write(p []byte) (int, error) {
	c := l.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.bar == nil {
		return c.tty.Write(p)
	}
	_ = c.bar.Clear()
	n, err := c.tty.Write(p)
	_ = c.bar.RenderBlank()
	return n, err
}

// show draws the bar at done of total rows, creating it on the first call;
// it does nothing off a terminal. The counts only grow: the reconciler
// reports them so.
func (c *console) show(what string, done, total int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tty == nil || total <= 0 {
		return
	}
	if c.bar == nil {
		c.bar = progressbar.NewOptions(total,
			progressbar.OptionSetWriter(c.tty),
			progressbar.OptionSetDescription(what),
			progressbar.OptionShowCount(),
			progressbar.OptionShowIts(),
			progressbar.OptionSetItsString("rows"),
			progressbar.OptionFullWidth(),
			progressbar.OptionClearOnFinish(),
		)
		_ = c.bar.RenderBlank()
		c.drawn = time.Now()
	}
	if done < total && time.Since(c.drawn) < drawEvery {
		return
	}
	c.drawn = time.Now()
	// The count and the rows are two reads: rows changed in between can
	// make done pass the total.
	if done > c.bar.GetMax() {
		c.bar.ChangeMax(done)
	}
	_ = c.bar.Set(done)
}

// done clears the bar, so the summary that follows starts on a clean line.
func (c *console) done() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.bar != nil {
		_ = c.bar.Finish()
		c.bar = nil
	}
}
