package qpq_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quicproquo/quicproquo/sdks/go/qpq"
)

// server is the real qpq-server every test of this package talks to.
var server struct {
	addr string
	cert string
}

// TestMain starts target/debug/qpq-server (built from the workspace by sdks/go/test.sh) on a
// free loopback port with its own data directory, and stops it after the tests.
func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	repo, _ := filepath.Abs("../../..")
	target := os.Getenv("CARGO_TARGET_DIR")
	if target == "" {
		target = filepath.Join(repo, "target")
	}
	bin := filepath.Join(target, "debug", "qpq-server")
	data, err := os.MkdirTemp("", "qpq-go-server-")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(data)
	cmd := exec.Command(bin, "--listen", "127.0.0.1:0", "--log-format", "json", "--log-level", "warn,qpq_server=info",
		"--data-dir", data)
	// Every test registers fresh accounts from 127.0.0.1: more than the default per-address
	// registration limit (10 an hour), which is not what these tests are about.
	cmd.Env = append(os.Environ(), "QPQ_REGISTRATIONS_PER_IP=0")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		panic(err)
	}
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "cannot start %s (build it: cargo build -p qpq-server): %v\n", bin, err)
		return 1
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	lines := bufio.NewScanner(stderr)
	for lines.Scan() {
		var line struct {
			Fields struct {
				Message string `json:"message"`
				Listen  string `json:"listen"`
			} `json:"fields"`
		}
		if json.Unmarshal(lines.Bytes(), &line) == nil && line.Fields.Message == "qpq-server listening" {
			server.addr = line.Fields.Listen
			break
		}
	}
	if server.addr == "" {
		fmt.Fprintln(os.Stderr, "qpq-server exited before listening")
		return 1
	}
	go func() { // keep draining the server's log
		for lines.Scan() {
		}
	}()
	server.cert = filepath.Join(data, "server-cert.der")
	return m.Run()
}

var keyCounter atomic.Uint32

// config is a store in dir unlocked by a raw key (no KDF: the tests stay fast); passphrase
// stores are used where the scenario says so.
func config(dir string) qpq.Config {
	key := make([]byte, 32)
	n := keyCounter.Add(1)
	key[0], key[1] = byte(n), byte(n>>8)
	return qpq.Config{DataDir: dir, ServerAddr: server.addr, PinnedCertFile: server.cert, RawKey: key}
}

func open(t testing.TB, cfg qpq.Config) *qpq.Client {
	t.Helper()
	c, err := qpq.Open(context.Background(), cfg)
	if err != nil {
		t.Fatalf("open %s: %v", cfg.DataDir, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// user is a fresh client with a registered account.
func user(t testing.TB, name string) *qpq.Client {
	t.Helper()
	c := open(t, config(t.TempDir()))
	if _, err := c.Register(context.Background(), name, "password of "+name); err != nil {
		t.Fatalf("register %s: %v", name, err)
	}
	return c
}

// recorder pulls a client's events and keeps every one it saw, so a test can check that an
// event came exactly once.
type recorder struct {
	c   *qpq.Client
	mu  sync.Mutex
	log []qpq.Event
}

// waitFor pulls events until match accepts one, for at most 10 s.
func (r *recorder) waitFor(t testing.TB, what string, match func(qpq.Event) bool) qpq.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		ev, err := r.c.NextEvent(ctx)
		if err != nil {
			t.Fatalf("waiting for %s: %v (saw %d events)", what, err, len(r.log))
		}
		r.mu.Lock()
		r.log = append(r.log, ev)
		r.mu.Unlock()
		if match(ev) {
			return ev
		}
	}
}

// drain takes every event pending now.
func (r *recorder) drain() {
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		ev, err := r.c.NextEvent(ctx)
		cancel()
		if errors.Is(err, context.DeadlineExceeded) || err != nil {
			return
		}
		r.log = append(r.log, ev)
	}
}

// count counts the events seen that match.
func (r *recorder) count(match func(qpq.Event) bool) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, e := range r.log {
		if match(e) {
			n++
		}
	}
	return n
}

func textIs(conv qpq.ConversationID, text string) func(qpq.Event) bool {
	return func(e qpq.Event) bool {
		m, ok := e.(qpq.MessageReceived)
		return ok && m.Message.Conversation == conv && m.Message.Text() == text
	}
}

func joined(conv qpq.ConversationID) func(qpq.Event) bool {
	return func(e qpq.Event) bool {
		j, ok := e.(qpq.ConversationJoined)
		return ok && j.Conversation.ID == conv
	}
}
