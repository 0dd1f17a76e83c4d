package bridge

import "github.com/dualgate/dualgate/gateway/acl"

// template is the command filter: an acl.Template, the one implementation
// of topic templates with a {client} placeholder, which the gateway's topic
// authorization shares.
type template struct {
	*acl.Template
	// filter is the template as an ordinary topic filter ({client} -> '+').
	filter string
}

// compileTemplate parses s. With needClient, s must hold the placeholder.
func compileTemplate(s string, needClient bool) (*template, error) {
	t, err := acl.CompileTemplate(s, needClient)
	if err != nil {
		return nil, err
	}
	return &template{Template: t, filter: t.Filter()}, nil
}

// extract returns the client id a topic names.
func (t *template) extract(topic string) (string, bool) { return t.Extract(topic) }
