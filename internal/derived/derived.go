// Package derived reads the patterns that name the files an application
// derives from an attachment's file (thumbnails, resized copies), and maps a
// storage key to the storage locations of its derived files, in Go and in
// SQL alike: the purge removes them with their source, and the orphan scan
// tells which files under the table's prefixes some row still owns.
//
// A pattern is a path relative to the storage root with placeholders taken
// from the source's key, "forum/attachments/2025/10/04/leaf.jpg":
//
//	{key}              forum/attachments/2025/10/04/leaf.jpg
//	{key_without_ext}  forum/attachments/2025/10/04/leaf
//	{dir}              forum/attachments/2025/10/04   ("" for a key without folder)
//	{name}             leaf.jpg
//	{stem}             leaf
//	{ext}              .jpg   (with its dot, as Python's os.path.splitext)
//
// A pattern ending in "/" owns every file under that folder; one ending in
// "*" every file of that folder whose name starts so; any other names one
// file. django-imagekit's default namer is "CACHE/images/{key_without_ext}/",
// easy-thumbnails' "{key}.*".
package derived

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// kind says what a location owns.
type kind uint8

const (
	// exact owns the one file the location names.
	exact kind = iota
	// folder owns every file under the location, which ends in "/".
	folder
	// namePrefix owns every file whose key starts with the location and
	// has no "/" after it.
	namePrefix
)

// Aliases name the patterns of well-known Django packages.
var Aliases = map[string]string{
	"imagekit":        "CACHE/images/{key_without_ext}/",
	"easy-thumbnails": "{key}.*",
}

// Pattern is one parsed pattern.
type Pattern struct {
	text  string  // as configured, aliases resolved
	kind  kind    // from its ending
	parts []token // the pattern without its "*"
}

// token is a literal (placeholder empty) or a placeholder.
type token struct {
	literal     string
	placeholder string
}

var placeholders = map[string]bool{
	"key": true, "key_without_ext": true, "dir": true, "name": true, "stem": true, "ext": true,
}

// Parse reads a pattern, or an alias of Aliases.
func Parse(text string) (Pattern, error) {
	if alias, ok := Aliases[text]; ok {
		text = alias
	}
	p := Pattern{text: text}
	body := text
	switch {
	case text == "":
		return p, errors.New("empty pattern")
	case strings.HasPrefix(text, "/"):
		return p, fmt.Errorf("pattern %q: not a relative path: locations are relative to the storage root", text)
	case strings.HasSuffix(text, "*"):
		p.kind, body = namePrefix, strings.TrimSuffix(text, "*")
	case strings.HasSuffix(text, "/"):
		p.kind = folder
	}
	if strings.Contains(body, "//") {
		return p, fmt.Errorf("pattern %q: an empty path element (\"//\")", text)
	}
	if strings.Contains(body, "*") {
		return p, fmt.Errorf("pattern %q: \"*\" may only end it", text)
	}
	anchored := false
	for rest := body; rest != ""; {
		open := strings.IndexByte(rest, '{')
		if closing := strings.IndexByte(rest, '}'); closing >= 0 && (open < 0 || closing < open) {
			return p, fmt.Errorf("pattern %q: unmatched \"}\"", text)
		}
		if open < 0 {
			p.parts = append(p.parts, token{literal: rest})
			break
		}
		if open > 0 {
			p.parts = append(p.parts, token{literal: rest[:open]})
		}
		closing := strings.IndexByte(rest[open:], '}')
		if closing < 0 {
			return p, fmt.Errorf("pattern %q: unmatched \"{\"", text)
		}
		name := rest[open+1 : open+closing]
		if !placeholders[name] {
			return p, fmt.Errorf("pattern %q: unknown placeholder {%s} (known: {key}, {key_without_ext}, {dir}, {name}, {stem}, {ext})", text, name)
		}
		anchored = anchored || name == "key" || name == "key_without_ext" || name == "dir"
		p.parts = append(p.parts, token{placeholder: name})
		rest = rest[open+closing+1:]
	}
	if !anchored {
		// Without the source's folder, one location would be shared by
		// every file of that name in any folder.
		return p, fmt.Errorf("pattern %q: must hold {key}, {key_without_ext} or {dir}, so that a location belongs to the source's folder", text)
	}
	return p, p.checkSamples()
}

// samples are keys a pattern is tried on: its locations must be valid keys
// and must never own the source file itself, or a purge of a row would
// reach the files of its neighbours.
var samples = []string{
	"forum/attachments/2025/10/04/leaf.jpg",
	"forum/attachments/leaf",
	"leaf.tar.gz",
	"f/.hidden",
}

func (p Pattern) checkSamples() error {
	for _, key := range samples {
		loc := p.Location(key)
		if err := validLocation(strings.TrimSuffix(loc, "/")); err != nil {
			return fmt.Errorf("pattern %q: for the key %q it names %q: %w", p.text, key, loc, err)
		}
		if p.Owns(loc, key) {
			return fmt.Errorf("pattern %q: for the key %q it names %q, which would take the source file itself and its neighbours", p.text, key, loc)
		}
	}
	return nil
}

// validLocation refuses what storage.ValidateKey would: the pattern's
// literals are configuration, but a location must stay a clean relative
// path.
func validLocation(loc string) error {
	if loc == "" || strings.HasPrefix(loc, "/") || strings.ContainsAny(loc, "\\\x00") {
		return errors.New("not a relative path")
	}
	for _, elem := range strings.Split(loc, "/") {
		if elem == "" || elem == "." || elem == ".." {
			return errors.New("has an empty, \".\" or \"..\" element")
		}
	}
	return nil
}

// String is the pattern as configured (an alias resolved).
func (p Pattern) String() string { return p.text }

// parts of a key, as the placeholders name them.
type keyParts struct{ key, keyWithoutExt, dir, name, stem, ext string }

func split(key string) keyParts {
	kp := keyParts{key: key, name: key}
	if i := strings.LastIndexByte(key, '/'); i >= 0 {
		kp.dir, kp.name = key[:i], key[i+1:]
	}
	kp.stem = kp.name
	// os.path.splitext: the last dot, unless only dots lead up to it.
	if i := strings.LastIndexByte(kp.name, '.'); i > 0 && strings.TrimLeft(kp.name[:i], ".") != "" {
		kp.stem, kp.ext = kp.name[:i], kp.name[i:]
	}
	kp.keyWithoutExt = strings.TrimSuffix(key, kp.ext)
	return kp
}

func (kp keyParts) get(placeholder string) string {
	switch placeholder {
	case "key":
		return kp.key
	case "key_without_ext":
		return kp.keyWithoutExt
	case "dir":
		return kp.dir
	case "name":
		return kp.name
	case "stem":
		return kp.stem
	}
	return kp.ext
}

// Location is where the pattern puts the derived files of key: a file, a
// folder ending in "/", or a name prefix. An empty {dir} leaves no empty
// path element behind.
func (p Pattern) Location(key string) string {
	kp := split(key)
	var b strings.Builder
	for _, t := range p.parts {
		if t.placeholder == "" {
			b.WriteString(t.literal)
		} else {
			b.WriteString(kp.get(t.placeholder))
		}
	}
	return clean(b.String())
}

var slashes = regexp.MustCompile(`/{2,}`)

func clean(loc string) string {
	return strings.TrimLeft(slashes.ReplaceAllString(loc, "/"), "/")
}

// Owns reports whether the location loc, made by this pattern, owns the
// file key.
func (p Pattern) Owns(loc, key string) bool {
	switch p.kind {
	case folder:
		return strings.HasPrefix(key, loc)
	case namePrefix:
		return strings.HasPrefix(key, loc) && !strings.Contains(key[len(loc):], "/")
	}
	return key == loc
}

// Candidates are the locations of this pattern that could own key: the
// pattern's Location of any source owning key is one of them. The orphan
// scan and the purge ask the database which of them some row has.
func (p Pattern) Candidates(key string) []string {
	lead := p.leadingLiteral()
	var out []string
	add := func(loc string) {
		if strings.HasPrefix(loc, lead) {
			out = append(out, loc)
		}
	}
	switch p.kind {
	case exact:
		add(key)
	case folder:
		for i := 0; i < len(key); i++ {
			if key[i] == '/' {
				add(key[:i+1])
			}
		}
	case namePrefix:
		folder := strings.LastIndexByte(key, '/') + 1
		tail := p.trailingLiteral()
		for i := folder; i <= len(key); i++ {
			if strings.HasSuffix(key[:i], tail) {
				add(key[:i])
			}
		}
	}
	return out
}

// Source is the part of the source's key that loc, a location of this
// pattern, spells: loc without the pattern's leading and trailing
// literals ("CACHE/images/forum/a/leaf/" gives "forum/a/leaf", the key
// without its extension). Where the source's key sits is all it tells.
func (p Pattern) Source(loc string) string {
	return strings.TrimSuffix(strings.TrimPrefix(loc, p.leadingLiteral()), p.trailingLiteral())
}

// leadingLiteral is the text every location of the pattern starts with.
func (p Pattern) leadingLiteral() string {
	if len(p.parts) > 0 && p.parts[0].placeholder == "" {
		return clean(p.parts[0].literal)
	}
	return ""
}

// trailingLiteral is the text every location of the pattern ends with.
func (p Pattern) trailingLiteral() string {
	if n := len(p.parts); n > 0 && p.parts[n-1].placeholder == "" {
		return p.parts[n-1].literal
	}
	return ""
}

// Prefix is the storage prefix under which the pattern puts the derived
// files of keys under keyPrefix (a folder such as "forum/attachments/"):
// the leading literal, followed by keyPrefix when the pattern goes on with
// the source's path. "" means the pattern's files may be anywhere.
func (p Pattern) Prefix(keyPrefix string) string {
	lead := p.leadingLiteral()
	i := 0
	if lead != "" {
		i = 1
	}
	if i < len(p.parts) {
		switch p.parts[i].placeholder {
		case "key", "key_without_ext", "dir":
			return clean(lead + keyPrefix)
		}
	}
	// Without the source's path right after it, the leading literal is as
	// much as is known: up to its last "/".
	return lead[:strings.LastIndexByte(lead, '/')+1]
}

// Regexp matches the keys that the pattern's locations may own, whatever
// the source: a file the scan finds unowned is called derived when it
// matches.
func (p Pattern) Regexp() *regexp.Regexp {
	var b strings.Builder
	b.WriteString("^")
	for _, t := range p.parts {
		switch t.placeholder {
		case "":
			b.WriteString(regexp.QuoteMeta(t.literal))
		case "key", "key_without_ext":
			b.WriteString(".+")
		case "dir":
			b.WriteString(".*")
		case "name":
			b.WriteString("[^/]+")
		case "stem":
			b.WriteString("[^/]*")
		case "ext":
			b.WriteString(`(?:\.[^./]*)?`)
		}
	}
	switch p.kind {
	case folder:
		b.WriteString(".+")
	case namePrefix:
		b.WriteString("[^/]*")
	}
	b.WriteString("$")
	return regexp.MustCompile(b.String())
}

// SQL is the pattern's location for the text expression key, in
// PostgreSQL: IMMUTABLE, so that an index can be built on it, and equal to
// Location for every key.
func (p Pattern) SQL(key string) string {
	// The placeholders, as Location splits the key. The extension is the
	// last dot of the name and what follows, unless only dots lead up to it.
	// Byte-wise: a nondeterministic collation refuses regular expressions.
	// No backslash: with standard_conforming_strings off it would escape
	// the string, not the expression.
	key = "(" + key + ` COLLATE "C")`
	name := "regexp_replace(" + key + `, '^.*/', '')`
	ext := "coalesce(substring(" + name + ` from '^[.]*[^.].*([.][^.]*)$'), '')`
	sql := map[string]string{
		"key":             key,
		"dir":             "coalesce(substring(" + key + ` from '^(.*)/'), '')`,
		"name":            name,
		"ext":             ext,
		"stem":            "left(" + name + ", length(" + name + ") - length(" + ext + "))",
		"key_without_ext": "left(" + key + ", length(" + key + ") - length(" + ext + "))",
	}
	var terms []string
	for _, t := range p.parts {
		if t.placeholder == "" {
			terms = append(terms, "'"+strings.ReplaceAll(t.literal, "'", "''")+"'")
		} else {
			terms = append(terms, sql[t.placeholder])
		}
	}
	return `ltrim(regexp_replace(` + strings.Join(terms, " || ") + `, '/{2,}', '/', 'g'), '/')`
}
