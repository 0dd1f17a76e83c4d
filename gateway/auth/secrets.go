package auth

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"unicode"
	"unicode/utf8"
)

// maxSecretsLine is the longest line a secrets file may have, in bytes.
const maxSecretsLine = 64 << 10

// maxLineErrors is how many line errors ParseSecrets reports before it stops.
const maxLineErrors = 10

// LineError is an error at one line of a secrets file. Its message never
// holds a secret.
type LineError struct {
	File string // the name given to ParseSecrets, or the path
	Line int    // 1-based
	Err  error
}

func (e *LineError) Error() string { return fmt.Sprintf("%s:%d: %v", e.File, e.Line, e.Err) }

func (e *LineError) Unwrap() error { return e.Err }

// ErrTooManyErrors ends the errors of ParseSecrets when it gave up early.
var ErrTooManyErrors = errors.New("too many errors")

// LoadSecretsFile reads a secrets file (see ParseSecrets) into a map from
// client id to device secret.
func LoadSecretsFile(path string) (map[string][]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("auth: secrets file: %w", err)
	}
	defer f.Close()
	return ParseSecrets(f, path)
}

// ParseSecrets reads device secrets in the secrets file format; name is used
// in error messages. The format, one device per line:
//
//	# comment
//	<client-id> <secret in hex>   # optional comment
//
// Fields are separated by spaces or tabs. The client id is any valid UTF-8
// without whitespace or control characters; it cannot begin with '#'. The
// secret is an even number of hex digits (either case), at least
// 2*MinSecretLen of them. Blank lines and lines whose first field begins with
// '#' are skipped; after the secret, only a comment beginning with '#' may
// follow. A client id may appear once. CRLF line ends and a leading UTF-8 byte
// order mark are accepted.
//
// Every bad line is reported, up to ten, each as a *LineError, joined with
// errors.Join; on error the map is nil.
func ParseSecrets(r io.Reader, name string) (map[string][]byte, error) {
	secrets := make(map[string][]byte)
	firstLine := make(map[string]int) // client id -> line it was defined on
	var errs []error
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), maxSecretsLine)
	line := 0
	for sc.Scan() {
		line++
		text := sc.Text()
		if line == 1 {
			text = strings.TrimPrefix(text, "\uFEFF")
		}
		id, secret, err := parseSecretsLine(text)
		if err == nil && id != "" {
			if prev, dup := firstLine[id]; dup {
				err = fmt.Errorf("client id %q already defined on line %d", id, prev)
			}
		}
		if err != nil {
			errs = append(errs, &LineError{File: name, Line: line, Err: err})
			if len(errs) == maxLineErrors {
				errs = append(errs, ErrTooManyErrors)
				return nil, errors.Join(errs...)
			}
			continue
		}
		if id != "" {
			secrets[id] = secret
			firstLine[id] = line
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			err = fmt.Errorf("line longer than %d bytes: %w", maxSecretsLine, err)
		}
		errs = append(errs, &LineError{File: name, Line: line + 1, Err: err})
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return secrets, nil
}

// parseSecretsLine returns the client id and secret of one line, or "" for a
// blank or comment line.
func parseSecretsLine(text string) (id string, secret []byte, err error) {
	fields := strings.Fields(text)
	if len(fields) == 0 || strings.HasPrefix(fields[0], "#") {
		return "", nil, nil
	}
	id = fields[0]
	if err := checkClientID(id); err != nil {
		return "", nil, err
	}
	if len(fields) == 1 {
		return "", nil, fmt.Errorf("client id %q has no secret: want \"<client-id> <hex secret>\"", id)
	}
	if len(fields) > 2 && !strings.HasPrefix(fields[2], "#") {
		return "", nil, fmt.Errorf("client id %q: unexpected text after the secret (a comment starts with '#')", id)
	}
	secret, err = decodeSecret(fields[1])
	if err != nil {
		return "", nil, fmt.Errorf("client id %q: %w", id, err)
	}
	return id, secret, nil
}

func checkClientID(id string) error {
	if !utf8.ValidString(id) {
		return errors.New("client id is not valid UTF-8")
	}
	if len(id) > 65535 {
		return fmt.Errorf("client id is %d bytes, longer than MQTT allows (65535)", len(id))
	}
	for i, r := range id {
		if unicode.IsControl(r) {
			return fmt.Errorf("client id %q has a control character at byte %d", id, i)
		}
	}
	return nil
}

// decodeSecret decodes a hex secret. Its errors do not quote the secret.
func decodeSecret(s string) ([]byte, error) {
	for i := 0; i < len(s); i++ {
		if _, ok := hexValue(s[i]); !ok {
			return nil, fmt.Errorf("secret is not hex: character %d is not a hex digit", i+1)
		}
	}
	if len(s)%2 != 0 {
		return nil, fmt.Errorf("secret has an odd number of hex digits (%d)", len(s))
	}
	if len(s) < 2*MinSecretLen {
		return nil, fmt.Errorf("secret is %d bytes, want at least %d (%d hex digits)", len(s)/2, MinSecretLen, 2*MinSecretLen)
	}
	b := make([]byte, len(s)/2)
	for i := range b {
		hi, _ := hexValue(s[2*i])
		lo, _ := hexValue(s[2*i+1])
		b[i] = hi<<4 | lo
	}
	return b, nil
}

// hexValue decodes one hex digit of either case.
func hexValue(c byte) (byte, bool) {
	if c >= 'A' && c <= 'F' {
		return c - 'A' + 10, true
	}
	return lowerHexValue(c)
}
