package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// sampleEvery is how often /proc/<pid>/status is read.
const sampleEvery = 5 * time.Millisecond

// memPeaks are the highest values seen, in bytes.
type memPeaks struct {
	vmHWM   int64 // the kernel's own peak of the resident set
	rssAnon int64 // anonymous memory: Go heap, stacks
	rssFile int64 // file-backed pages: the binary, bbolt's mmap of the index
	samples int
}

// memSampler reads a process's /proc status at a fixed period and keeps the
// peaks.
type memSampler struct {
	done  chan struct{}
	peaks chan memPeaks
}

func (s *memSampler) start(pid int) {
	s.done = make(chan struct{})
	s.peaks = make(chan memPeaks, 1)
	path := fmt.Sprintf("/proc/%d/status", pid)
	go func() {
		var p memPeaks
		t := time.NewTicker(sampleEvery)
		defer t.Stop()
		for {
			readStatus(path, &p)
			select {
			case <-s.done:
				s.peaks <- p
				return
			case <-t.C:
			}
		}
	}()
}

func (s *memSampler) stop() memPeaks {
	close(s.done)
	return <-s.peaks
}

// readStatus folds one reading of a /proc/<pid>/status file into p. A
// process that has exited (a zombie) has no memory lines, and is skipped.
func readStatus(path string, p *memPeaks) {
	data, err := os.ReadFile(path)
	if err != nil {
		return
	}
	seen := false
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		name, value, ok := bytes.Cut(sc.Bytes(), []byte(":"))
		if !ok {
			continue
		}
		var dst *int64
		switch string(name) {
		case "VmHWM":
			dst = &p.vmHWM
		case "RssAnon":
			dst = &p.rssAnon
		case "RssFile":
			dst = &p.rssFile
		default:
			continue
		}
		fields := bytes.Fields(value) // "1234", "kB"
		if len(fields) == 0 {
			continue
		}
		kb, err := strconv.ParseInt(string(fields[0]), 10, 64)
		if err != nil {
			continue
		}
		*dst = max(*dst, kb*1024)
		seen = true
	}
	if seen {
		p.samples++
	}
}

// memResult is one memory run.
type memResult struct {
	rows    int
	elapsed time.Duration
	peaks   memPeaks
	maxRSS  int64
}

// measureMemory runs `reconcile --rescan` over backlogs of each -mem-sizes
// size, every row due, and records the peaks of its memory.
func (b *bench) measureMemory(ctx context.Context) ([]memResult, error) {
	var out []memResult
	for _, n := range b.opts.memSizes {
		ds := dueDataset(n)
		dir := filepath.Join(b.tmp, fmt.Sprintf("mem-%d", n))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("creating run directory: %w", err)
		}
		if err := b.seed(ctx, ds, dir); err != nil {
			return nil, fmt.Errorf("seeding %d due rows: %w", n, err)
		}
		slog.Info("measuring memory", "due", n)
		res, err := b.runReconcile(ctx, b.opts.reconcile, dir, "rescan", &memSampler{}, "--rescan")
		if err != nil {
			return nil, fmt.Errorf("memory run of %d rows: %w", n, err)
		}
		if err := b.verify(ctx, ds); err != nil {
			return nil, fmt.Errorf("memory run of %d rows, checking the result: %w", n, err)
		}
		m := memResult{rows: n, elapsed: res.elapsed, peaks: res.mem, maxRSS: res.maxRSS()}
		if m.peaks.samples == 0 {
			slog.Warn("the process ended before its memory could be read; only maxrss is known", "due", n)
		}
		slog.Info("memory measured", "due", n, "seconds", m.elapsed.Seconds(), "samples", m.peaks.samples,
			"rss_anon", m.peaks.rssAnon, "rss_file", m.peaks.rssFile, "maxrss", m.maxRSS)
		out = append(out, m)
	}
	return out, nil
}
