package periodic

import (
	"fmt"
	"math/bits"
	"slices"
	"strconv"
	"strings"
)

// This file holds the cron expression parser. The grammar and its meaning
// follow ISC/Vixie cron as shipped by Debian (crontab(5), cron(8)):
//
//	field   = "*" ["/" step] | elem {"," elem}    (a "*" element must come first)
//	elem    = value ["-" value ["/" step]]
//	value   = number | name                    (names: jan..dec, sun..sat)
//
// Ranges are minute 0-59, hour 0-23, day-of-month 1-31, month 1-12,
// day-of-week 0-7 (0 and 7 are Sunday). A field whose text starts with "*"
// is a wildcard field: it decides how day-of-month and day-of-week combine
// and whether the job is a fixed-time job (see doc.go, "Schedules and
// daylight saving time"). Vixie cron accepts a "*" element anywhere in a
// list; this parser requires it first so that the field's canonical form
// keeps its meaning. "5/15" (a step after a single value) is refused, as in
// Vixie cron: write "5-59/15".

// cronField is one parsed field: the set of values and whether its text
// started with "*" (with the step of that "*", 1 for a bare "*").
type cronField struct {
	set      uint64
	star     bool
	starStep int
}

type cronFieldDef struct {
	name     string
	min, max int
	names    []string
}

var cronFieldDefs = [5]cronFieldDef{
	{"minute", 0, 59, nil},
	{"hour", 0, 23, nil},
	{"day-of-month", 1, 31, nil},
	{"month", 1, 12, []string{"jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"}},
	{"day-of-week", 0, 7, []string{"sun", "mon", "tue", "wed", "thu", "fri", "sat"}},
}

// cronSpec is a parsed five-field expression.
type cronSpec struct {
	f [5]cronField // minute, hour, dom, month, dow (dow bit 7 folded into 0)
	// minutes of the day that match (hour and minute fields), ascending.
	tods []int32
}

var cronDescriptors = map[string]string{
	"@yearly":   "0 0 1 1 *",
	"@annually": "0 0 1 1 *",
	"@monthly":  "0 0 1 * *",
	"@weekly":   "0 0 * * 0",
	"@daily":    "0 0 * * *",
	"@midnight": "0 0 * * *",
	"@hourly":   "0 * * * *",
}

// parseCronFields parses the five fields (or a descriptor) without a zone
// prefix.
func parseCronFields(src string) (*cronSpec, error) {
	if strings.HasPrefix(src, "@") {
		d, ok := cronDescriptors[strings.ToLower(src)]
		if !ok {
			return nil, fmt.Errorf("unknown descriptor %q (known: @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly)", src)
		}
		src = d
	}
	fields := strings.Fields(src)
	if len(fields) != 5 {
		return nil, fmt.Errorf("%d fields, want 5", len(fields))
	}
	s := &cronSpec{}
	for i, text := range fields {
		f, err := parseCronField(text, cronFieldDefs[i])
		if err != nil {
			return nil, err
		}
		s.f[i] = f
	}
	if s.f[4].set&(1<<7) != 0 {
		s.f[4].set = s.f[4].set&^(1<<7) | 1
	}
	for h := 0; h < 24; h++ {
		if s.f[1].set&(1<<h) == 0 {
			continue
		}
		for m := 0; m < 60; m++ {
			if s.f[0].set&(1<<m) != 0 {
				s.tods = append(s.tods, int32(h*60+m))
			}
		}
	}
	return s, nil
}

func parseCronField(text string, def cronFieldDef) (cronField, error) {
	var f cronField
	bad := func(format string, a ...any) (cronField, error) {
		return cronField{}, fmt.Errorf("%s field %q: %s", def.name, text, fmt.Sprintf(format, a...))
	}
	for i, elem := range strings.Split(text, ",") {
		if elem == "" {
			return bad("empty list element")
		}
		lo, hi, step := def.min, def.max, 1
		rangeText, stepText, hasStep := strings.Cut(elem, "/")
		if hasStep {
			n, err := strconv.Atoi(stepText)
			if err != nil || n < 1 || n > def.max {
				return bad("step %q must be a number in [1, %d]", stepText, def.max)
			}
			step = n
		}
		switch rangeText {
		case "*":
			if i != 0 {
				return bad(`"*" must be the first element of its field`)
			}
			f.star, f.starStep = true, step
		default:
			a, b, isRange := strings.Cut(rangeText, "-")
			var err error
			if lo, err = cronValue(a, def); err != nil {
				return bad("%v", err)
			}
			hi = lo
			if isRange {
				if hi, err = cronValue(b, def); err != nil {
					return bad("%v", err)
				}
				if hi < lo {
					return bad("range %d-%d runs backwards", lo, hi)
				}
			} else if hasStep {
				return bad(`a step needs a range or "*": write "%s-%d/%d"`, a, def.max, step)
			}
		}
		for v := lo; v <= hi; v += step {
			f.set |= 1 << v
		}
	}
	return f, nil
}

func cronValue(s string, def cronFieldDef) (int, error) {
	if s == "" {
		return 0, fmt.Errorf("missing value")
	}
	if i := slices.Index(def.names, strings.ToLower(s)); i >= 0 {
		if def.min == 1 {
			return i + 1, nil
		}
		return i, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || s[0] == '+' || s[0] == '-' {
		if def.names != nil {
			return 0, fmt.Errorf("%q is neither a number in [%d, %d] nor a name (%s..%s)", s, def.min, def.max, def.names[0], def.names[len(def.names)-1])
		}
		return 0, fmt.Errorf("%q is not a number in [%d, %d]", s, def.min, def.max)
	}
	if n < def.min || n > def.max {
		return 0, fmt.Errorf("%d is out of [%d, %d]", n, def.min, def.max)
	}
	return n, nil
}

// fixed reports whether this is a fixed-time job in the sense of cron(8):
// neither the minute nor the hour field starts with "*".
func (s *cronSpec) fixed() bool { return !s.f[0].star && !s.f[1].star }

// dateMatches reports whether the local date matches the day-of-month,
// month and day-of-week fields. As in Vixie cron, day-of-month and
// day-of-week are ANDed when either field starts with "*", ORed otherwise.
func (s *cronSpec) dateMatches(month, day, weekday int) bool {
	if s.f[3].set&(1<<month) == 0 {
		return false
	}
	dom := s.f[2].set&(1<<day) != 0
	dow := s.f[4].set&(1<<weekday) != 0
	if s.f[2].star || s.f[4].star {
		return dom && dow
	}
	return dom || dow
}

// canonical formats the fields so that parsing them again gives the same
// spec: wildcard fields as "*" or "*/step" followed by the values the star
// does not cover, other fields as ascending values and ranges.
func (s *cronSpec) canonical() string {
	parts := make([]string, 5)
	for i, f := range s.f {
		def := cronFieldDefs[i]
		set := f.set
		var elems []string
		if f.star {
			var starSet uint64
			for v := def.min; v <= def.max; v += f.starStep {
				starSet |= 1 << v
			}
			if i == 4 && starSet&(1<<7) != 0 {
				starSet = starSet&^(1<<7) | 1
			}
			if f.starStep == 1 {
				elems = append(elems, "*")
			} else {
				elems = append(elems, "*/"+strconv.Itoa(f.starStep))
			}
			set &^= starSet
		}
		for set != 0 {
			lo := bits.TrailingZeros64(set)
			hi := lo
			for hi+1 <= def.max && set&(1<<(hi+1)) != 0 {
				hi++
			}
			if hi == lo {
				elems = append(elems, strconv.Itoa(lo))
			} else {
				elems = append(elems, strconv.Itoa(lo)+"-"+strconv.Itoa(hi))
			}
			for v := lo; v <= hi; v++ {
				set &^= 1 << v
			}
		}
		parts[i] = strings.Join(elems, ",")
	}
	return strings.Join(parts, " ")
}
