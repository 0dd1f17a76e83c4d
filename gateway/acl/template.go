package acl

import (
	"errors"
	"fmt"
	"strings"

	"github.com/dualgate/dualgate/mqttcodec"
)

// placeholder stands for a device's client id in a topic template.
const placeholder = "{client}"

// Template is a topic filter whose levels may hold the placeholder
// {client}: the device template and the command filter. A level holds at
// most one placeholder, possibly with text around it ("car-{client}").
type Template struct {
	raw    string
	levels []tlevel
	// filter is the template as an ordinary topic filter: every level
	// holding the placeholder becomes '+'.
	filter string
	// hasClient reports a placeholder somewhere.
	hasClient bool
}

type tlevel struct {
	text      string // the level when it holds no placeholder: a name, "+" or "#"
	pre, post string // the text around the placeholder
	client    bool
}

// CompileTemplate parses s. With needClient, s must hold the placeholder.
func CompileTemplate(s string, needClient bool) (*Template, error) {
	if s == "" {
		return nil, errors.New("empty template")
	}
	parts := strings.Split(s, "/")
	t := &Template{raw: s, levels: make([]tlevel, 0, len(parts))}
	wild := make([]string, len(parts))
	probe := make([]string, len(parts))
	for i, p := range parts {
		switch strings.Count(p, placeholder) {
		case 0:
			t.levels = append(t.levels, tlevel{text: p})
			wild[i], probe[i] = p, p
		case 1:
			pre, post, _ := strings.Cut(p, placeholder)
			if strings.ContainsAny(pre+post, "+#") {
				return nil, fmt.Errorf("template %q: a wildcard shares a level with %s", s, placeholder)
			}
			t.levels = append(t.levels, tlevel{pre: pre, post: post, client: true})
			t.hasClient = true
			wild[i], probe[i] = "+", pre+"x"+post
		default:
			return nil, fmt.Errorf("template %q: %s twice in one level", s, placeholder)
		}
	}
	if err := mqttcodec.ValidTopicFilter([]byte(strings.Join(probe, "/"))); err != nil {
		return nil, fmt.Errorf("template %q: %w", s, err)
	}
	if strings.HasPrefix(s, "$") {
		return nil, fmt.Errorf("template %q: topics starting with '$' are reserved", s)
	}
	if needClient && !t.hasClient {
		return nil, fmt.Errorf("template %q: no %s level", s, placeholder)
	}
	t.filter = strings.Join(wild, "/")
	return t, nil
}

// MatchClient reports whether topic matches t with every placeholder equal
// to clientID. It allocates nothing.
func (t *Template) MatchClient(topic, clientID string) bool {
	if t.hasClient && (clientID == "" || strings.Contains(clientID, "/")) {
		return false
	}
	rest := topic
	for i, l := range t.levels {
		if l.text == "#" && !l.client {
			return true
		}
		lvl, tail, more := strings.Cut(rest, "/")
		switch {
		case l.client:
			if v, ok := l.value(lvl); !ok || v != clientID {
				return false
			}
		case l.text == "+":
		case lvl != l.text:
			return false
		}
		if !more {
			return t.endsAt(i)
		}
		rest = tail
	}
	return false // the topic has more levels than the template
}

// Extract returns the client id a topic names, when the topic matches t
// with every placeholder holding the same non-empty id.
func (t *Template) Extract(topic string) (string, bool) {
	id, seen := "", false
	rest := topic
	for i, l := range t.levels {
		if l.text == "#" && !l.client {
			return id, seen && id != ""
		}
		lvl, tail, more := strings.Cut(rest, "/")
		switch {
		case l.client:
			v, ok := l.value(lvl)
			if !ok || (seen && v != id) {
				return "", false
			}
			id, seen = v, true
		case l.text == "+":
		case lvl != l.text:
			return "", false
		}
		if !more {
			return id, t.endsAt(i) && seen && id != ""
		}
		rest = tail
	}
	return "", false
}

// endsAt reports whether a topic whose last level matched level i matches
// the whole template: i is the last level, or the only one left is '#',
// which also matches its parent level [MQTT-4.7.1-2].
func (t *Template) endsAt(i int) bool {
	n := len(t.levels)
	return i == n-1 || (i == n-2 && t.levels[n-1].text == "#" && !t.levels[n-1].client)
}

// value returns what the placeholder stands for in a topic level.
func (l *tlevel) value(lvl string) (string, bool) {
	if len(lvl) < len(l.pre)+len(l.post) || !strings.HasPrefix(lvl, l.pre) || !strings.HasSuffix(lvl, l.post) {
		return "", false
	}
	return lvl[len(l.pre) : len(lvl)-len(l.post)], true
}

// String is the template as it was written.
func (t *Template) String() string { return t.raw }

// Filter is the template as an ordinary topic filter: every level holding
// the placeholder becomes '+'.
func (t *Template) Filter() string { return t.filter }

// FilterOwner returns the client id whose space (the topics t matches with
// that id) holds every topic that filter can match: a filter inside one
// device's space. A filter that only overlaps it ("#", a '+' where the id
// is) has no owner. It allocates nothing.
func (t *Template) FilterOwner(filter string) (string, bool) {
	id, seen := "", false
	rest := filter
	for i, l := range t.levels {
		if l.text == "#" && !l.client {
			// Whatever follows, '#' included, is inside.
			return id, seen && id != ""
		}
		lvl, tail, more := strings.Cut(rest, "/")
		switch {
		case lvl == "#":
			return "", false // more levels than the template has from here
		case l.client:
			v, ok := l.value(lvl)
			if !ok || v == "" || strings.ContainsAny(v, "+#") || (seen && v != id) {
				return "", false
			}
			id, seen = v, true
		case l.text == "+":
		case lvl != l.text:
			return "", false // a different name, or '+' where the template has a name
		}
		if !more {
			return id, t.endsAt(i) && seen && id != ""
		}
		rest = tail
	}
	return "", false
}
