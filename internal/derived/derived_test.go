package derived

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/reconcile/reconcile/internal/testdb"
)

func TestLocation(t *testing.T) {
	const key = "forum/attachments/2025/10/04/leaf.jpg"
	for _, tc := range []struct{ pattern, key, want string }{
		{"imagekit", key, "CACHE/images/forum/attachments/2025/10/04/leaf/"},
		{"easy-thumbnails", key, key + "."},
		{"{dir}/thumbs/{stem}_small{ext}", key, "forum/attachments/2025/10/04/thumbs/leaf_small.jpg"},
		{"{dir}/thumbs/{name}", "leaf.jpg", "thumbs/leaf.jpg"},
		{"thumbs/{dir}/{name}", "leaf.jpg", "thumbs/leaf.jpg"},
		{"CACHE/images/{key_without_ext}/", "a/leaf.tar.gz", "CACHE/images/a/leaf.tar/"},
		{"CACHE/images/{key_without_ext}/", "a/.hidden", "CACHE/images/a/.hidden/"},
		{"CACHE/images/{key_without_ext}/", "a/..x", "CACHE/images/a/..x/"},
		{"CACHE/images/{key_without_ext}/", "a/b.", "CACHE/images/a/b/"},
		{"CACHE/images/{key_without_ext}/", "a/.b.c", "CACHE/images/a/.b/"},
	} {
		p, err := Parse(tc.pattern)
		if err != nil {
			t.Fatalf("Parse(%q): %v", tc.pattern, err)
		}
		if got := p.Location(tc.key); got != tc.want {
			t.Errorf("%s.Location(%q) = %q, want %q", tc.pattern, tc.key, got, tc.want)
		}
	}
}

func TestParseRefuses(t *testing.T) {
	for pattern, want := range map[string]string{
		"":                       "empty",
		"thumbs/{name}":          "must hold",
		"{dir}/":                 "source file itself",
		"{key_without_ext}*":     "source file itself",
		"{key}*":                 "source file itself",
		"{dir}/*":                "source file itself",
		"CACHE/{key}/*/x":        "may only end",
		"CACHE/{keys}/":          "unknown placeholder",
		"CACHE/{key/":            "unmatched",
		"CACHE/key}/":            "unmatched",
		"../{key}.thumb":         "element",
		"/abs/{key}.thumb":       "not a relative path",
		"CACHE\\{key}.thumb":     "not a relative path",
		"CACHE/./{key}.thumb":    "element",
		"{key_without_ext}//*":   "empty path element",
		"{key}.thumb/../../etc/": "element",
	} {
		_, err := Parse(pattern)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse(%q) = %v, want an error saying %q", pattern, err, want)
		}
	}
}

func TestOwnsAndCandidates(t *testing.T) {
	imagekit, _ := Parse("imagekit")
	thumbs, _ := Parse("easy-thumbnails")
	exact, _ := Parse("thumbs/{key}")
	const src = "forum/a/leaf.jpg"
	for _, tc := range []struct {
		p    Pattern
		file string
		owns bool
	}{
		{imagekit, "CACHE/images/forum/a/leaf/0123456789abcdef0123456789abcdef.jpg", true},
		{imagekit, "CACHE/images/forum/a/leaf/sub/x.jpg", true},
		{imagekit, "CACHE/images/forum/a/leaf2/x.jpg", false},
		{thumbs, "forum/a/leaf.jpg.100x100_q85.jpg", true},
		{thumbs, "forum/a/leaf.jpg.d/x.jpg", false},
		{thumbs, "forum/a/leaf.jpg", false},
		{exact, "thumbs/forum/a/leaf.jpg", true},
		{exact, "thumbs/forum/a/leaf.jpg.x", false},
	} {
		loc := tc.p.Location(src)
		if got := tc.p.Owns(loc, tc.file); got != tc.owns {
			t.Errorf("%s: Owns(%q, %q) = %v, want %v", tc.p, loc, tc.file, got, tc.owns)
		}
		// A file a source's location owns has that location among its
		// candidates, and matches the pattern's expression.
		if tc.owns {
			found := false
			for _, c := range tc.p.Candidates(tc.file) {
				found = found || c == loc
			}
			if !found {
				t.Errorf("%s: Candidates(%q) = %q lack %q", tc.p, tc.file, tc.p.Candidates(tc.file), loc)
			}
			if !tc.p.Regexp().MatchString(tc.file) {
				t.Errorf("%s: Regexp does not match %q", tc.p, tc.file)
			}
		}
	}
	if got := thumbs.Candidates("forum/a/leaf.jpg.100x100.jpg"); len(got) != 3 {
		t.Errorf("easy-thumbnails candidates of a thumbnail = %q, want the three name prefixes ending in \".\"", got)
	}
}

func TestPrefix(t *testing.T) {
	for pattern, want := range map[string]string{
		"imagekit":                "CACHE/images/forum/attachments/",
		"easy-thumbnails":         "forum/attachments/",
		"thumbs/{dir}/{stem}.png": "thumbs/forum/attachments/",
		"cache/x{name}/{dir}/":    "cache/",
	} {
		p, err := Parse(pattern)
		if err != nil {
			t.Fatal(err)
		}
		if got := p.Prefix("forum/attachments/"); got != want {
			t.Errorf("%s.Prefix = %q, want %q", pattern, got, want)
		}
	}
}

// TestSQLMatchesGo runs each pattern's SQL on PostgreSQL over awkward keys:
// the database must name the same locations as Go, since the purge lists
// with Go's and asks the database with its own.
func TestSQLMatchesGo(t *testing.T) {
	url, pool := testdb.New(t)
	keys := []string{
		"forum/attachments/2025/10/04/leaf.jpg", "leaf.jpg", "leaf", "a/leaf", "a/.hidden", "a/..x",
		"a/b.", "a/.b.c", "a/b.tar.gz", "a.b/c", "a.b/c.d", "a/b c.JPG", "dír/fïle.ñ", "a/'quote'.png",
		"a//b.jpg", "x/y/z/w.v.u", "a/b.c/",
	}
	for _, pattern := range []string{
		"imagekit", "easy-thumbnails", "{dir}/thumbs/{stem}_small{ext}", "thumbs/{dir}/{name}",
		"t/{key_without_ext}-{stem}{ext}/", "'q'/{key}.x",
	} {
		p, err := Parse(pattern)
		if err != nil {
			t.Fatal(err)
		}
		// A database may turn standard_conforming_strings off: the
		// expression must read the same.
		for _, scs := range []string{"on", "off"} {
			// A connection of its own: a statement prepared under the
			// other setting would be reused.
			cfg, err := pgx.ParseConfig(url)
			if err != nil {
				t.Fatal(err)
			}
			cfg.RuntimeParams["standard_conforming_strings"] = scs
			conn, err := pgx.ConnectConfig(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			err = conn.QueryRow(context.Background(),
				`SELECT array_agg(`+p.SQL("k")+` ORDER BY o) FROM unnest($1::text[]) WITH ORDINALITY AS u(k, o)`,
				keys).Scan(&got)
			conn.Close(context.Background())
			if err != nil {
				t.Fatalf("%s: %v", pattern, err)
			}
			for i, key := range keys {
				if want := p.Location(key); got[i] != want {
					t.Errorf("%s, standard_conforming_strings %s: SQL gives %q for %q, Go %q", pattern, scs, got[i], key, want)
				}
			}
		}
		// An index can be built on it only if it is IMMUTABLE.
		if _, err := pool.Exec(context.Background(), `CREATE TABLE IF NOT EXISTS keys (k text)`); err != nil {
			t.Fatal(err)
		}
		if _, err := pool.Exec(context.Background(), `CREATE INDEX ON keys ((`+p.SQL("k")+` COLLATE "C"))`); err != nil {
			t.Errorf("%s: no index on its SQL: %v", pattern, err)
		}
	}
}
