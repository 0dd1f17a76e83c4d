package auth

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dualgate/dualgate/internal/control"
)

// newLoggedTokens returns Tokens with a replay log in dir, a clock it
// shares with the caller, and a flush interval long enough that only the
// test (or a kick) writes.
func newLoggedTokens(t *testing.T, dir string, clock *testClock) *Tokens {
	t.Helper()
	tk := newTestTokens(t, TokenConfig{
		Secrets:       map[string][]byte{"dev-a": secretA, "dev-b": secretB},
		Dir:           dir,
		FlushInterval: time.Hour,
		Clock:         clock.now,
	})
	t.Cleanup(func() { _ = tk.Close() })
	return tk
}

// crash ends a Tokens as a killed process would: the flusher stops and the
// lock goes, and nothing more is written.
func crash(tk *Tokens) {
	l := tk.log
	l.closeOnce.Do(func() {
		close(l.stop)
		<-l.done
		_ = l.f.Close()
		_ = l.lock.Close()
	})
}

func plainAuth(tk *Tokens, id string, secret []byte, ts time.Time, nonce string) Result {
	return tk.Authenticate(&Request{ClientID: id, Password: []byte(control.MakeToken(secret, id, ts, nonce))})
}

// A clean stop writes every accepted token: after it, each is a replay, and
// new tokens are taken at once.
func TestReplayLogCleanRestart(t *testing.T) {
	dir := t.TempDir()
	clock := newTestClock(epoch)
	tk := newLoggedTokens(t, dir, clock)
	if got := plainAuth(tk, "dev-a", secretA, epoch, "flushed01"); !got.OK {
		t.Fatalf("first token: %+v", got)
	}
	if err := tk.log.flush(); err != nil {
		t.Fatal(err)
	}
	if got := plainAuth(tk, "dev-a", secretA, epoch, "pending01"); !got.OK {
		t.Fatalf("second token: %+v", got)
	}
	if err := tk.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if got := plainAuth(tk, "dev-b", secretB, epoch, "afterclose"); got.OK || got.Reason != ReasonServerBusy {
		t.Fatalf("token after Close: %+v, want server busy", got)
	}
	if err := tk.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}

	clock.add(5 * time.Second)
	tk2 := newLoggedTokens(t, dir, clock)
	for _, nonce := range []string{"flushed01", "pending01"} {
		if got := plainAuth(tk2, "dev-a", secretA, epoch, nonce); got != (Result{Reason: ReasonNotAuthorized, Msg: msgReplayed}) {
			t.Fatalf("token %s after a clean restart: %+v, want a replay", nonce, got)
		}
	}
	if got := plainAuth(tk2, "dev-a", secretA, clock.now(), "fresh0001"); !got.OK {
		t.Fatalf("new token after a clean restart: %+v", got)
	}
}

// After a crash, a token accepted but not yet written cannot be told from
// a new one: every unbound token dated up to the last mark on disk is
// refused, until the devices' clocks pass it. Written tokens stay replays
// after that.
func TestReplayLogCrashRule(t *testing.T) {
	dir := t.TempDir()
	clock := newTestClock(epoch)
	tk := newLoggedTokens(t, dir, clock)
	w := int64(DefaultWindow / time.Second)
	if got := plainAuth(tk, "dev-a", secretA, epoch, "flushed01"); !got.OK {
		t.Fatalf("first token: %+v", got)
	}
	clock.add(3 * time.Second)
	if err := tk.log.flush(); err != nil {
		t.Fatal(err)
	}
	// Dated at the far edge of the window: ahead of the clock by 60 s.
	lost := epoch.Add(3*time.Second + DefaultWindow)
	if got := plainAuth(tk, "dev-b", secretB, lost, "unwritten"); !got.OK {
		t.Fatalf("token the crash loses: %+v", got)
	}
	mark := tk.log.durable.Load()
	if want := epoch.Unix() + 3 + w + replayLease; mark != want {
		t.Fatalf("durable mark %d, want now+window+lease = %d", mark, want)
	}
	crash(tk)

	clock.add(2 * time.Second) // the restart
	tk2 := newLoggedTokens(t, dir, clock)
	if tk2.log.floor != mark {
		t.Fatalf("floor after the crash = %d, want the last mark %d", tk2.log.floor, mark)
	}
	// The written token is read back; the lost one is not.
	if n := tk2.ReplayLen(); n != 1 {
		t.Fatalf("ReplayLen after the crash = %d, want 1", n)
	}
	steps := []struct {
		name    string
		advance time.Duration
		id      string
		secret  []byte
		ts      func() time.Time
		nonce   string
		want    Result
	}{
		{name: "the lost token", id: "dev-b", secret: secretB, ts: func() time.Time { return lost }, nonce: "unwritten",
			want: Result{Reason: ReasonServerBusy, Msg: msgBeforeFloor}},
		{name: "a new token now", id: "dev-a", secret: secretA, ts: clock.now, nonce: "fresh0001",
			want: Result{Reason: ReasonServerBusy, Msg: msgBeforeFloor}},
		{name: "a new token once the clock passed the floor", advance: time.Duration(mark-clock.now().Unix()+1) * time.Second,
			id: "dev-a", secret: secretA, ts: clock.now, nonce: "fresh0002", want: Result{OK: true, Msg: msgOKToken}},
		{name: "the lost token at the end of its window is still refused", id: "dev-b", secret: secretB, ts: func() time.Time { return lost }, nonce: "unwritten",
			want: Result{Reason: ReasonServerBusy, Msg: msgBeforeFloor}},
	}
	for _, s := range steps {
		clock.add(s.advance)
		if got := plainAuth(tk2, s.id, s.secret, s.ts(), s.nonce); got != s.want {
			t.Fatalf("%s: %+v, want %+v", s.name, got, s.want)
		}
	}
	// A clean stop during the lockout keeps the floor for the next run.
	if err := tk2.Close(); err != nil {
		t.Fatal(err)
	}
	tk3 := newLoggedTokens(t, dir, clock)
	if tk3.log.floor != mark {
		t.Fatalf("floor after a clean stop during the lockout = %d, want %d", tk3.log.floor, mark)
	}
}

// A write cut by the crash (a torn last record, or blocks of zeros) is
// ignored: what was whole is read back.
func TestReplayLogTornTail(t *testing.T) {
	for _, tail := range [][]byte{{recToken, 0, 0, 0}, make([]byte, 4096), {recMark, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0}} {
		t.Run(fmt.Sprintf("%x", tail[:4]), func(t *testing.T) {
			dir := t.TempDir()
			clock := newTestClock(epoch)
			tk := newLoggedTokens(t, dir, clock)
			if got := plainAuth(tk, "dev-a", secretA, epoch, "written01"); !got.OK {
				t.Fatal(got)
			}
			if err := tk.log.flush(); err != nil {
				t.Fatal(err)
			}
			mark := tk.log.durable.Load()
			crash(tk)
			f, err := os.OpenFile(filepath.Join(dir, ReplayLogFile), os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.Write(tail); err != nil {
				t.Fatal(err)
			}
			f.Close()
			tk2 := newLoggedTokens(t, dir, clock)
			if tk2.log.floor != mark {
				t.Fatalf("floor = %d, want %d", tk2.log.floor, mark)
			}
			if n := tk2.ReplayLen(); n != 1 {
				t.Fatalf("ReplayLen = %d, want 1", n)
			}
		})
	}
}

// One gateway per data directory: a second Tokens on it is refused while
// the first holds it, and a file that is not a replay log is not taken for
// one.
func TestReplayLogLockAndBadFile(t *testing.T) {
	dir := t.TempDir()
	clock := newTestClock(epoch)
	tk := newLoggedTokens(t, dir, clock)
	_, err := NewTokens(TokenConfig{Secrets: map[string][]byte{"dev-a": secretA}, Dir: dir, Clock: clock.now})
	if err == nil || !strings.Contains(err.Error(), "in use by another gateway") {
		t.Fatalf("second Tokens on the same dir: %v", err)
	}
	if err := tk.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, ReplayLogFile), []byte("something else"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = NewTokens(TokenConfig{Secrets: map[string][]byte{"dev-a": secretA}, Dir: dir, Clock: clock.now})
	if err == nil || !strings.Contains(err.Error(), "not a replay log") {
		t.Fatalf("Tokens on a foreign file: %v", err)
	}
}

// While the disk is behind, a token dated beyond the durable mark is
// refused (a crash could lose it beyond the next run's floor), and taken
// once a write has moved the mark.
func TestReplayLogBehind(t *testing.T) {
	clock := newTestClock(epoch)
	tk := newLoggedTokens(t, t.TempDir(), clock)
	clock.add(10 * time.Second) // no write for 10 s: the lease has run out
	ahead := clock.now().Add(DefaultWindow)
	if got := plainAuth(tk, "dev-a", secretA, ahead, "ahead0001"); got != (Result{Reason: ReasonServerBusy, Msg: msgNotDurable}) {
		t.Fatalf("token beyond the durable mark: %+v", got)
	}
	if got := plainAuth(tk, "dev-a", secretA, clock.now(), "current01"); !got.OK {
		t.Fatalf("token within the durable mark: %+v", got)
	}
	if err := tk.log.flush(); err != nil {
		t.Fatal(err)
	}
	if got := plainAuth(tk, "dev-a", secretA, ahead, "ahead0001"); !got.OK {
		t.Fatalf("token after the write: %+v", got)
	}
}

// Compaction rewrites the live tokens only; what expired is gone from the
// file, what lives is still refused after a crash and the lockout.
func TestReplayLogCompaction(t *testing.T) {
	dir := t.TempDir()
	clock := newTestClock(epoch)
	tk := newLoggedTokens(t, dir, clock)
	for i := range 10 {
		if got := plainAuth(tk, "dev-a", secretA, clock.now(), fmt.Sprintf("old%06d", i)); !got.OK {
			t.Fatal(got)
		}
	}
	if err := tk.log.flush(); err != nil {
		t.Fatal(err)
	}
	clock.add(DefaultWindow + 10*time.Second) // the ten expire
	if err := tk.log.flush(); err != nil {
		t.Fatal(err)
	}
	live := control.MakeToken(secretB, "dev-b", clock.now(), "live00001")
	if got := tk.Authenticate(&Request{ClientID: "dev-b", Password: []byte(live)}); !got.OK {
		t.Fatal(got)
	}
	before := fileSize(t, dir)
	tk.log.wmu.Lock()
	tk.log.compactAt = 0
	tk.log.wmu.Unlock()
	if err := tk.log.flush(); err != nil {
		t.Fatal(err)
	}
	if after := fileSize(t, dir); after >= before {
		t.Fatalf("log of %d bytes after compaction, %d before", after, before)
	}
	crash(tk)
	tk2 := newLoggedTokens(t, dir, clock)
	if n := tk2.ReplayLen(); n != 1 {
		t.Fatalf("ReplayLen after compaction and crash = %d, want 1", n)
	}
	if got := tk2.Authenticate(&Request{ClientID: "dev-b", Password: []byte(live)}); got.OK {
		t.Fatalf("live token after compaction and crash: %+v", got)
	}
}

func fileSize(t *testing.T, dir string) int64 {
	t.Helper()
	st, err := os.Stat(filepath.Join(dir, ReplayLogFile))
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

// The mark never goes down when the clock steps back, also through a
// compaction: a token accepted under the higher mark stays covered by the
// file's last mark, which the next run's floor comes from.
func TestReplayLogMarkMonotonic(t *testing.T) {
	dir := t.TempDir()
	clock := newTestClock(epoch)
	tk := newLoggedTokens(t, dir, clock)
	high := tk.log.durable.Load()
	if got := plainAuth(tk, "dev-a", secretA, epoch.Add(DefaultWindow), "ahead0001"); !got.OK {
		t.Fatal(got)
	}
	clock.add(-100 * time.Second)
	tk.log.wmu.Lock()
	tk.log.compactAt = 0
	tk.log.wmu.Unlock()
	if err := tk.log.flush(); err != nil {
		t.Fatal(err)
	}
	if m := tk.log.durable.Load(); m < high {
		t.Fatalf("mark went down from %d to %d with the clock", high, m)
	}
	crash(tk)
	tk2 := newLoggedTokens(t, dir, clock)
	if tk2.log.floor < high {
		t.Fatalf("floor %d after the crash is below the mark %d the token was accepted under", tk2.log.floor, high)
	}
}

// A write that fails is reported once, the tokens it held are kept for the
// next write, and the durable mark stays where the disk has it.
func TestReplayLogWriteFailure(t *testing.T) {
	clock := newTestClock(epoch)
	errs := make(chan error, 4)
	tk := newTestTokens(t, TokenConfig{
		Secrets:       map[string][]byte{"dev-a": secretA},
		Dir:           t.TempDir(),
		FlushInterval: time.Hour,
		Clock:         clock.now,
		OnLogError:    func(err error) { errs <- err },
	})
	mark := tk.log.durable.Load()
	tk.log.wmu.Lock()
	_ = tk.log.f.Close() // the disk goes away under the writer
	tk.log.wmu.Unlock()
	if got := plainAuth(tk, "dev-a", secretA, epoch, "pending01"); !got.OK {
		t.Fatal(got)
	}
	tk.log.wake()
	select {
	case err := <-errs:
		if !strings.Contains(err.Error(), "replay log") {
			t.Fatalf("reported error %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the failed write was not reported")
	}
	tk.log.mu.Lock()
	pending := len(tk.log.pending)
	tk.log.mu.Unlock()
	if pending != 1 || tk.log.durable.Load() != mark {
		t.Fatalf("after a failed write: %d pending (want 1), mark %d (want %d)", pending, tk.log.durable.Load(), mark)
	}
	if err := tk.Close(); err == nil {
		t.Fatal("Close on a failed disk reported no error")
	}
}
