package config

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestParseDuration(t *testing.T) {
	const day = 24 * time.Hour
	for in, want := range map[string]time.Duration{
		"0":        0,
		"30d":      30 * day,
		"1d12h":    36 * time.Hour,
		"720h":     30 * day,
		"1h30m":    90 * time.Minute,
		"500ms":    500 * time.Millisecond,
		" 45s ":    45 * time.Second,
		"0s":       0,
		"36500d":   MaxDuration,
		"0d":       0,
		"2d0h0m1s": 2*day + time.Second,
	} {
		got, err := ParseDuration(in)
		if err != nil || got != want {
			t.Errorf("ParseDuration(%q) = %s, %v; want %s", in, got, err, want)
		}
	}
	for in, why := range map[string]string{
		"30":                    "missing a unit",
		"30.5":                  "missing a unit",
		"1e9":                   "missing a unit",
		"-1":                    "missing a unit",
		"":                      "empty",
		"-5m":                   "negative",
		"1.5d":                  "whole number",
		"d":                     "whole number",
		"+3d":                   "whole number",
		"1h2d":                  "whole number",
		"3dd":                   "not a duration",
		"36501d":                "longer than 36500 days",
		"876001h":               "longer than 36500 days",
		"36500d1s":              "longer than 36500 days",
		"9223372036854775807d":  "longer than 36500 days",
		"2562048h":              "longer than 36500 days",
		"99999999999999999999h": "not a duration",
		"30 days":               "whole number",
		"forever":               "not a duration",
	} {
		_, err := ParseDuration(in)
		if err == nil || !strings.Contains(err.Error(), why) {
			t.Errorf("ParseDuration(%q) = %v; want an error saying %q", in, err, why)
		}
	}
}

// Every duration key refuses a bare number from the file (read as
// nanoseconds, `retention: 30` purged everything soft-deleted) and takes
// days; 0 stays zero.
func TestEveryDurationKeyRefusesBareNumbers(t *testing.T) {
	t.Setenv("RECONCILE_DATABASE_URL", "postgres://db/forum")
	t.Setenv("RECONCILE_STORAGE_LOCAL_ROOT", t.TempDir())
	keys := durationKeys()
	if len(keys) < 7 {
		t.Fatalf("found only the duration keys %v", keys)
	}
	for _, key := range keys {
		_, err := Load(writeConfig(t, nested(key, "30")), flags())
		if err == nil || !strings.Contains(err.Error(), key+": 30 is missing a unit") || !strings.Contains(err.Error(), "30d") {
			t.Errorf("%s: 30: error %v; want it refused, naming the key and the accepted forms", key, err)
		}
		if _, err := Load(writeConfig(t, nested(key, "30.0")), flags()); err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("%s: 30.0: error %v; want it refused", key, err)
		}
	}
	cfg, err := Load(writeConfig(t, "retention: 30d\nrescan:\n  every: 0\nsweep:\n  max_wait: 2d\n"), flags())
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Retention != 30*24*time.Hour || cfg.Rescan.Every != 0 || cfg.Sweep.MaxWait != 48*time.Hour {
		t.Fatalf("retention %s, rescan.every %s, sweep.max_wait %s", cfg.Retention, cfg.Rescan.Every, cfg.Sweep.MaxWait)
	}
}

// nested writes key: value as YAML, one level per dot.
func nested(key, value string) string {
	parts := strings.Split(key, ".")
	var b strings.Builder
	for i, p := range parts {
		b.WriteString(strings.Repeat("  ", i) + p + ":")
		if i == len(parts)-1 {
			b.WriteString(" " + value)
		}
		b.WriteString("\n")
	}
	return b.String()
}

func TestShortRetentionIsWarned(t *testing.T) {
	cfg := Config{Retention: 2 * time.Hour, Orphans: Orphans{Grace: time.Hour}}
	if w := cfg.Warnings(); len(w) != 1 || !strings.Contains(w[0], "under a day") {
		t.Fatalf("warnings = %q", w)
	}
	cfg.Retention = 24 * time.Hour
	if w := cfg.Warnings(); len(w) != 0 {
		t.Fatalf("warnings = %q", w)
	}
	cfg.Orphans.Grace = 30 * time.Second
	if w := cfg.Warnings(); len(w) != 1 || !strings.Contains(w[0], "orphans.grace") {
		t.Fatalf("warnings = %q", w)
	}
}

// ParseDuration never panics, accepts only what fits in [0, MaxDuration],
// refuses bare numbers other than 0, and reads back what Go prints.
func FuzzParseDuration(f *testing.F) {
	for _, s := range []string{"30d", "1d12h", "720h", "0", "30", "-5m", "1.5d", "9223372036854775807ns", "36500d", "1e3", "0x10"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseDuration(s)
		if err != nil {
			if errors.Is(err, errNoUnit) && strings.TrimSpace(s) == "0" {
				t.Fatalf("0 refused: %v", err)
			}
			return
		}
		if d < 0 || d > MaxDuration {
			t.Fatalf("ParseDuration(%q) = %s: out of range", s, d)
		}
		if trimmed := strings.TrimSpace(s); trimmed != "0" && strings.Trim(trimmed, "0123456789.") == "" {
			t.Fatalf("ParseDuration(%q) accepted a bare number", s)
		}
		back, err := ParseDuration(d.String())
		if err != nil || back != d {
			t.Fatalf("ParseDuration(%q) = %s, which reads back as %s, %v", s, d, back, err)
		}
		days := fmt.Sprintf("%dd%s", d/(24*time.Hour), d%(24*time.Hour))
		if back, err := ParseDuration(days); err != nil || back != d {
			t.Fatalf("%s as %q reads back as %s, %v", d, days, back, err)
		}
	})
}
