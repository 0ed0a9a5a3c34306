package config

import (
	"fmt"
	"math"
	"net"
	"reflect"
	"strconv"
	"strings"

	"github.com/dustin/go-humanize"
	"github.com/spf13/viper"
)

// Size is a number of bytes, written 1GiB, 512MiB, 1.5GB or 1073741824.
type Size int64

// sizeForms says how a size is written, for messages.
const sizeForms = "give bytes with a unit, such as 1GiB, 512MiB or 2GB (GiB = 1024^3 bytes, GB = 1000^3)"

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

// ParseSize reads a size. A bare number is bytes; a unit is required
// otherwise, since "1G" could be read as either.
func ParseSize(s string) (Size, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, fmt.Errorf("is empty")
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n < 0 {
			return 0, fmt.Errorf("%q is negative", s)
		}
		return Size(n), nil
	}
	if strings.HasPrefix(s, "-") {
		return 0, fmt.Errorf("%q is negative", s)
	}
	n, err := humanize.ParseBytes(s)
	if err != nil {
		return 0, fmt.Errorf("%q is not a size", s)
	}
	if n > math.MaxInt64 {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return Size(n), nil
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
