//go:build !linux

package gateway

// cork does nothing where TCP_CORK is missing: the last packet and the
// FIN leave in two segments.
func cork(int) error { return nil }

// uncork does nothing where nothing is corked.
func uncork(int) error { return nil }

// finish does nothing where nothing is corked.
func finish(int) error { return nil }
