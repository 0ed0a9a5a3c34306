package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// reconcileCmd is the reconcile binary on the benchmark database and media
// root, with its index at index; extra are more environment settings.
func (b *bench) reconcileCmd(ctx context.Context, index string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, b.o.reconcile, args...)
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "RECONCILE_") && !strings.HasPrefix(kv, "GODEBUG=") {
			env = append(env, kv)
		}
	}
	cmd.Env = append(env,
		"RECONCILE_DATABASE_URL="+b.url,
		"RECONCILE_STORAGE_BACKEND=local",
		"RECONCILE_STORAGE_LOCAL_ROOT="+b.media,
		"RECONCILE_INDEX_PATH="+index,
	)
	cmd.Dir = b.dir
	cmd.WaitDelay = 10 * time.Second
	return cmd
}

// service is a running reconcile service whose output goes to a log file.
type service struct {
	cmd *exec.Cmd
	log string
}

// startService starts the service and waits until it streams.
func (b *bench) startService(ctx context.Context, name, index string, env ...string) (*service, error) {
	s := &service{log: filepath.Join(b.dir, name+".log")}
	out, err := os.Create(s.log)
	if err != nil {
		return nil, err
	}
	defer out.Close()
	s.cmd = b.reconcileCmd(ctx, index)
	s.cmd.Env = append(s.cmd.Env, env...)
	s.cmd.Stdout, s.cmd.Stderr = out, out
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start reconcile: %w", err)
	}
	deadline := time.Now().Add(5 * time.Minute)
	for {
		text, _ := os.ReadFile(s.log)
		if strings.Contains(string(text), "streaming changes") {
			return s, nil
		}
		if time.Now().After(deadline) || s.cmd.ProcessState != nil {
			_ = s.stop()
			return nil, fmt.Errorf("the service did not start streaming; its log:\n%s", tail(text))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop sends SIGTERM and waits for the exit.
func (s *service) stop() error {
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	if err := s.cmd.Wait(); err != nil {
		text, _ := os.ReadFile(s.log)
		return fmt.Errorf("reconcile: %w; its log:\n%s", err, tail(text))
	}
	return nil
}

func tail(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	return strings.Join(lines, "\n")
}
