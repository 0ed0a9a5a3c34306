package config

import (
	"fmt"
	"math"
	"net"
	"reflect"
	"regexp"
	"strconv"
	"strings"

	"github.com/dustin/go-humanize"
	"github.com/spf13/viper"
)

// Size is a number of bytes: 1073741824, or with a unit, 1GB, 512MB,
// 1.5GiB. Units are binary, as in postgresql.conf: 1GB and 1GiB are both
// 1024^3 bytes, so a size copied from max_slot_wal_keep_size means the same.
type Size int64

// sizeForms says how a size is written, for messages.
const sizeForms = "give whole bytes, or a number with a unit: kB, MB, GB, TB (binary, as in postgresql.conf; KiB, MiB, GiB, TiB too), such as 1GB or 512MB"

// sizeUnits are the units a size takes, by their lower-case spelling.
var sizeUnits = map[string]float64{
	"b": 1,
	"k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10,
	"m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
	"g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30,
	"t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40,
}

var sizeSyntax = regexp.MustCompile(`^([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)$`)

// checkSizes reads every size key through ParseSize and puts the number
// of bytes back.
func checkSizes(v *viper.Viper) error {
	var lines []string
	for _, key := range keysOf(reflect.TypeFor[Size]()) {
		n, err := ParseSize(fmt.Sprint(v.Get(key)))
		if err != nil {
			lines = append(lines, fmt.Sprintf("%s: %v; %s", key, err, sizeForms))
			continue
		}
		v.Set(key, n)
	}
	return invalid(lines)
}

// ParseSize reads a size. A number without a unit is whole bytes.
func ParseSize(s string) (Size, error) {
	s = strings.TrimSpace(s)
	m := sizeSyntax.FindStringSubmatch(s)
	if m == nil {
		return 0, fmt.Errorf("%q is not a size", s)
	}
	unit, ok := sizeUnits[strings.ToLower(m[2])]
	switch {
	case m[2] == "" && strings.Contains(m[1], "."):
		return 0, fmt.Errorf("%q has a fraction of a byte; give a unit", s)
	case m[2] == "":
		unit = 1
	case !ok:
		return 0, fmt.Errorf("%q has an unknown unit %q", s, m[2])
	}
	n, err := strconv.ParseFloat(m[1], 64)
	if err != nil || n*unit >= math.MaxInt64 {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return Size(n * unit), nil
}

// String writes the size in binary units.
func (s Size) String() string { return humanize.IBytes(uint64(s)) }

// checkListen tells whether addr is host:port with a valid port.
func checkListen(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q is not host:port", addr)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("%q has no valid port", addr)
	}
	return nil
}
