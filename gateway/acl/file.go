package acl

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strings"

	"github.com/dualgate/dualgate/mqttcodec"
)

// Access bits of a rule, as in Mosquitto's acl_file.
const (
	accessRead  uint8 = 1 << iota // deliver messages on matching topics
	accessWrite                   // publish (and set a Will) on matching topics
)

// rule is one topic or pattern line of an acl file.
type rule struct {
	levels  []string // the topic filter, split on '/'
	access  uint8    // accessRead|accessWrite; 0 with deny
	deny    bool
	pattern bool // %c and %u levels stand for the client id and user name
	user    bool // a pattern with a %u level: skipped for clients without a user name
	line    int
}

// rules is a parsed acl file. Within each list the deny rules come first,
// then the grants in file order, as Mosquitto keeps them.
type rules struct {
	anon     []rule            // topic lines before the first user line: clients without a user name
	users    map[string][]rule // topic lines after "user NAME"
	patterns []rule            // pattern lines, wherever they are: every client
	// usernames reports that some rule depends on the user name.
	usernames bool
}

// parseFile reads and parses an acl file.
func parseFile(path string) (*rules, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("acl: %w", err)
	}
	r, err := parse(b)
	if err != nil {
		return nil, fmt.Errorf("acl %s: %w", path, err)
	}
	return r, nil
}

// parse reads Mosquitto's acl_file format, strictly: every line is a
// comment (first non-blank character '#'), blank, "user NAME",
// "topic [ACCESS] TOPIC" or "pattern [ACCESS] TOPIC", with ACCESS one of
// read, write, readwrite (the default) or deny. Anything else is an error
// naming its line.
func parse(b []byte) (*rules, error) {
	r := &rules{users: map[string][]rule{}}
	var user *string
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		kw, rest, _ := strings.Cut(line, " ")
		rest = strings.TrimSpace(rest)
		switch kw {
		case "user":
			if rest == "" {
				return nil, fmt.Errorf("line %d: user needs a name", n)
			}
			name := rest
			user = &name
			r.usernames = true
			if _, ok := r.users[name]; !ok {
				r.users[name] = nil
			}
		case "topic", "pattern":
			ru, err := parseRule(kw == "pattern", rest, n)
			if err != nil {
				return nil, err
			}
			switch {
			case ru.pattern:
				r.patterns = add(r.patterns, ru)
				r.usernames = r.usernames || ru.user
			case user == nil:
				r.anon = add(r.anon, ru)
			default:
				r.users[*user] = add(r.users[*user], ru)
			}
		default:
			return nil, fmt.Errorf("line %d: unknown keyword %q (want topic, pattern or user)", n, kw)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("line %d: %w", n+1, err)
	}
	return r, nil
}

// add puts a deny rule after the other deny rules, a grant at the end.
func add(list []rule, ru rule) []rule {
	if !ru.deny {
		return append(list, ru)
	}
	i := 0
	for i < len(list) && list[i].deny {
		i++
	}
	list = append(list, rule{})
	copy(list[i+1:], list[i:])
	list[i] = ru
	return list
}

func parseRule(pattern bool, rest string, n int) (rule, error) {
	kw := "topic"
	if pattern {
		kw = "pattern"
	}
	if rest == "" {
		return rule{}, fmt.Errorf("line %d: %s needs a topic", n, kw)
	}
	ru := rule{access: accessRead | accessWrite, pattern: pattern, line: n}
	first, topic, hasTopic := strings.Cut(rest, " ")
	switch first {
	case "read":
		ru.access = accessRead
	case "write":
		ru.access = accessWrite
	case "readwrite":
	case "deny":
		ru.access, ru.deny = 0, true
	default:
		if hasTopic {
			return rule{}, fmt.Errorf("line %d: unknown access %q (want read, write, readwrite or deny)", n, first)
		}
		// One word: the topic, with the default access. (A topic holding
		// spaces needs the access word first, as in Mosquitto.)
		first, topic, hasTopic = "", rest, true
	}
	topic = strings.TrimSpace(topic)
	if !hasTopic || topic == "" {
		return rule{}, fmt.Errorf("line %d: %s %s needs a topic", n, kw, first)
	}
	if err := mqttcodec.ValidTopicFilter([]byte(topic)); err != nil || strings.HasPrefix(topic, "$share/") {
		return rule{}, fmt.Errorf("line %d: %q is not a valid topic filter", n, topic)
	}
	ru.levels = strings.Split(topic, "/")
	for _, l := range ru.levels {
		for _, v := range []string{"%c", "%u"} {
			if !strings.Contains(l, v) {
				continue
			}
			switch {
			case !pattern:
				return rule{}, fmt.Errorf("line %d: %s is substituted only in pattern lines, not in topic lines", n, v)
			case l != v:
				return rule{}, fmt.Errorf("line %d: %s must be a whole topic level, not part of %q", n, v, l)
			}
			ru.user = ru.user || v == "%u"
		}
	}
	return ru, nil
}

// allowed applies the rules to a concrete topic (want: accessRead or
// accessWrite): the client's own list (its user's, or the anonymous one),
// then the patterns; in each, the first rule that matches and denies, or
// grants want, decides. Nothing granted is denied.
func (r *rules) allowed(clientID, username, topic string, want uint8) bool {
	if v, ok := decide(r.list(username), clientID, username, want, func(ru *rule) bool {
		return matchTopic(ru, topic, clientID, username)
	}); ok {
		return v
	}
	if len(r.patterns) > 0 && strings.ContainsAny(username, "+#") {
		return false // a user name that would be a wildcard once substituted
	}
	v, _ := decide(r.patterns, clientID, username, want, func(ru *rule) bool {
		return matchTopic(ru, topic, clientID, username)
	})
	return v
}

// subscribable applies the rules to a subscription filter: refused when a
// deny rule covers the whole filter, accepted when a read rule can match
// some topic of it (the messages themselves are checked one by one, with
// allowed, when they are delivered).
func (r *rules) subscribable(clientID, username, filter string) bool {
	if v, ok := decide(r.list(username), clientID, username, accessRead, func(ru *rule) bool {
		if ru.deny {
			return covers(ru, filter, clientID, username)
		}
		return overlaps(ru, filter, clientID, username)
	}); ok {
		return v
	}
	if len(r.patterns) > 0 && strings.ContainsAny(username, "+#") {
		return false
	}
	v, _ := decide(r.patterns, clientID, username, accessRead, func(ru *rule) bool {
		if ru.deny {
			return covers(ru, filter, clientID, username)
		}
		return overlaps(ru, filter, clientID, username)
	})
	return v
}

func (r *rules) list(username string) []rule {
	if username == "" {
		return r.anon
	}
	return r.users[username]
}

// decide returns the verdict of the first rule of list that matches and
// denies or grants want; ok false when none does.
func decide(list []rule, clientID, username string, want uint8, match func(*rule) bool) (allowed, ok bool) {
	for i := range list {
		ru := &list[i]
		if ru.user && username == "" {
			continue
		}
		if !ru.deny && ru.access&want == 0 {
			continue
		}
		if match(ru) {
			return !ru.deny, true
		}
	}
	return false, false
}

// level returns the rule level as it applies to this client: %c and %u
// substituted in patterns.
func (ru *rule) level(i int, clientID, username string) string {
	l := ru.levels[i]
	if ru.pattern {
		switch l {
		case "%c":
			return clientID
		case "%u":
			return username
		}
	}
	return l
}

// matchTopic reports whether the rule matches a topic name [MQTT-4.7]. A
// substituted level matches only the whole level it stands for. It
// allocates nothing.
func matchTopic(ru *rule, topic, clientID, username string) bool {
	if strings.HasPrefix(topic, "$") != strings.HasPrefix(ru.levels[0], "$") {
		return false // [MQTT-4.7.2-1], and Mosquitto's rule for '$' topics
	}
	rest := topic
	for i := range ru.levels {
		l := ru.level(i, clientID, username)
		sub := ru.levels[i] != l // substituted: compare, never a wildcard
		if !sub && l == "#" {
			return true
		}
		lvl, tail, more := strings.Cut(rest, "/")
		if (sub || l != "+") && lvl != l {
			return false
		}
		if !more {
			// '#' after the last level matches its parent too.
			return i == len(ru.levels)-1 || (i == len(ru.levels)-2 && ru.levels[i+1] == "#")
		}
		rest = tail
	}
	return false
}

// covers reports whether every topic the filter can match, matches the
// rule.
func covers(ru *rule, filter, clientID, username string) bool {
	if strings.HasPrefix(filter, "$") != strings.HasPrefix(ru.levels[0], "$") {
		return false
	}
	rest := filter
	for i := range ru.levels {
		l := ru.level(i, clientID, username)
		sub := ru.levels[i] != l
		if !sub && l == "#" {
			return true
		}
		fl, tail, more := strings.Cut(rest, "/")
		switch {
		case fl == "#":
			return false // the filter goes deeper than the rule
		case !sub && l == "+":
		case fl != l:
			return false // another name, or a '+' where the rule has a name
		}
		if !more {
			return i == len(ru.levels)-1 || (i == len(ru.levels)-2 && ru.levels[i+1] == "#")
		}
		rest = tail
	}
	return false
}

// overlaps reports whether some topic matches both the filter and the rule.
func overlaps(ru *rule, filter, clientID, username string) bool {
	if strings.HasPrefix(filter, "$") != strings.HasPrefix(ru.levels[0], "$") {
		return false
	}
	rest := filter
	for i := range ru.levels {
		l := ru.level(i, clientID, username)
		sub := ru.levels[i] != l
		if !sub && l == "#" {
			return true
		}
		fl, tail, more := strings.Cut(rest, "/")
		switch {
		case fl == "#":
			return true
		case fl == "+", !sub && l == "+":
		case fl != l:
			return false
		}
		if !more {
			return i == len(ru.levels)-1 || (i == len(ru.levels)-2 && ru.levels[i+1] == "#")
		}
		rest = tail
	}
	// The rule ended first: only a filter whose next level is a final '#'
	// also matches the rule's last level (its parent).
	return rest == "#"
}
