package config

import (
	"errors"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"time"
)

// MaxDays bounds --days and every duration: a hundred years is longer than
// any retention anyone means, and far from time.Duration's overflow at 292
// years, so no sum of a duration and a date in reconcile can wrap around.
const MaxDays = 36500

// MaxDuration is MaxDays as a duration.
const MaxDuration = MaxDays * 24 * time.Hour

// durationForms is what every error about a duration says is accepted.
const durationForms = "write it with a unit: 30d (days), 720h, 90m, 45s or 500ms, or a Go duration such as 1d12h or 1h30m"

// errNoUnit marks a bare number given for a duration: read as
// nanoseconds it would turn `retention: 30` into 30 ns.
var errNoUnit = errors.New("is missing a unit")

// ParseDuration reads a duration as the configuration takes it: a Go
// duration ("720h", "1h30m", "500ms"), whole days ("30d"), or days followed
// by a Go duration ("1d12h"). A bare number is refused, except 0, which is
// zero in any unit. Negative durations and durations over MaxDuration are
// refused, so no arithmetic on them can overflow.
func ParseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if s == "0" {
		return 0, nil
	}
	if s == "" {
		return 0, errors.New("is empty")
	}
	if _, err := strconv.ParseFloat(s, 64); err == nil {
		return 0, fmt.Errorf("%q %w", s, errNoUnit)
	}
	if strings.HasPrefix(s, "-") {
		return 0, fmt.Errorf("%q is negative", s)
	}
	days, rest := int64(0), s
	if i := strings.IndexByte(s, 'd'); i >= 0 {
		n, err := strconv.ParseInt(s[:i], 10, 64)
		if err != nil || n < 0 || strings.HasPrefix(s, "+") {
			return 0, fmt.Errorf("%q: days must be a whole number before d, as in 30d or 1d12h", s)
		}
		if n > MaxDays {
			return 0, fmt.Errorf("%q is longer than %d days", s, MaxDays)
		}
		days, rest = n, s[i+1:]
	}
	var d time.Duration
	if rest != "" {
		var err error
		if d, err = time.ParseDuration(rest); err != nil {
			// time.ParseDuration says the same of an overflow.
			return 0, fmt.Errorf("%q is not a duration, or is longer than %d days", s, MaxDays)
		}
		if d < 0 {
			return 0, fmt.Errorf("%q is negative", s)
		}
	}
	// Both parts are at most MaxDuration, itself far below the largest
	// Duration: the sum cannot wrap.
	if d > MaxDuration {
		return 0, fmt.Errorf("%q is longer than %d days", s, MaxDays)
	}
	d += time.Duration(days) * 24 * time.Hour
	if d > MaxDuration {
		return 0, fmt.Errorf("%q is longer than %d days", s, MaxDays)
	}
	return d, nil
}

// durationKeys lists the key of every time.Duration field of Config, so that
// none escapes ParseDuration.
func durationKeys() []string { return keysOf(reflect.TypeFor[time.Duration]()) }

// keysOf lists the keys of the fields of Config of type t.
func keysOf(t reflect.Type) []string {
	var keys []string
	var walk func(st reflect.Type, prefix string)
	walk = func(st reflect.Type, prefix string) {
		for i := range st.NumField() {
			f := st.Field(i)
			if !f.IsExported() {
				continue
			}
			key := prefix + f.Tag.Get("mapstructure")
			switch {
			case f.Type == t:
				keys = append(keys, key)
			case f.Type.Kind() == reflect.Struct:
				walk(f.Type, key+".")
			}
		}
	}
	walk(reflect.TypeFor[Config](), "")
	return keys
}

// durationValue reads the value a source gave a duration key: a string from
// a file or the environment, a number from a file, a Duration from --days.
func durationValue(raw any) (time.Duration, error) {
	switch v := raw.(type) {
	case time.Duration:
		if v < 0 || v > MaxDuration {
			return 0, fmt.Errorf("%s is out of range (0 to %d days)", v, MaxDays)
		}
		return v, nil
	case string:
		return ParseDuration(v)
	case int, int8, int16, int32, int64, uint, uint8, uint16, uint32, uint64, float32, float64:
		if f := reflect.ValueOf(v).Convert(reflect.TypeFor[float64]()).Float(); f == 0 && !math.Signbit(f) {
			return 0, nil
		}
		return 0, fmt.Errorf("%v %w", v, errNoUnit)
	default:
		return 0, fmt.Errorf("must be a duration, got %T", raw)
	}
}
