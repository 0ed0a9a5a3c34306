package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// processResult is what a reconcile subprocess left behind.
type processResult struct {
	elapsed time.Duration
	state   *os.ProcessState
	mem     memPeaks // zero unless sampled
}

// maxRSS is the peak resident set the kernel recorded for the process, in
// bytes.
func (p processResult) maxRSS() int64 {
	if ru, ok := p.state.SysUsage().(*syscall.Rusage); ok {
		return ru.Maxrss * 1024 // kilobytes on Linux
	}
	return 0
}

// runReconcile runs the reconcile binary bin with args against the benchmark
// database and storage (b.runEnv), with a fresh index file in dir, and
// its output in dir/<name>.{stdout,stderr}.log. It times from start to exit,
// and samples the memory of the process when mem is non-nil. Anything but
// exit status 0 is an error that carries the tail of both logs.
func (b *bench) runReconcile(ctx context.Context, bin, dir, name string, mem *memSampler, args ...string) (processResult, error) {
	var res processResult
	index := filepath.Join(dir, "index.db")
	if err := os.Remove(index); err != nil && !os.IsNotExist(err) {
		return res, fmt.Errorf("removing old index: %w", err)
	}
	stdoutPath := filepath.Join(dir, name+".stdout.log")
	stderrPath := filepath.Join(dir, name+".stderr.log")
	stdout, err := os.Create(stdoutPath)
	if err != nil {
		return res, fmt.Errorf("creating log: %w", err)
	}
	defer stdout.Close()
	stderr, err := os.Create(stderrPath)
	if err != nil {
		return res, fmt.Errorf("creating log: %w", err)
	}
	defer stderr.Close()

	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(environWithout("RECONCILE_"),
		"RECONCILE_DATABASE_URL="+b.dbURL,
		"RECONCILE_INDEX_PATH="+index,
		"RECONCILE_RETENTION=720h",
	)
	cmd.Env = append(cmd.Env, b.runEnv...)
	cmd.Dir = dir
	cmd.Stdout = stdout
	cmd.Stderr = stderr
	cmd.WaitDelay = 10 * time.Second

	start := time.Now()
	if err := cmd.Start(); err != nil {
		return res, fmt.Errorf("starting %s %s: %w", bin, strings.Join(args, " "), err)
	}
	if mem != nil {
		mem.start(cmd.Process.Pid)
	}
	waitErr := cmd.Wait()
	res.elapsed = time.Since(start)
	if mem != nil {
		res.mem = mem.stop()
	}
	res.state = cmd.ProcessState
	if waitErr != nil {
		where := " (-keep keeps the logs)"
		if b.opts.keep {
			where = " (logs in " + dir + ")"
		}
		return res, fmt.Errorf("reconcile %s: %w%s\n--- stdout, last lines ---\n%s--- stderr, last lines ---\n%s",
			strings.Join(args, " "), waitErr, where, tail(stdoutPath), tail(stderrPath))
	}
	return res, nil
}

// environWithout is the environment without the variables starting with
// prefix, so that nothing of the caller's reconcile setup leaks in.
func environWithout(prefix string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, prefix) {
			env = append(env, kv)
		}
	}
	return env
}

// tail returns the last lines of a log file.
func tail(path string) string {
	const maxLines, maxBytes = 30, 8 << 10
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read: %v)\n", err)
	}
	if len(data) > maxBytes {
		data = data[len(data)-maxBytes:]
	}
	lines := bytes.Split(bytes.TrimRight(data, "\n"), []byte("\n"))
	if len(lines) > maxLines {
		lines = lines[len(lines)-maxLines:]
	}
	if len(lines) == 1 && len(lines[0]) == 0 {
		return "(empty)\n"
	}
	return string(bytes.Join(lines, []byte("\n"))) + "\n"
}
