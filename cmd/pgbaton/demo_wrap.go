//go:build linux

package main

import (
	"io"
	"strings"
	"sync"
	"unicode/utf8"
)

// demoWidth is the widest line the demo prints, in runes: a standard
// terminal, with nothing wrapped by the terminal itself.
const demoWidth = 80

// traceIndent is where the text of a trace line starts: the time (9), the
// worker (4) and the verb (9) columns and their gaps.
const traceIndent = 28

// wrapWriter passes text through line by line, breaking every line longer
// than width runes at spaces (or anywhere, for a word longer than a line).
// Continuation lines are indented to the text column of a trace line, or
// two spaces past the line's own indentation. Writes are safe for
// concurrent use; a partial last line is held until its newline or Flush.
type wrapWriter struct {
	mu    sync.Mutex
	w     io.Writer
	width int
	buf   []byte
}

func newWrapWriter(w io.Writer, width int) *wrapWriter {
	return &wrapWriter{w: w, width: width}
}

func (ww *wrapWriter) Write(p []byte) (int, error) {
	ww.mu.Lock()
	defer ww.mu.Unlock()
	ww.buf = append(ww.buf, p...)
	for {
		i := strings.IndexByte(string(ww.buf), '\n')
		if i < 0 {
			return len(p), nil
		}
		line := string(ww.buf[:i])
		ww.buf = ww.buf[i+1:]
		if _, err := io.WriteString(ww.w, wrapLine(line, ww.width)+"\n"); err != nil {
			return len(p), err
		}
	}
}

// Flush writes a partial last line, wrapped.
func (ww *wrapWriter) Flush() {
	ww.mu.Lock()
	defer ww.mu.Unlock()
	if len(ww.buf) > 0 {
		printf(ww.w, "%s", wrapLine(string(ww.buf), ww.width))
		ww.buf = nil
	}
}

// wrapLine breaks line into lines of at most width runes.
func wrapLine(line string, width int) string {
	line = strings.TrimRight(line, " ")
	if utf8.RuneCountInString(line) <= width {
		return line
	}
	indent := continuationIndent(line)
	var out []string
	first := true
	for utf8.RuneCountInString(line) > width {
		cut := breakAt(line, width, len(indent))
		out = append(out, strings.TrimRight(line[:cut], " "))
		rest := strings.TrimLeft(line[cut:], " ")
		if rest == "" {
			line = ""
			break
		}
		line = indent + rest
		first = false
	}
	if line != "" || first {
		out = append(out, line)
	}
	return strings.Join(out, "\n")
}

// continuationIndent is the indentation of the lines a long line wraps to.
func continuationIndent(line string) string {
	if isTraceLine(line) {
		return strings.Repeat(" ", traceIndent)
	}
	n := len(line) - len(strings.TrimLeft(line, " "))
	return strings.Repeat(" ", min(n+2, 40))
}

// isTraceLine recognises "   +1.234s  w1    granted    ...".
func isTraceLine(line string) bool {
	if len(line) < traceIndent {
		return false
	}
	t := strings.TrimLeft(line[:9], " ")
	return strings.HasPrefix(t, "+") && strings.HasSuffix(t, "s") && line[9:11] == "  "
}

// breakAt returns the byte offset where a line of more than width runes is
// cut: after the last space within width that leaves more than the
// indentation on the line, else at width runes.
func breakAt(line string, width, indent int) int {
	runes, lastSpace, hard := 0, -1, len(line)
	for i, r := range line {
		if runes == width {
			hard = i
			break
		}
		if r == ' ' && runes > indent {
			lastSpace = i
		}
		runes++
	}
	if lastSpace > 0 {
		return lastSpace
	}
	return hard
}
