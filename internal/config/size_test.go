package config

import (
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Size
		err  string
	}{
		{"1GiB", 1 << 30, ""},
		{"512MiB", 512 << 20, ""},
		{"2GB", 2 << 30, ""}, // as postgresql.conf reads it
		{"10gb", 10 << 30, ""},
		{"1.5GB", 3 << 29, ""},
		{"64kB", 64 << 10, ""},
		{"1073741824", 1 << 30, ""},
		{" 1 GiB ", 1 << 30, ""},
		{"", 0, "not a size"},
		{"-1GiB", 0, "not a size"},
		{"-5", 0, "not a size"},
		{"-0", 0, "not a size"},
		{"1.5", 0, "fraction"},
		{"1e9", 0, "not a size"},
		{"1PB", 0, "unknown unit"},
		{"lots", 0, "not a size"},
		{"99999999999TB", 0, "too large"},
	} {
		got, err := ParseSize(c.in)
		switch {
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("ParseSize(%q) = %d, %v; want an error with %q", c.in, got, err, c.err)
		case c.err == "" && (err != nil || got != c.want):
			t.Errorf("ParseSize(%q) = %d, %v; want %d", c.in, got, err, c.want)
		}
	}
}

func TestHTTPListen(t *testing.T) {
	t.Setenv("RECONCILE_DATABASE_URL", "postgres://forum@db/forum")
	t.Setenv("RECONCILE_STORAGE_LOCAL_ROOT", t.TempDir())

	cfg, err := Load("", flags())
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.HTTP.Address(true); got != DefaultListen {
		t.Errorf("service address left out = %q, want %q", got, DefaultListen)
	}
	if got := cfg.HTTP.Address(false); got != "" {
		t.Errorf("one-shot address left out = %q, want none", got)
	}
	if cfg.Replication.MaxRetainedWAL != 1<<30 {
		t.Errorf("replication.max_retained_wal = %d, want 1GiB", cfg.Replication.MaxRetainedWAL)
	}

	t.Setenv("RECONCILE_HTTP_LISTEN", "")
	if cfg, err = Load("", flags()); err != nil {
		t.Fatal(err)
	}
	if got := cfg.HTTP.Address(true); got != "" {
		t.Errorf(`service address with RECONCILE_HTTP_LISTEN="" = %q, want none`, got)
	}

	t.Setenv("RECONCILE_HTTP_LISTEN", "127.0.0.1:9999")
	if cfg, err = Load("", flags()); err != nil {
		t.Fatal(err)
	}
	if got := cfg.HTTP.Address(false); got != "127.0.0.1:9999" {
		t.Errorf("one-shot address set = %q", got)
	}

	for _, bad := range []string{"9999", "localhost:http", "127.0.0.1:70000"} {
		t.Setenv("RECONCILE_HTTP_LISTEN", bad)
		if _, err := Load("", flags()); err == nil || !strings.Contains(err.Error(), "http.listen") {
			t.Errorf("http.listen %q: %v, want an error naming the key", bad, err)
		}
	}
	t.Setenv("RECONCILE_HTTP_LISTEN", "")
	path := writeConfig(t, "replication:\n  max_retained_wal: 1G\n")
	if _, err := Load(path, flags()); err != nil {
		t.Errorf("1G: %v", err)
	}
	path = writeConfig(t, "replication:\n  max_retained_wal: 0\n")
	if _, err := Load(path, flags()); err == nil || !strings.Contains(err.Error(), "replication.max_retained_wal") {
		t.Errorf("max_retained_wal 0: %v", err)
	}
}
