package config

import "testing"

// An empty environment variable must not remove a deletion
// bound that the file sets (a compose file's ${MAX_DELETES} left undefined,
// an Environment= line with nothing after it).
func TestEmptyVariableKeepsTheFilesBudget(t *testing.T) {
	t.Setenv("RECONCILE_DATABASE_URL", "postgres://db/forum")
	t.Setenv("RECONCILE_STORAGE_LOCAL_ROOT", t.TempDir())
	t.Setenv("RECONCILE_SAFETY_MAX_DELETES_PER_HOUR", "")
	cfg, err := Load(writeConfig(t, "safety:\n  max_deletes_per_hour: 500\n"), flags())
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Safety.MaxDeletesPerHour != 500 {
		t.Fatalf("max_deletes_per_hour = %d with 500 in the file and an empty variable: the bound is gone, and nothing says so", cfg.Safety.MaxDeletesPerHour)
	}
}
